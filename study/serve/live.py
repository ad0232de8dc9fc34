"""Live, read-only reading of the studies in a storage, for `study serve`.

A study is read from the files `study status` and `study report` read (``spec.yaml``, Tune's
``experiment_state-*.json``, each trial's ``result.json``), never written, locked or unpickled.
Each file is read again only when its (size, mtime_ns) changed, and a trial's ``result.json``
only from the end of its last complete line (a file that shrank or whose first bytes changed is
read from the start). `LiveStudy.snapshot` gives the trials table the way
`study.results.collect` builds it (checked against it in tests/serve/test_live.py), plus counts,
progress and the time of the last change; `LiveStudy.results` gives the `StudyResults` the report
functions take, through the same Parquet files `study report` writes, written into a private
directory outside the storage.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from core.errors import UserError, one_line
from core.layout import EXPERIMENT_STATE_GLOB, RESULT_FILE, SPEC_FILE, results_dir
from core.status import STATUSES, UNFINISHED
from study.trial_rows import TrialRows, num, summarise

FileKey = tuple[int, int]  # (size, mtime_ns)
_EMPTY = TrialRows()
BACKGROUND_STATE_BYTES = 8 << 20  # a state file larger than this is parsed again in a thread
HEAD_BYTES = 64  # first bytes of a result file: if they change, the file was rewritten


def file_key(path: str | Path) -> FileKey | None:
    """(size, mtime_ns) of a regular file, None when it is missing or not a file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def iso(ns: int | float | None) -> str | None:
    """An mtime (ns since the epoch) as ISO 8601 UTC, e.g. ``2026-01-01T12:00:00+00:00``."""
    if not ns:
        return None
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# one result.json, read by offset


def parse_lines(chunk: bytes) -> list[dict]:
    """The rows of a chunk of JSON lines, as `study.trial_rows.read_jsonl` reads them (one parse of
    all lines; a line cut by a crash is skipped)."""
    text = chunk.decode("utf-8", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    try:
        rows = json.loads("[" + ",".join(lines) + "]")
        if all(isinstance(r, dict) for r in rows):
            return rows
    except ValueError:
        pass
    out = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def extend(base: TrialRows, rows: list[dict]) -> TrialRows | None:
    """`base` with later rows appended, equal to `summarise` of all the rows; None when the new rows
    report an epoch `base` already has (a resumed trial: the caller reads the file again)."""
    new = summarise(rows)
    if not new.epochs:
        return base
    if not base.epochs:
        return new
    if new.epochs[0] <= base.epochs[-1]:
        return None
    names = sorted(set(base.metrics) | set(new.metrics))
    nb, nn = len(base.epochs), len(new.epochs)

    def col(rows_of: TrialRows, name: str, n: int) -> np.ndarray:
        return rows_of.metrics.get(name, np.full(n, np.nan))

    return TrialRows(
        epochs=[*base.epochs, *new.epochs],
        times=np.concatenate([base.times, new.times]),
        diverged=np.concatenate([base.diverged, new.diverged]),
        metrics={m: np.concatenate([col(base, m, nb), col(new, m, nn)]) for m in names},
        last=new.last,
    )


_WORKER: Any = None
_WORKER_LOCK = threading.Lock()


def state_worker() -> Any:
    """One spawned worker process for parsing large experiment states (created on first use)."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            _WORKER = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return _WORKER


def _trials_from_state(study_dir: str) -> list[dict]:
    from study.results import trials_from_state

    return trials_from_state(Path(study_dir))


class ResultFile:
    """A trial's ``result.json``, read incrementally. `read` returns its `TrialRows`."""

    __slots__ = ("key", "offset", "head", "done", "view", "reads")

    def __init__(self) -> None:
        self.key: FileKey | None = None
        self.offset = 0  # bytes of complete lines consumed
        self.head = b""
        self.done = TrialRows()  # rows of the consumed lines
        self.view = TrialRows()  # done + a last line without its newline yet (if it parses)
        self.reads = 0  # bytes read so far (tests and the benchmark check reading is incremental)

    def read(self, path: str | Path) -> TrialRows:
        key = file_key(path)
        if key == self.key:
            return self.view
        if os.path.islink(path):  # read by `study.results`' rules for links (confined to the trial directory)
            from study.trial_rows import summarise_file

            self.key, self.offset, self.head, self.done = key, 0, b"", TrialRows()
            self.view = summarise_file(str(path))
            return self.view
        self.key = key
        if key is None:
            self.offset, self.head, self.done, self.view = 0, b"", TrialRows(), TrialRows()
            return self.view
        try:
            with open(path, "rb") as f:
                head = f.read(HEAD_BYTES)
                if key[0] < self.offset or head[: len(self.head)] != self.head:
                    self.offset, self.done = 0, TrialRows()  # rewritten: from the start
                f.seek(self.offset)
                data = f.read()
                self.reads += len(data)
                cut = data.rfind(b"\n") + 1
                done = extend(self.done, parse_lines(data[:cut]))
                tail = parse_lines(data[cut:]) if cut < len(data) else []
                if done is None:  # an epoch reported again: the whole file, read once more
                    f.seek(0)
                    data = f.read()
                    self.reads += len(data)
                    cut = data.rfind(b"\n") + 1
                    done = summarise(parse_lines(data[:cut]))
                    tail = parse_lines(data[cut:]) if cut < len(data) else []
                    self.offset = 0
        except OSError:
            self.key, self.offset, self.head, self.done, self.view = None, 0, b"", TrialRows(), TrialRows()
            return self.view
        self.offset += cut
        self.head = head if self.offset else b""
        self.done = done
        view = extend(done, tail) if tail else done
        self.view = view if view is not None else summarise([*_rows_of(path)])
        return self.view


def _rows_of(path: Path) -> list[dict]:
    try:
        return parse_lines(Path(path).read_bytes())
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# one study


class Snapshot:
    """A study as its files are now.

    Args:
        version: changes whenever a file the study is read from changed.
        rows: the trials table's rows (`study.results.collect`'s), by trial id; `trials` is the table.
        counts: trials per status.
        total: trials the study will have (the spec's count, or more if the state has more).
        updated_ns: newest mtime of the state and result files.
        error: why the study cannot be read (then the tables are empty), None when it can.
        notes: what was passed over (a trial directory leading out of the study).
    """

    def __init__(self, version: str, rows: list[dict], counts: dict[str, int], total: int, updated_ns: int,
                 error: str | None = None, notes: list[str] | None = None, columns: list[str] | None = None,
                 previous: Snapshot | None = None) -> None:  # fmt: skip
        self.version, self.rows, self.counts, self.total = version, rows, counts, total
        self.updated_ns, self.error, self.notes = updated_ns, error, list(notes or [])
        self._columns = columns or []
        self._trials: pd.DataFrame | None = None
        self._lock = threading.Lock()
        if previous is not None and previous._trials is not None and previous.rows is rows:
            self._trials = previous._trials  # nothing changed: the same table

    @property
    def trials(self) -> pd.DataFrame:
        """The trials table (built on first use: a refresh that only counts never builds it)."""
        with self._lock:
            if self._trials is None:
                self._trials = pd.DataFrame(self.rows) if self.rows else pd.DataFrame(columns=self._columns)
            return self._trials

    @property
    def status(self) -> str:
        """``broken``, ``running``, ``partly failed``, ``complete`` or ``empty``."""
        return study_status(self.counts, self.error, self.total)


def study_status(counts: dict[str, int], error: str | None, total: int) -> str:
    """One word for a study's state (see `Snapshot.status`)."""
    if error:
        return "broken"
    done = sum(n for s, n in counts.items() if s not in UNFINISHED)
    if any(counts.get(s) for s in UNFINISHED) or (0 < done < total):
        return "running"
    if not counts:
        return "empty"
    if any(counts.get(s) for s in ("ERROR", "DIVERGED", "MISSING")):
        return "partly failed"
    return "complete"


class LiveStudy:
    """One study of a storage, read incrementally; thread-safe (one refresh at a time)."""

    def __init__(self, name: str, study_dir: Path, work_dir: Path) -> None:
        self.name = name
        self.dir = Path(study_dir)
        self.work_dir = Path(work_dir)  # private, outside the storage: the Parquet round trip
        self.lock = threading.RLock()
        self._build_lock = threading.Lock()
        self._spec_key: Any = ()
        self._spec: Any = None
        self._raw: dict[str, Any] = {}
        self._state_key: Any = None  # None: never read
        self._pair: tuple[list[dict], Any] = ([], ())
        self._files: dict[str, ResultFile] = {}
        self._paths: dict[str, tuple[str, str]] = {}
        self._row_json: dict[str, tuple[Any, str]] = {}
        self._rows: dict[str, tuple[Any, dict, TrialRows]] = {}
        self._snapshot: Snapshot | None = None
        self._entries: dict[str, dict] = {}
        self._state_thread: threading.Thread | None = None
        self._state_parsed = (0.0, 0.0)  # (when, seconds it took) of the last parse of the state
        self._direction_of: Any = None
        self._direction_spec: Any = None
        self._results: tuple[str, Any] | None = None
        self._epochs: tuple[str, pd.DataFrame] | None = None
        self.claims: pd.DataFrame | None = None  # the claims table of the last report built (index counts)

    # -- the spec and the state, each read again only when its file changed

    def spec(self) -> Any:
        """The study's `study.spec.Spec` (`UserError` when spec.yaml is missing or invalid)."""
        from study.spec import load_spec

        path = self.dir / SPEC_FILE
        key = file_key(path)
        if key != self._spec_key:
            self._spec, self._raw, self._spec_key = None, {}, key
            try:
                self._raw = yaml.safe_load(path.read_text()) if key else {}
            except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
                self._spec = UserError(f"{path}: cannot be read ({one_line(e, 200)})")
            else:
                try:
                    self._spec = load_spec(path)
                except UserError as e:
                    self._spec = e
                except Exception as e:  # noqa: BLE001 - a hostile spec is one line on its row, never a crash
                    self._spec = UserError(f"{path}: {one_line(e, 200)}")
        if isinstance(self._spec, UserError):
            raise self._spec
        return self._spec

    def raw_spec(self) -> dict[str, Any]:
        return self._raw if isinstance(self._raw, dict) else {}

    def _trials_state(self) -> list[dict]:
        """[{trial_id, status, config, logdir, meta}] as `study.results` reads them (packs expanded)."""
        return self._keyed_state()[0]

    def _keyed_state(self) -> tuple[list[dict], Any]:
        """`_trials_state` and the key (state files' names, sizes, mtimes) of the state it read."""
        from study import tune_state

        files = sorted(self.dir.glob(EXPERIMENT_STATE_GLOB))
        backup = sorted((self.dir / tune_state.BACKUP_DIR).glob(EXPERIMENT_STATE_GLOB))
        key = tuple((p.name, file_key(p)) for p in [*files, *backup])
        if key != self._state_key:
            size = sum((k or (0, 0))[0] for _, k in key)
            if self._state_key is not None and size > BACKGROUND_STATE_BYTES:  # a large state: parsed beside, not in, a refresh
                if time.monotonic() >= self._state_parsed[0] + max(2.0, 3.0 * self._state_parsed[1]):
                    self._parse_in_background(files, backup, key)
            else:
                self._parse_state(files, backup, key)
        return self._pair  # the state and its key, together (a thread may swap them)

    def _parse_state(self, files: list[Path], backup: list[Path], key: Any) -> None:
        """The trials of the saved state, by `study.results.trials_from_state` (every reader's rules:
        the newest readable file, packs expanded, directories out of the study marked)."""
        from study.results import trials_from_state

        t0 = time.monotonic()
        self._pair = (trials_from_state(self.dir), key)
        self._state_key = key
        self._state_parsed = (time.monotonic(), time.monotonic() - t0)

    def _parse_in_background(self, files: list[Path], backup: list[Path], key: Any) -> None:
        """Parse the state beside the requests (one parse at a time; until it is done, snapshots use
        the last one): in a worker process, so that parsing a state of many megabytes (one long
        `json.loads`, holding the interpreter lock) never stalls a request."""
        if self._state_thread is not None and self._state_thread.is_alive():
            return

        def run() -> None:
            t0 = time.monotonic()
            try:
                trials = state_worker().submit(_trials_from_state, str(self.dir)).result()
            except Exception:  # noqa: BLE001 - no worker, or the file is bad: read here, by the same rules
                try:
                    self._parse_state(files, backup, key)
                except Exception:  # noqa: BLE001 - the next synchronous read reports it
                    self._state_key = None
                return
            self._pair = (trials, key)
            self._state_key = key
            self._state_parsed = (time.monotonic(), time.monotonic() - t0)

        self._state_thread = threading.Thread(target=run, name=f"study-serve-state-{self.name}", daemon=True)
        self._state_thread.start()

    # -- the trials table

    def snapshot(self) -> Snapshot:
        """The study now; reads only what changed since the last call."""
        with self.lock:
            try:
                snap = self._read()
            except Exception as e:  # noqa: BLE001 - a damaged study is shown as such, the rest works
                snap = Snapshot(f"error:{one_line(e, 300)}", [], {}, 0, self._mtime(), one_line(e, 500))
            self._snapshot = snap
            return snap

    def _mtime(self) -> int:
        try:
            return os.stat(self.dir).st_mtime_ns
        except OSError:
            return 0

    def _read(self) -> Snapshot:
        from study.results import hyperparameter_columns
        from trainables import get_family

        spec = self.spec()
        if self._direction_of is None or self._direction_spec is not spec:
            self._direction_of, self._direction_spec = _memo(_directions(spec)), spec
        entries, read_key = self._keyed_state()
        hp_cols = hyperparameter_columns(spec)
        epochs_default = get_family(spec.trainable).all_defaults["epochs"]
        scheduler = spec.scheduler.type != "none"
        changed = False
        rows, seen, newest = [], set(), max([k[1][1] for k in read_key if k[1]] or [0])
        self._entries = {t["trial_id"]: t for t in entries}
        self._prime([t for t in entries if "rows" not in t and not t["meta"].get("problem") and t["trial_id"] not in self._files])
        for t in entries:
            tid = t["trial_id"]
            seen.add(tid)
            if "rows" in t:  # a pack member: its rows come with it
                rf_key: Any = ("pack", id(t["rows"]))
                summary = None
            elif t["meta"].get("problem"):  # a directory not read (a link out of the study)
                rf_key, summary = ("problem", t["meta"]["problem"]), _EMPTY
            else:
                rf = self._files.get(tid)
                if rf is None:
                    rf = self._files[tid] = ResultFile()
                path = self._paths.get(tid)
                if path is None or path[0] != t["logdir"]:
                    path = self._paths[tid] = (t["logdir"], os.path.join(self.dir, t["logdir"], RESULT_FILE))
                summary = rf.read(path[1])
                rf_key = rf.key
                if rf.key:
                    newest = max(newest, rf.key[1])
            sig = (t["status"], t["meta"]["num_failures"], t["meta"]["error_filename"], rf_key, id(summary))
            cached = self._rows.get(tid)
            if cached is not None and cached[0] == sig:
                rows.append(cached[1])
                continue
            changed = True
            if summary is None:
                summary = summarise(t["rows"])
            trial_dir = self.dir / t["logdir"]
            row = _trial_row(t, summary, spec, hp_cols, epochs_default, scheduler, trial_dir, self._direction_of)
            self._rows[tid] = (sig, row, summary)
            rows.append(row)
        for gone in set(self._rows) - seen:
            self._rows.pop(gone, None)
            self._files.pop(gone, None)
            changed = True
        previous = self._snapshot
        if not changed and previous is not None and not previous.error and len(previous.rows) == len(rows):
            rows = previous.rows  # nothing changed: the same rows (and table)
        else:
            rows.sort(key=lambda r: r["trial_id"])
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        counts = {s: counts[s] for s in STATUSES if s in counts} | {s: n for s, n in counts.items() if s not in STATUSES}
        version = f"{self._spec_key}|{read_key}|" + "|".join(
            f"{tid}:{self._rows[tid][0][3]}" for tid in sorted(seen)
        )
        digest = hashlib.blake2b(version.encode(), digest_size=10).hexdigest()
        total = max(len(rows), spec.n_trials())
        notes = list(dict.fromkeys(t["meta"]["problem"] for t in entries if t["meta"].get("problem")))
        columns = ["trial_id", "status", *hp_cols, "seed", "params", "epochs_done", "wall_time_s", "error"]
        return Snapshot(digest, rows, counts, total, newest or self._mtime(), None, notes[:20], columns, previous)

    def row_json(self, trial_id: str, text_keys: tuple[str, ...]) -> str:
        """A trial's row as JSON (non-finite numbers as null), with the figures' label text of each of
        `text_keys` (``_text_<key>``); serialized once per change of the row."""
        from analysis.plots import text

        sig, row, _ = self._rows[trial_id]
        cached = self._row_json.get(trial_id)
        if cached is not None and cached[0] == (sig, text_keys):
            return cached[1]
        plain = {k: _plain_value(v) for k, v in row.items()}
        plain |= {f"_text_{k}": text(row.get(k)) for k in text_keys}
        out = json.dumps(plain, allow_nan=False, default=str)
        self._row_json[trial_id] = ((sig, text_keys), out)
        return out

    def _prime(self, fresh: list[dict]) -> None:
        """A first read of many result files: parsed by worker processes (`summarise_files`)."""
        from study.trial_rows import PARALLEL_MIN_TRIALS, summarise_files

        if len(fresh) < PARALLEL_MIN_TRIALS:
            return
        paths = [self.dir / t["logdir"] / RESULT_FILE for t in fresh]
        keys = [file_key(p) for p in paths]
        for t, path, key, rows in zip(fresh, paths, keys, summarise_files(paths)):
            rf = ResultFile()
            if key and key[0] and key == file_key(path):
                try:
                    with open(path, "rb") as f:
                        head = f.read(HEAD_BYTES)
                        f.seek(key[0] - 1)
                        complete = f.read(1) == b"\n"
                except OSError:
                    complete = False
                if complete:  # else read again, by the rules of a file being written
                    rf.key, rf.offset, rf.head, rf.done, rf.view, rf.reads = key, key[0], head, rows, rows, key[0]
                    self._files[t["trial_id"]] = rf

    def last_version(self) -> str | None:
        """The version of the last snapshot taken (None before the first)."""
        return self._snapshot.version if self._snapshot is not None else None

    def config(self, trial_id: str) -> dict[str, Any]:
        """A trial's config as the saved state records it ({} when unknown)."""
        entry = self._entries.get(trial_id)
        return dict(entry["config"]) if entry else {}

    def trial_dir(self, trial_id: str) -> Path | None:
        """A trial's directory (None when the state does not know the trial)."""
        entry = self._entries.get(trial_id)
        return self.dir / entry["logdir"] if entry else None

    def summary(self, trial_id: str) -> TrialRows | None:
        """The `TrialRows` of one trial as of the last snapshot."""
        cached = self._rows.get(trial_id)
        return cached[2] if cached else None

    def epochs(self) -> pd.DataFrame:
        """The per-epoch table (`collect`'s second table) of the last snapshot."""
        with self.lock:
            snap = self._snapshot or self.snapshot()
            if self._epochs and self._epochs[0] == snap.version:
                return self._epochs[1]
            ids = [r["trial_id"] for r in snap.rows]
            frame = _epochs_frame([(tid, self._rows[tid][2]) for tid in ids if tid in self._rows])
            self._epochs = (snap.version, frame)
            return frame

    def results(self) -> Any:
        """`analysis.load.StudyResults` of the last snapshot, through the Parquet files `study report`
        reads (`study.results.write_results` into a private directory, then `analysis.load.load_study`)."""
        from analysis.load import load_study
        from study.results import write_results

        with self.lock:
            snap = self._snapshot or self.snapshot()
            if snap.error:
                raise UserError(snap.error)
            if self._results and self._results[0] == snap.version:
                return self._results[1]
            spec = self.spec()
            trials = snap.trials.drop(columns=["data_source"], errors="ignore")
            epochs = self.epochs()
        with self._build_lock:  # the Parquet round trip, without holding up snapshots
            mirror = self.work_dir / "study"
            mirror.mkdir(parents=True, exist_ok=True)
            for name in (SPEC_FILE, "spec_file.txt"):
                if (self.dir / name).is_file():
                    shutil.copyfile(self.dir / name, mirror / name)
            write_results(mirror, spec, trials, epochs)
            results = load_study(mirror)
        self._results = (snap.version, results)
        return results

    def results_dir(self) -> Path:
        return results_dir(self.dir)


def _directions(spec: Any) -> Any:
    """{metric: "min" | "max" | None} as `study.results.collect` decides which ``best_`` columns exist."""
    try:
        from study.results import directions
    except ImportError:  # an older `study.results`: every metric has a best_, by its name
        from analysis.load import default_mode

        return lambda m: spec.mode if m == spec.metric else default_mode(m)
    return lambda m: directions(spec, [m]).get(m)


def _trial_row(t, summary, spec, hp_cols, epochs_default, scheduler, trial_dir, direction_of) -> dict:
    """One row of the trials table, by `study.results.collect`'s rules."""
    from study.results.trials import reported_status

    finals: dict[str, float] = {}
    bests: dict[str, float] = {}
    for m, vals in summary.metrics.items():
        arr = vals[np.isfinite(vals)]
        finals[m] = float(arr[-1]) if arr.size else math.nan
        direction = direction_of(m)
        if direction is not None:
            bests[m] = (float(arr.min() if direction == "min" else arr.max())) if arr.size else math.nan
    last = summary.last
    config = t["config"]
    n_epochs = config.get("epochs", epochs_default)
    problem = t["meta"].get("problem") or getattr(summary, "problem", None)
    meta_t = {**t, "meta": {**t["meta"], "problem": problem}} if problem else t
    status, missing = reported_status(meta_t, trial_dir, summary.epochs, last, n_epochs, scheduler)
    row: dict[str, Any] = {"trial_id": t["trial_id"], "status": status}
    for c in hp_cols:
        v = config.get(c)
        row[c] = json.dumps(v) if isinstance(v, (list, dict)) else v
    row["seed"] = config.get("seed")
    if row["seed"] is None and "__trial_index__" in config:
        row["seed"] = spec.seed_list[int(config["__trial_index__"])]
    for m in summary.metrics:
        row[f"final_{m}"] = finals[m]
        if m in bests:
            row[f"best_{m}"] = bests[m]
    row["params"] = last.get("params")
    row["epochs_done"] = int(last.get("epoch", 0)) if last else 0
    row["wall_time_s"] = num(last.get("time_total_s")) if last else 0.0
    row["num_failures"] = int(t["meta"].get("num_failures", 0) or 0)
    row["error"] = missing or (_error_message(trial_dir, t["meta"]) if status == "ERROR" else None) or (
        last.get("error") if status == "DIVERGED" else None
    )
    return row


def _error_message(trial_dir: Path, meta: dict) -> str | None:
    try:
        from study.results import error_message
    except ImportError:
        from study.results import error_line

        return error_line(trial_dir / (meta.get("error_filename") or "error.txt"))
    return error_message(trial_dir, meta)


def _plain_value(v: Any) -> Any:
    """A table cell as JSON can hold it: numpy scalars as Python ones, NaN and infinities as None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _memo(fn: Any) -> Any:
    cache: dict[str, Any] = {}

    def memo(m: str) -> Any:
        if m not in cache:
            cache[m] = fn(m)
        return cache[m]

    return memo


def _epochs_frame(parts: list[tuple[str, TrialRows]]) -> pd.DataFrame:
    """The per-epoch table of trials' `TrialRows`, column by column as `collect` builds it."""
    parts = [(tid, s) for tid, s in parts if s.epochs]
    if not parts:
        return pd.DataFrame(columns=["trial_id", "epoch", "time_total_s", "diverged"])
    cols: dict[str, None] = dict.fromkeys(["trial_id", "epoch", *parts[0][1].metrics, "time_total_s", "diverged"])
    for _, s in parts[1:]:
        cols.update(dict.fromkeys(s.metrics))
    counts = [len(s.epochs) for _, s in parts]
    total = sum(counts)
    columns: dict[str, Any] = {
        "trial_id": np.repeat(np.array([tid for tid, _ in parts], dtype=object), counts),
        "epoch": np.asarray([e for _, s in parts for e in s.epochs], dtype=np.int64),
        "time_total_s": np.concatenate([s.times for _, s in parts]),
        "diverged": np.concatenate([s.diverged for _, s in parts]),
    }
    offset = 0
    metric_cols = {c: np.full(total, np.nan) for c in cols if c not in columns}
    for _, s in parts:
        n = len(s.epochs)
        for m, vals in s.metrics.items():
            metric_cols[m][offset : offset + n] = vals
        offset += n
    columns.update(metric_cols)
    return pd.DataFrame({c: columns[c] for c in cols})

