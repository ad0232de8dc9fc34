"""The studies of one storage, for `study serve`: names checked against the storage, one
`LiveStudy` per study, and the index rows (`GET /api/studies`).

A name from a URL is used only if it is a study the storage lists (a directory with a
``spec.yaml``) whose resolved path lies inside the storage: ``..``, slashes, and symlinks that
lead out of the storage are refused. An index row comes from the study's live snapshot (`LiveStudy`:
the counts of trials.parquet and `study status`, result files read incrementally), computed again
only when its spec, state, directory or files changed; a row known before is refreshed in a
background thread while the last one is shown, and a study read for the first time is read by a
pool of threads, its row marked ``reading`` until it is ready.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from core.errors import UserError, one_line
from core.layout import EXPERIMENT_STATE_GLOB, SPEC_FILE, results_dir
from core.status import UNFINISHED
from study.serve.live import LiveStudy, file_key, iso, study_status

REMOTE_PULL_S = 30.0  # a study on shared storage is mirrored again at most this often
MAX_NAME_BYTES = 255
FIRST_LOAD_WAIT_S = 0.5  # the index waits this long for studies read for the first time, then marks them "reading"
INDEX_THREADS = 4
READING = "reading"


class NotFound(Exception):
    """No such study or trial (HTTP 404); the message is one line."""


def valid_name(name: str) -> bool:
    """A single path component (no separator, not ``.``/``..``, no control characters)."""
    return (
        bool(name)
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and len(name.encode("utf-8", "surrogateescape")) <= MAX_NAME_BYTES
    )


def inside(path: Path, root: Path) -> bool:
    """`path`, with every symlink resolved, lies inside `root` (resolved)."""
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError):
        return False


class Catalog:
    """Every study of a storage (a local directory or an object-store URI), read-only."""

    def __init__(self, storage: str | Path) -> None:
        from study.storage import Store

        self.storage = str(storage)
        self.store = Store.open(storage)
        if not self.store.remote and not Path(self.store.root).is_dir():
            raise UserError(f"--storage {storage}: no such directory (see `study ls --storage DIR`)")
        self.work = Path(tempfile.mkdtemp(prefix="study-serve-"))  # outside the storage; removed by close()
        self._studies: dict[str, LiveStudy] = {}
        self._index: dict[str, tuple[Any, dict]] = {}
        self._pulled: dict[str, float] = {}
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._first: dict[str, Future] = {}  # studies being read for the first time
        self._pool = ThreadPoolExecutor(max_workers=INDEX_THREADS, thread_name_prefix="study-serve-index")

    def close(self) -> None:
        import shutil

        self._pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.work, ignore_errors=True)

    # -- names

    def names(self) -> list[str]:
        try:
            return [n for n in self.store.names() if valid_name(n)]
        except OSError:
            return []

    def _refused(self, name: str) -> str | None:
        """Why a listed study is not read (a symlink out of the storage), or None."""
        if self.store.remote:
            return None
        root = Path(self.store.root)
        if not inside(root / name, root):
            return f"{root / name}: a link to outside the storage; not read"
        return None

    def study(self, name: str) -> LiveStudy:
        """The live study `name`; `NotFound` unless the storage lists it and it lies inside it."""
        if not valid_name(name) or name not in self.names():
            raise NotFound(f"no study named {name!r} in {self.storage}")
        refused = self._refused(name)
        if refused:
            raise NotFound(refused)
        with self._lock:
            live = self._studies.get(name)
            if live is None:
                local = self.store.local_dir(name)
                live = self._studies[name] = LiveStudy(name, local, self.work / f"s{len(self._studies)}")
        self._pull(name)
        return live

    def _pull(self, name: str) -> None:
        if not self.store.remote:
            return
        now = time.monotonic()
        if now - self._pulled.get(name, -1e9) >= REMOTE_PULL_S:
            self.store.pull(name)  # into the local cache (~/.cache/study-platform), never into the storage
            self._pulled[name] = now

    # -- the index

    def index(self, wait_s: float | None = None) -> list[dict[str, Any]]:
        """One row per study (see `index_row`), sorted by name. A study never read before is read by
        a pool of threads; the rows not ready within `wait_s` seconds (`FIRST_LOAD_WAIT_S`) have the status ``reading``
        (their counts come with a later call), so the index answers at once on a large storage."""
        names = self.names()
        with self._lock:
            for n in names:
                if n not in self._index and n not in self._first:
                    self._first[n] = self._pool.submit(self.index_row, n)
            waiting = [self._first[n] for n in names if n in self._first]
        if waiting:
            wait(waiting, timeout=FIRST_LOAD_WAIT_S if wait_s is None else wait_s)
        rows = []
        for n in names:
            first = self._first.get(n)
            if first is not None and not first.done():
                rows.append({**_row(n, updated_ns=_mtime(self.store.local_dir(n))), "status": READING})
                continue
            if first is not None:
                with self._lock:
                    self._first.pop(n, None)
                if n not in self._index:  # refused, not found: not kept, told as is
                    rows.append(
                        first.result() if first.exception() is None else _row(n, error=one_line(first.exception(), 300))
                    )
                    continue
            rows.append(self.index_row(n))
        return rows

    def index_row(self, name: str) -> dict[str, Any]:
        """``name, trainable, data_source, status, trials_done, trials_running, trials_failed,
        trials_total, updated`` (ISO 8601), plus ``counts``, ``best``, ``metric``, ``mode``, ``eta_s``,
        ``claims`` (verdict counts), ``smoke``, ``error``."""
        refused = self._refused(name)
        if refused:
            return _row(name, error=refused)
        try:
            live = self.study(name)
        except NotFound as e:
            return _row(name, error=str(e))
        d = live.dir
        state = sorted(d.glob(EXPERIMENT_STATE_GLOB))
        claims_file = results_dir(d) / "claims.parquet"
        key = (file_key(d / SPEC_FILE), tuple((p.name, file_key(p)) for p in state), _mtime(d), file_key(claims_file),
               id(live.claims), live.last_version())  # fmt: skip
        cached = self._index.get(name)
        if cached and cached[0] == key:
            return cached[1]
        if cached:  # known before: the last row now, the new one computed beside (a large state takes seconds)
            with self._lock:
                if name not in self._pending:
                    self._pending.add(name)
                    threading.Thread(target=self._recompute, args=(name, live, state, key), daemon=True,
                                     name=f"study-serve-index-{name}").start()  # fmt: skip
            return cached[1]
        row = self._compute_row(name, live, state)
        self._index[name] = (key, row)
        return row

    def _recompute(self, name: str, live: LiveStudy, state: list[Path], key: Any) -> None:
        try:
            self._index[name] = (key, self._compute_row(name, live, state))
        finally:
            with self._lock:
                self._pending.discard(name)

    def _compute_row(self, name: str, live: LiveStudy, state: list[Path]) -> dict[str, Any]:
        """The row from the study's live snapshot: its counts are those of trials.parquet and of
        `study status` (one rule, `study.results.trials.reported_status`), read incrementally."""
        try:
            spec = live.spec()
            snap = live.snapshot()
        except Exception as e:  # noqa: BLE001 - a broken study is marked on its row, the others as usual
            snap = None
            error: str | None = one_line(e, 300)
        else:
            error = snap.error
        if error:
            raw = live.raw_spec()
            return _row(name, trainable=str(raw.get("trainable") or ""), error=error, updated_ns=_mtime(live.dir))
        best, mean_wall = _from_rows(snap.rows, spec)
        updated = max([snap.updated_ns, *[(file_key(p) or (0, 0))[1] for p in state], _mtime(live.dir)])
        return _row(
            name, trainable=spec.trainable, data_source=spec.data.source, counts=snap.counts, total=snap.total,
            updated_ns=updated, metric=spec.metric, mode=spec.mode, best=best, smoke=_smoke(spec),
            claims=_claim_counts(live), eta_s=_eta(mean_wall, snap.counts, snap.total),
        )  # fmt: skip


def _row(name: str, *, trainable: str = "", data_source: str = "", counts: dict | None = None, total: int = 0,
         updated_ns: int = 0, metric: str = "", mode: str = "", best: float | None = None, smoke: bool = False,
         claims: dict | None = None, eta_s: float | None = None, error: str | None = None) -> dict[str, Any]:  # fmt: skip
    counts = dict(counts or {})
    running = sum(counts.get(s, 0) for s in UNFINISHED)
    failed = sum(counts.get(s, 0) for s in ("ERROR", "DIVERGED", "MISSING"))
    done = sum(counts.values()) - running
    return {
        "name": name,
        "trainable": trainable,
        "data_source": data_source,
        "status": study_status(counts, error, total),
        "trials_done": done,
        "trials_running": running,
        "trials_failed": failed,
        "trials_total": max(total, sum(counts.values())),
        "updated": iso(updated_ns),
        "counts": counts,
        "metric": metric,
        "mode": mode,
        "best": best,
        "eta_s": eta_s,
        "claims": claims or {},
        "smoke": smoke,
        "error": error,
    }


def _smoke(spec: Any) -> bool:
    """A ``--smoke`` run: as `study run` records it in the spec (``run.smoke``); a study recorded before
    that record existed, by the name and grid `study.spec.smoke_spec` gives it."""
    record = getattr(spec, "run", None)
    if record is not None:
        return bool(getattr(record, "smoke", False))
    return spec.name.endswith("-smoke") and getattr(spec.search, "grid", "") == "cover"


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _from_rows(rows: list[dict], spec: Any) -> tuple[float | None, float | None]:
    """(best final value of the study's metric over its finished trials, their mean wall time)."""
    import math

    col = f"final_{spec.metric}"
    values, walls = [], []
    for r in rows:
        if r["status"] != "TERMINATED":
            continue
        v, w = r.get(col), r.get("wall_time_s")
        if isinstance(v, (int, float)) and math.isfinite(v):
            values.append(float(v))
        if isinstance(w, (int, float)) and math.isfinite(w):
            walls.append(float(w))
    best = (max(values) if spec.mode == "max" else min(values)) if values else None
    return best, (sum(walls) / len(walls) if walls else None)


def _claim_counts(live: LiveStudy) -> dict[str, int]:
    """Claims per verdict: of the live report when the explorer built one, else of
    ``results/claims.parquet`` (written by `study report`)."""
    from analysis.claims import claim_summary

    claims = live.claims
    if claims is None:
        path = results_dir(live.dir) / "claims.parquet"
        if not path.is_file():
            return {}
        try:
            import pandas as pd

            claims = pd.read_parquet(path)
        except Exception:  # noqa: BLE001 - a damaged table: no counts
            return {}
    if claims is None or claims.empty or "claim" not in claims:
        return {}
    verdicts = claim_summary(claims)["verdict"].value_counts()
    return {str(k): int(v) for k, v in verdicts.items()}


def _eta(mean_wall: float | None, counts: dict[str, int], total: int) -> float | None:
    """Seconds left: trials to go x the mean wall time of a finished one / trials running at once."""
    running = sum(counts.get(s, 0) for s in UNFINISHED)
    left = total - (sum(counts.values()) - running)
    if left <= 0:
        return 0.0 if counts else None
    if mean_wall is None:
        return None
    return float(mean_wall * left / max(1, counts.get("RUNNING", 0)))
