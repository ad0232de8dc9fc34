"""The `ray.tune.Callback`s of a run: progress lines, checkpoint pruning, the free-space guard.

Tune pickles callbacks into ``tuner.pkl`` (and a resumed study gets them back from there): each is
built by a ``make_*`` function as a class without closures, holding no path and no stream.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from core.errors import one_line, short
from core.safe_read import STATE_LIMIT, confined
from study.results import state as tune_state
from study.results.packs import member_count
from study.results.rows import is_number
from study.results.trials import error_line
from study.run import stop as run_stop
from study.run.disk import free_space_needed
from study.spec.model import Spec


def short_value(v: Any) -> str:
    """A hyperparameter value as the progress line shows it."""
    return str(v) if isinstance(v, (int, bool)) else short(v, 40).strip("'")


def fmt_duration(s: float) -> str:
    """``1h02m`` or ``3m05s``."""
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
            spec = self.spec
            counts: dict[str, int] = {}
            best, best_trial = None, None
            for t in trials:
                s = status if t is ending else t.status
                counts[s] = counts.get(s, 0) + member_count(t.config)  # a pack counts its members
                # the trial's best value so far (Tune keeps max/min of every metric), so "best" never regresses
                value = t.run_metadata.metric_analysis.get(spec.metric, {}).get(spec.mode)
                if is_number(value) and (best is None or (value > best if spec.mode == "max" else value < best)):
                    best, best_trial = value, t
            done = counts.get("TERMINATED", 0) + counts.get("ERROR", 0)
            total = max(len(trials), spec.n_trials())
            elapsed = time.time() - self.t0
            line = f"[study] {done}/{total} done, {counts.get('RUNNING', 0)} running, {counts.get('ERROR', 0)} failed"
            if best is not None:
                config = self._best_config(best_trial)
                shown = {k: config.get(k) for k in [*spec.space, "seed"] if k in config}
                hp = " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={short_value(v)}" for k, v in shown.items()
                )
                line += f" | best {spec.metric}={best:.4g} ({hp})"
            line += f" | {fmt_duration(elapsed)}"
            return line

        def _best_config(self, trial: Any) -> dict:
            """The trial's config; for a pack, its best member's (the pack's own config is ``__pack__``)."""
            pack = trial.config.get("__pack__") if isinstance(trial.config, dict) else None
            if not isinstance(pack, dict):
                return trial.config
            _, i = getattr(self, "best_members", {}).get(trial.trial_id, (None, None))
            members = pack.get("members") or []
            member = members[i] if isinstance(i, int) and i < len(members) else {}
            return {**(pack.get("shared") or {}), **member}

        def _track_pack(self, trial: Any, result: dict) -> None:
            """For a pack: which member holds its best value so far (the progress line shows its config)."""
            members = result.get("members") if isinstance(result, dict) else None
            if not isinstance(members, dict):
                return
            best = self.__dict__.setdefault("best_members", {})
            held = best.get(trial.trial_id, (None, None))[0]
            for key, m in members.items():
                value = m.get(self.spec.metric) if isinstance(m, dict) and not m.get("diverged") else None
                if is_number(value) and (held is None or (value > held if self.spec.mode == "max" else value < held)):
                    held = value
                    best[trial.trial_id] = (value, int(key))

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
            self._track_pack(trial, result)
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
            trials = tune_state.parse_state(f.read(STATE_LIMIT + 1), states[-1])
        except tune_state.StateError:  # a corrupt state: prune nothing (the run repairs it on resume)
            return done
    local = type(fs).__name__ == "LocalFileSystem"
    for t in trials:
        if t.status not in ("TERMINATED", "ERROR") or t.trial_id in (skip or ()) or t.problem:
            continue
        trial_dir = f"{exp_path}/{t.logdir}"
        if local and confined(exp_path, t.logdir) is None:  # a link out of the study: nothing there is deleted
            continue
        found = fs.get_file_info(pyarrow.fs.FileSelector(trial_dir, allow_not_found=True))
        ckpts = sorted(
            i.path for i in found if i.base_name.startswith("checkpoint_") and i.type == pyarrow.fs.FileType.Directory
            and not (local and (Path(i.path).is_symlink() or confined(trial_dir, i.base_name) is None))
        )  # fmt: skip
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


def make_guard_callback():
    """A `ray.tune.Callback` that keeps a study safe while it runs (local storage): every second it
    checks the free space and stops the run (as Ctrl-C) before the disk is full; every 5 s it keeps a
    copy of the newest good experiment state (`tune_state.backup_snapshot`; only while trials run:
    when the run ends Tune marks the trials it stops as finished in its staging copy); a trial failing with "no
    space left" also stops the run, so no trial is failed for good for lack of space."""
    from ray.tune import Callback

    class GuardCallback(Callback):
        """Holds no path: Tune pickles callbacks into tuner.pkl, and a study copied or moved elsewhere
        must guard (and back up into) its new place, which the trials' storage context knows."""

        def __init__(self) -> None:
            self.last_check = self.last_backup = 0.0

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if not trials:
                return
            storage = trials[0].storage
            if type(storage.storage_filesystem).__name__ != "LocalFileSystem":
                return  # object stores: no free-space check, no backup (README)
            study_dir = Path(storage.experiment_fs_path)
            staging = getattr(storage, "experiment_driver_staging_path", None)
            now = time.time()
            if now - self.last_check >= 1.0:
                self.last_check = now
                try:
                    states = tune_state.state_files(Path(staging)) if staging else []
                    need = free_space_needed(max((f.stat().st_size for f in states), default=0))
                    free = shutil.disk_usage(study_dir).free
                except OSError:
                    need, free = 0, 1
                if free < need:
                    run_stop.current().request("disk_full", f"{free / 1e6:.1f} MB free, {need / 1e6:.1f} MB needed")
                    return
            if staging and now - self.last_backup >= 5.0:
                self.last_backup = now
                try:
                    tune_state.backup_snapshot(staging, study_dir)
                except OSError:
                    pass

        def _failed(self, trial: Any) -> None:
            text = error_line(trial.error_file, 300) or ""
            if "No space left on device" in text or "Disk quota exceeded" in text:
                run_stop.current().request("disk_full", text)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._failed(trial)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._failed(trial)

    return GuardCallback()
