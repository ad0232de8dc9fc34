"""Results: read a study directory (Ray Tune's experiment state and trial logs) into tables.

`collect` works on finished, running and interrupted studies alike. `write_results` writes
``results/trials.parquet`` (one row per trial) and ``results/epochs.parquet`` (one row per
trial and epoch), atomically. The study's metadata (metric, mode, hyperparameter columns) is in
the Parquet schema metadata under the key ``study``. `ProgressCallback` prints progress lines.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import yaml

from analysis.load import STATUSES, default_mode
from analysis.report import write_parquet
from study import tune_state
from study.errors import UserError, one_line
from study.spec import Spec
from study.trial_rows import NOT_METRIC_KEYS as _NOT_METRIC_KEYS  # noqa: F401 (re-exported)
from study.trial_rows import RAY_KEYS, TrialRows, summarise, summarise_files  # noqa: F401
from study.trial_rows import is_number as _is_number
from study.trial_rows import num as _num
from study.trial_rows import read_jsonl as _read_jsonl  # noqa: F401 (study.shapes reads pack rows with it)


def error_line(path: str | Path | None, limit: int = 500) -> str | None:
    """The exception line of a trial's error file (Tune writes the whole traceback there)."""
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else None  # a traceback ends with the exception itself


def _error_message(trial_dir: Path, meta: dict) -> str | None:
    return error_line(trial_dir / (meta.get("error_filename") or "error.txt"))


def _trials_from_state(study_dir: Path) -> list[dict]:
    """[{trial_id, status, config, logdir, meta}] from the latest readable experiment state (read as
    JSON by `study.tune_state`, never unpickled; a corrupt newer file is passed over)."""
    out = []
    latest = tune_state.read_latest(Path(study_dir))
    if latest.path is None and latest.skipped:
        raise tune_state.StateError(latest.skipped[0][1])  # every state file is corrupt: say so, not "no trials"
    if latest.path is None and any(Path(study_dir).glob("trial_*/result.json")):
        raise tune_state.StateError(
            f"{study_dir}: no {tune_state.STATE_PATTERN} (Tune's saved state) although trials have results: "
            "the state was deleted; the trials cannot be told apart from leftovers"
        )
    for t in latest.trials:
        meta = {"num_failures": t.num_failures, "last_result": t.last_result, "error_filename": t.error_filename}
        out.append({"trial_id": t.trial_id, "status": t.status, "config": t.config, "logdir": t.logdir, "meta": meta})
    # Trial dirs missing from the state were started after its last snapshot by a driver that was then
    # killed; the resumed run starts those trials again under new ids, so they are not counted here.
    from study.shapes import expand_packs  # issue 13 hook: a packed trial is its members

    return expand_packs(study_dir, out)


def collect(study_dir: Path, spec: Spec, *, parallel: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) tables of a study directory; see the module docstring.

    Each trial's rows are summarised (`study.trial_rows`: its epochs, each metric as a float array)
    and the tables built column by column, not row by row: 10,000 trials of 100 epochs in seconds
    (issue 13). `parallel`: a large study's result files are parsed by spawned worker processes (the
    CLI sets it; a spawned worker imports the caller's main module, so a script calling this with
    `parallel` needs the usual ``if __name__ == "__main__":`` guard)."""
    study_dir = Path(study_dir)
    from trainables import get_family

    hp_cols = hyperparameter_columns(spec)
    epochs_default = get_family(spec.trainable).all_defaults["epochs"]
    scheduler = spec.scheduler.type != "none"
    trials_state = _trials_from_state(study_dir)
    files = [str(study_dir / t["logdir"] / "result.json") for t in trials_state if "rows" not in t]
    from_files = iter(summarise_files(files, workers=None if parallel else 1))
    trial_rows: list[dict[str, Any]] = []
    tids: list[str] = []  # the epochs table, by column: per trial its epochs, times, flags, metrics
    counts: list[int] = []
    epoch_nums: list[int] = []
    times: list[np.ndarray] = []
    diverged: list[np.ndarray] = []
    metric_chunks: dict[str, list[tuple[int, np.ndarray]]] = {}
    epoch_cols: dict[str, None] = {}  # column order as a table built from row dicts would have it
    offset = 0
    for t in trials_state:
        trial_dir = study_dir / t["logdir"]
        summary: TrialRows = summarise(t["rows"]) if "rows" in t else next(from_files)  # issue 13: packs
        metric_names = list(summary.metrics)
        finals: dict[str, float] = {}
        bests: dict[str, float] = {}
        if summary.epochs:
            n = len(summary.epochs)
            if not epoch_cols:
                epoch_cols.update(dict.fromkeys(["trial_id", "epoch", *metric_names, "time_total_s", "diverged"]))
            else:
                epoch_cols.update(dict.fromkeys(metric_names))
            tids.append(t["trial_id"])
            counts.append(n)
            epoch_nums.extend(summary.epochs)
            times.append(summary.times)
            diverged.append(summary.diverged)
            for m, vals in summary.metrics.items():
                metric_chunks.setdefault(m, []).append((offset, vals))
                arr = vals[np.isfinite(vals)]
                mode = spec.mode if m == spec.metric else default_mode(m)
                finals[m] = float(arr[-1]) if arr.size else math.nan
                bests[m] = (float(arr.min() if mode == "min" else arr.max())) if arr.size else math.nan
            offset += n
        last = summary.last
        epochs = [{"epoch": e} for e in summary.epochs]  # what missing_data reads of them
        config = t["config"]
        status = final_status(t["status"], last, config.get("epochs", epochs_default), scheduler=scheduler)
        missing = missing_data(trial_dir, t["status"], epochs, config.get("epochs", epochs_default), status)
        if missing and status != "ERROR":
            status = "MISSING"
        row: dict[str, Any] = {"trial_id": t["trial_id"], "status": status}
        for c in hp_cols:
            row[c] = _cell(config.get(c))
        row["seed"] = config.get("seed")
        if row["seed"] is None and "__trial_index__" in config:  # Repeater (optuna): seed from the repeat index
            row["seed"] = spec.seed_list[int(config["__trial_index__"])]
        for m in metric_names:
            row[f"final_{m}"] = finals[m]
            row[f"best_{m}"] = bests[m]
        row["params"] = last.get("params")
        row["epochs_done"] = int(last.get("epoch", 0)) if last else 0
        row["wall_time_s"] = _num(last.get("time_total_s")) if last else 0.0
        row["num_failures"] = int(t["meta"].get("num_failures", 0) or 0)
        err = _error_message(trial_dir, t["meta"]) if status == "ERROR" else None
        row["error"] = missing or err or (last.get("error") if status == "DIVERGED" else None)
        trial_rows.append(row)
    trials = pd.DataFrame(sorted(trial_rows, key=lambda r: r["trial_id"]))
    if trials.empty:
        trials = pd.DataFrame(
            columns=["trial_id", "status", *hp_cols, "seed", "params", "epochs_done", "wall_time_s", "error"]
        )
    if not offset:
        return trials, pd.DataFrame(columns=["trial_id", "epoch", "time_total_s", "diverged"])
    columns: dict[str, Any] = {
        "trial_id": np.repeat(np.array(tids, dtype=object), counts),
        "epoch": np.asarray(epoch_nums, dtype=np.int64),
        "time_total_s": np.concatenate(times),
        "diverged": np.concatenate(diverged),
    }
    for m, chunks in metric_chunks.items():
        col = np.full(offset, np.nan)
        for start, vals in chunks:
            col[start : start + len(vals)] = vals
        columns[m] = col
    return trials, pd.DataFrame({c: columns[c] for c in epoch_cols})


def hyperparameter_columns(spec: Spec) -> list[str]:
    """Columns named as in the YAML: data keys, fixed keys, then searched keys (no seed)."""
    cols = [*spec.data.config, *spec.fixed, *spec.space]
    return list(dict.fromkeys(c for c in cols if c != "seed"))


def study_metadata(spec: Spec, study_dir: Path) -> dict[str, Any]:
    source = study_dir / "spec_file.txt"
    return {
        "name": spec.name,
        "spec_file": source.read_text().strip() if source.exists() else "",
        "trainable": spec.trainable,
        "data_source": spec.data.source,
        "metric": spec.metric,
        "mode": spec.mode,
        "hyperparameters": hyperparameter_columns(spec),
        "searched": list(spec.space),
        "grid_axes": spec.grid_axes,
    }


def write_results(study_dir: Path, spec: Spec, trials: pd.DataFrame, epochs: pd.DataFrame) -> Path:
    out = Path(study_dir) / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {b"study": json.dumps(study_metadata(spec, Path(study_dir))).encode()}
    source = {"data_source": spec.data.source}  # in every table: what the numbers were measured on
    write_parquet(_mixed_to_str(trials.assign(**source)), out / "trials.parquet", metadata=meta)
    write_parquet(epochs.assign(**source), out / "epochs.parquet", metadata=meta)
    return out


def _mixed_to_str(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: columns mixing types (e.g. None and lists) become text."""
    df = df.copy()
    for c in df.columns:
        types = {type(v) for v in df[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(types) > 1 and not types <= {int, float, bool}:
            df[c] = [None if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v) for v in df[c]]
    return df


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def format_counts(counts: dict[str, int]) -> str:
    parts = [f"{counts[s]} {s.lower()}" for s in STATUSES if counts.get(s)]
    return ", ".join(parts) if parts else "no trials"


def final_status(status: str, last: dict, epochs: int, scheduler: bool = True) -> str:
    """Tune's status, with a TERMINATED trial told apart by its last result: DIVERGED (it stopped
    itself on a NaN/inf loss), STOPPED (a `scheduler` ended it before `epochs`) or, without a
    scheduler, MISSING (its last epochs are not on record: nothing but missing data ends it early)."""
    if status == "TERMINATED" and last.get("diverged"):
        return "DIVERGED"
    if status == "TERMINATED" and int(last.get("epoch", 0) or 0) < int(epochs):
        return "STOPPED" if scheduler else "MISSING"
    return status


def missing_data(trial_dir: Path, status: str, epochs: list[dict], n_epochs: int, final: str) -> str | None:
    """Why a finished trial's data is missing (its directory, its result.json, or epochs of a trial
    that ran them all), or None. Such a trial is reported as MISSING, never as stopped or complete."""
    if status not in ("TERMINATED", "ERROR"):
        return None
    if not trial_dir.is_dir():
        return f"{trial_dir.name}: trial directory missing (deleted or not synced); its results are lost"
    if status == "ERROR":
        return None
    if not epochs:
        return f"{trial_dir.name}/result.json: missing or empty; the trial finished but its results are lost"
    done = [int(r["epoch"]) for r in epochs]
    if final == "MISSING" or (final == "TERMINATED" and done != list(range(1, int(n_epochs) + 1))):
        gaps = sorted(set(range(1, int(n_epochs) + 1)) - set(done))
        return f"{trial_dir.name}/result.json: epochs {_ranges(gaps)} of {n_epochs} missing"
    return None


def _ranges(values: list[int]) -> str:
    if not values:
        return "none"
    out, start, prev = [], values[0], values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


def study_counts(study_dir: Path) -> dict[str, int]:
    """Trials by status from the saved state (no result files read): as in trials.parquet."""
    from trainables import get_family

    spec_file = Path(study_dir) / "spec.yaml"
    try:
        raw = yaml.safe_load(spec_file.read_text()) if spec_file.exists() else {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise UserError(f"{spec_file}: cannot be read ({one_line(e, 200)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{spec_file}: not a study spec (a mapping of keys)")
    try:  # a trial's config holds its fixed and searched keys: only the family default is missing
        epochs_default = get_family(raw.get("trainable", "")).all_defaults["epochs"]
    except UserError:  # no spec (yet): epochs unknown, so no STOPPED
        epochs_default = 0
    scheduler = (raw.get("scheduler") or {}).get("type", "none") != "none"
    counts: dict[str, int] = {}
    for t in _trials_from_state(study_dir):
        last = t["meta"].get("last_result") or {}
        status = final_status(t["status"], last, t["config"].get("epochs", epochs_default), scheduler=scheduler)
        if t["status"] == "TERMINATED" and _results_gone(Path(study_dir) / t["logdir"]):
            status = "MISSING"
        counts[status] = counts.get(status, 0) + 1
    return counts


def _results_gone(trial_dir: Path) -> bool:
    """A finished trial's directory or result.json is missing or empty (what `missing_data` calls
    lost, told without reading the results)."""
    try:
        return (trial_dir / "result.json").stat().st_size == 0
    except OSError:
        return True


def list_studies(storage: str | Path) -> list[dict[str, Any]]:
    """Studies under a storage root with trial counts by status (reads the state, not Ray)."""
    from study.storage import Store

    store = Store.open(storage)
    out = []
    for name in store.names():
        try:  # one broken study (bad spec.yaml, unreadable state) is marked, the others still listed
            study_dir = store.pull(name)
            out.append({"name": name, "dir": study_dir, "counts": study_counts(study_dir), "error": None})
        except Exception as e:  # noqa: BLE001
            out.append({"name": name, "dir": None, "counts": {}, "error": one_line(e, 300)})
    return out


def _short_value(v: Any) -> str:
    from study.errors import short

    return str(v) if isinstance(v, (int, bool)) else short(v, 40).strip("'")


def _fmt_duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


MAX_TRIAL_LINES = 20  # one-line messages about single trials (failures, retries, checkpoint fallbacks)
MAX_PROGRESS_STEPS = 50  # a study of more trials prints a line per total/50 finished trials


def make_progress_callback(spec: Spec, out: TextIO, every_s: float = 20.0):
    """A `ray.tune.Callback` printing progress lines: one per finished trial (per `n_trials /
    MAX_PROGRESS_STEPS` finished trials in a large study) and every `every_s` seconds; one line per
    failed or retried trial and per checkpoint fallback, the first `MAX_TRIAL_LINES` of them."""
    from ray.tune import Callback

    class ProgressCallback(Callback):
        def __init__(self, spec: Spec, out: TextIO) -> None:  # no closures: Tune pickles callbacks
            self.spec = spec
            self.t0 = time.time()
            self.last_print = 0.0
            self.last_line = ""
            self.out = out
            self.trial_lines = 0

        def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment: not the stream
            return {k: v for k, v in self.__dict__.items() if k != "out"}

        def __setstate__(self, state: dict) -> None:
            self.__dict__.update(state, out=sys.stdout)

        def _line(self, trials: list, ending: Any = None, status: str = "") -> str:
            """The progress line; `ending` is a trial Tune is finishing (still RUNNING) with its `status`."""
            from study.shapes import member_count
            spec = self.spec
            counts: dict[str, int] = {}
            best, best_trial = None, None
            for t in trials:
                s = status if t is ending else t.status
                counts[s] = counts.get(s, 0) + member_count(t.config)  # issue 13: a pack counts its members
                # the trial's best value so far (Tune keeps max/min of every metric), so "best" never regresses
                value = t.run_metadata.metric_analysis.get(spec.metric, {}).get(spec.mode)
                if _is_number(value) and (best is None or (value > best if spec.mode == "max" else value < best)):
                    best, best_trial = value, t
            done = counts.get("TERMINATED", 0) + counts.get("ERROR", 0)
            total = max(len(trials), spec.n_trials())
            elapsed = time.time() - self.t0
            line = f"[study] {done}/{total} done, {counts.get('RUNNING', 0)} running, {counts.get('ERROR', 0)} failed"
            if best is not None:
                shown = {k: best_trial.config.get(k) for k in [*spec.space, "seed"] if k in best_trial.config}
                hp = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={_short_value(v)}" for k, v in shown.items())
                line += f" | best {spec.metric}={best:.4g} ({hp})"
            line += f" | {_fmt_duration(elapsed)}"
            return line

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            now = time.time()
            if now - self.last_print >= every_s:
                self._print(trials, force=True)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._print(trials, ending=trial, status="TERMINATED")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._trial_line(
                f"[study] trial {trial.trial_id} failed for good: {error_line(trial.error_file, 200) or 'see its error.txt'}"
            )
            self._print(trials, ending=trial, status="ERROR")

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            n = trial.run_metadata.num_failures
            self._trial_line(f"[study] trial {trial.trial_id} failed ({error_line(trial.error_file, 200) or 'see its error.txt'}); "
                             f"retry {n} of {self.spec.max_failures}, from its last checkpoint")  # fmt: skip

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            note = result.get("restore_note")  # trainables.common.RESTORE_NOTE: a checkpoint could not be read
            if note:
                self._trial_line(f"[study] trial {trial.trial_id}: {one_line(note, 300)}")

        def _trial_line(self, line: str) -> None:
            self.trial_lines += 1
            if self.trial_lines <= MAX_TRIAL_LINES:
                print(line, file=self.out, flush=True)
            elif self.trial_lines == MAX_TRIAL_LINES + 1:
                print(f"[study] more than {MAX_TRIAL_LINES} trial messages: the rest are counted in the progress "
                      "lines (errors in trials.parquet and the report)", file=self.out, flush=True)  # fmt: skip

        def _print(self, trials: list, force: bool = False, ending: Any = None, status: str = "") -> None:
            line = self._line(trials, ending, status)
            if not force and line.split(" | ")[0] == self.last_line.split(" | ")[0]:
                return
            if not force:  # a large study: a line per `step` finished trials (and the last one), or every 5 s
                total = max(len(trials), self.spec.n_trials())
                step = max(1, -(-total // MAX_PROGRESS_STEPS))
                done = int(line.split("[study] ", 1)[1].split("/", 1)[0])
                if done % step and done < total and time.time() - self.last_print < 5:
                    return
            print(line, file=self.out, flush=True)
            self.last_line, self.last_print = line, time.time()

    return ProgressCallback(spec, out)


def prune_checkpoints(fs: Any, exp_path: str, skip: set[str] | None = None) -> set[str]:
    """Delete all but the last checkpoint of every trial that the SAVED experiment state records as
    finished (so no resume can still need them). Returns the ids of the trials now pruned."""
    import pyarrow.fs

    done: set[str] = set()
    infos = fs.get_file_info(pyarrow.fs.FileSelector(exp_path, allow_not_found=True))
    states = sorted(
        i.path for i in infos if i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json")
    )
    if not states:
        return done
    with fs.open_input_stream(states[-1]) as f:
        try:
            trials = tune_state.parse_state(f.read(), states[-1])
        except tune_state.StateError:  # a corrupt state: prune nothing (the run repairs it on resume)
            return done
    for t in trials:
        if t.status not in ("TERMINATED", "ERROR") or t.trial_id in (skip or ()):
            continue
        trial_dir = f"{exp_path}/{t.logdir}"
        found = fs.get_file_info(pyarrow.fs.FileSelector(trial_dir, allow_not_found=True))
        ckpts = sorted(
            i.path for i in found if i.base_name.startswith("checkpoint_") and i.type == pyarrow.fs.FileType.Directory
        )
        for old in ckpts[:-1]:
            fs.delete_dir(old)
        done.add(t.trial_id)
    return done


def make_prune_callback(every_s: float = 30.0):
    """A `ray.tune.Callback` that keeps disk use bounded while a study runs: every `every_s` seconds it
    prunes finished trials' checkpoints with `prune_checkpoints` (the runner does a last pass after
    `fit`). Checkpoints are never deleted while the saved state may still point at them (Tune's own
    num_to_keep can, which breaks a resume)."""
    from ray.tune import Callback

    class PruneCheckpoints(Callback):
        def __init__(self) -> None:
            self.pruned: set[str] = set()
            self.last = 0.0

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if trials and time.time() - self.last >= every_s:
                self.last = time.time()
                self._prune(trials[0])

        def _prune(self, trial: Any) -> None:
            try:
                self.pruned |= prune_checkpoints(
                    trial.storage.storage_filesystem, trial.storage.experiment_fs_path, self.pruned
                )
            except (OSError, ValueError, KeyError):  # pruning only saves space: never fail a study over it
                pass

    return PruneCheckpoints()
