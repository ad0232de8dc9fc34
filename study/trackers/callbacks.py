"""Experiment trackers as Ray Tune logger callbacks: Ray's own, with two things added.

- **A packed trial is its members.** A Tune trial of ``pack: N`` trains N trials at once (its config
  ``{"__pack__": ...}``, each result a ``members`` mapping); every tracker sees N trials instead, with
  the ids, configs and metrics of the tables (``<trial id>-m<i>``, see `study.shapes.expand_packs`).
- **Logging never blocks or fails a study.** MLflow's calls run in order on their own thread, so a
  slow store or server never holds up Tune's loop (TensorBoard only appends to local files, and W&B's
  callback already logs from one Ray actor per trial; both stay in Tune's loop, so their files are
  complete when Tune copies the trial directories into the study at the end). Every call is guarded: a tracker that raises
  prints one warning line, stops logging, and the study goes on. At the end of a run the thread gets
  `FLUSH_S` seconds to finish sending. MLflow's HTTP retries are capped.

Tune pickles its callbacks into the study's ``tuner.pkl``: the trackers a study starts with are the
ones its resumed runs use. Paths inside the study (the default MLflow store, W&B's offline runs)
are found from the trials' storage when the first trial starts, so they follow a moved study.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor
from ray.tune.logger import TBXLoggerCallback

from core.errors import one_line

MLFLOW_DB = "mlruns.db"  # the default MLflow store, inside the study directory
WANDB_DIR = "wandb"  # W&B writes STUDY/wandb/offline-run-* (offline) or run-* (online)
FLUSH_S = float(os.environ.get("STUDY_TRACKER_FLUSH_S", "120"))  # seconds a tracker may take to finish at the end


# --- a pack's members as trials ------------------------------------------------------------------
class MemberTrial:
    """One member of a packed Tune trial, as a tracker sees a trial: its own id (as in the tables),
    config, searched values and trial directory (``member_<i>`` inside the pack's); anything else is
    the pack's (storage, status, checkpoint)."""

    def __init__(self, trial: Any, index: int, config: dict, searched: tuple[str, ...]) -> None:
        self._trial, self.index = trial, index
        self.trial_id = f"{trial.trial_id}-m{index}"
        self.config = config
        self.evaluated_params = {k: config[k] for k in searched if k in config}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_trial"], name)

    @property
    def local_path(self) -> str:
        path = os.path.join(self._trial.local_path, f"member_{self.index}")
        os.makedirs(path, exist_ok=True)  # W&B's logging actor changes into it
        return path

    def init_local_path(self) -> None:
        os.makedirs(self.local_path, exist_ok=True)

    def __str__(self) -> str:
        return f"{self._trial}-m{self.index}"

    def __repr__(self) -> str:
        return str(self)


def member_results(result: dict) -> dict[int, dict]:
    """{member index: its result} of a packed trial's result (Tune's own keys, the member's metrics,
    `time_total_s` its share); {} for a result without members."""
    members = result.get("members")
    if not isinstance(members, dict):
        return {}
    base = {k: v for k, v in result.items() if k not in ("members", "config")}
    share = base.get("time_total_s")
    if isinstance(share, (int, float)) and members:
        base["time_total_s"] = share / len(members)
    return {int(i): {**base, **m} for i, m in members.items() if isinstance(m, dict)}


class _Tracker:
    """Mixed into a Ray logger callback (before it): guards every hook and splits packs into members."""

    tracker = "tracker"
    threaded = True  # hooks run on the tracker's own thread (else in Tune's loop, still guarded)

    def _init_tracker(self, searched: tuple[str, ...]) -> None:
        self._searched = tuple(searched)
        self._members: dict[str, list[MemberTrial]] = {}
        self._broken: str | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__() or {})  # Tune pickles its callbacks: no thread, no queue
        state["_queue"] = state["_thread"] = None
        return state

    # --- the tracker's thread ---
    def _submit(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Run fn(*args, **kwargs) on this tracker's thread, after the calls submitted before it."""
        if self._broken is not None:
            return
        if not self.threaded or threading.current_thread() is self._thread:  # (a hook calling a hook: in order)
            self._safely(fn, *args, **kwargs)
            return
        if self._thread is None:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._work, args=(self._queue,), name=f"study-{self.tracker}",
                                            daemon=True)  # fmt: skip
            self._thread.start()
        self._queue.put((fn, args, kwargs))

    def _work(self, calls: queue.Queue) -> None:
        while (item := calls.get()) is not None:
            fn, args, kwargs = item
            self._safely(fn, *args, **kwargs)

    def _flush(self, timeout: float) -> None:
        """Let the thread finish what it was given (at most `timeout` seconds), then end it."""
        thread, calls = self._thread, self._queue
        if thread is None or calls is None:
            return
        calls.put(None)
        thread.join(timeout)
        self._thread = self._queue = None
        if thread.is_alive():
            print(f"[study] warning: {self.tracker} was still sending after {timeout:.0f}s at the end of the run; "
                  "the rest of its logging is left out", file=sys.stderr, flush=True)  # fmt: skip

    # --- guarding ---
    def _safely(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self._broken is not None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any tracker failure: one line, the study goes on
            self._broken = one_line(f"{type(e).__name__}: {e}", 300)
            print(f"[study] warning: {self.tracker} logging stopped ({self._broken}); the study goes on",
                  file=sys.stderr, flush=True)  # fmt: skip

    def _views(self, trial: Any) -> list[Any]:
        """The trials a tracker sees for a Tune trial: its members for a pack, else itself."""
        if isinstance(trial, MemberTrial):
            return [trial]
        pack = trial.config.get("__pack__") if isinstance(trial.config, dict) else None
        if not isinstance(pack, dict):
            return [trial]
        views = self._members.get(trial.trial_id)
        if views is None:
            views = [
                MemberTrial(trial, i, {**pack["shared"], **member}, self._searched)
                for i, member in enumerate(pack["members"])
            ]
            self._members[trial.trial_id] = views
        for view in views:  # a restored study has new Trial objects for the same trials
            view._trial = trial
        return views

    # --- the hooks (LoggerCallback's) ---
    def setup(self, *args: Any, **kwargs: Any) -> None:
        self._submit(super().setup, *args, **kwargs)

    def log_trial_start(self, trial: Any) -> None:
        for view in self._views(trial):
            self._submit(super().log_trial_start, view)

    def log_trial_restore(self, trial: Any) -> None:
        for view in self._views(trial):
            self._submit(super().log_trial_restore, view)

    def log_trial_save(self, trial: Any) -> None:
        for view in self._views(trial):
            self._submit(super().log_trial_save, view)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        views = self._views(trial)
        if views == [trial]:
            self._submit(super().log_trial_result, iteration, trial, dict(result))
            return
        per_member = member_results(result)
        for view in views:
            if view.index in per_member:
                self._submit(super().log_trial_result, iteration, view, per_member[view.index])

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        for view in self._views(trial):
            self._submit(super().log_trial_end, view, failed=failed)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._submit(super().on_experiment_end, trials, **info)
        self._flush(FLUSH_S)


def _study_dir(trial: Any) -> Path | None:
    """The study directory of a trial on local storage (None on an object store)."""
    storage = trial.storage
    if type(storage.storage_filesystem).__name__ != "LocalFileSystem":
        return None
    return Path(storage.experiment_fs_path)


# --- the three trackers ----------------------------------------------------------------------------
class TensorBoardTracker(_Tracker, TBXLoggerCallback):
    """TensorBoard event files per trial (in its directory; a pack's members in ``member_<i>/``), with
    the searched values as hyperparameters. Replaces Tune's default TensorBoard logger."""

    tracker = "tensorboard"
    threaded = False  # files in the trials' staging directories: written before Tune's last copy of them

    def __init__(self, *, searched: tuple[str, ...]) -> None:
        super().__init__()
        self._init_tracker(searched)


class _MLflowRuns(MLflowLoggerCallback):
    """MLflowLoggerCallback that connects when the first trial starts (the default store is inside
    the study directory, known from the trial's storage), tags each run with its trial's seed and id,
    and continues the run of a resumed trial instead of starting a second one."""

    def setup(self, *args: Any, **kwargs: Any) -> None:
        # an unreachable tracking server: seconds, once (then this tracker stops), not minutes per call
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self._connected = False
        self._trial_runs = {}

    def _connect(self, trial: Any) -> None:
        uri = self.tracking_uri
        if uri is None:
            study = _study_dir(trial)
            if study is None:
                raise RuntimeError("a study on an object store needs mlflow.tracking_uri (a tracking server)")
            uri = f"sqlite:///{study / MLFLOW_DB}"
        self.mlflow_util.setup_mlflow(tracking_uri=uri, experiment_name=self.experiment_name)
        self._connected = True

    def log_trial_start(self, trial: Any) -> None:
        if not getattr(self, "_connected", False):
            self._connect(trial)
        if trial in self._trial_runs:
            return
        found = self.mlflow_util._mlflow.search_runs(
            experiment_ids=[self.mlflow_util.experiment_id],
            filter_string=f"tags.trial_id = '{trial.trial_id}'",
            output_format="list",
        )
        if found:  # a resumed trial: its run goes on
            self._trial_runs[trial] = found[0].info.run_id
            return
        tags = {**self.tags, "trial_name": str(trial), "trial_id": trial.trial_id,
                "seed": str(trial.config.get("seed", ""))}  # fmt: skip
        run_id = self.mlflow_util.start_run(tags=tags, run_name=str(trial)).info.run_id
        self._trial_runs[trial] = run_id
        self.mlflow_util.log_params(run_id=run_id, params_to_log=trial.config)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        super().log_trial_result(iteration, trial, result)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        if trial in self._trial_runs:
            super().log_trial_end(trial, failed=failed)
            del self._trial_runs[trial]


class MLflowTracker(_Tracker, _MLflowRuns):
    """One MLflow run per trial: its config as params, its metrics per epoch, tags for the study,
    family, data source, seed and trial id (default store: ``sqlite:///STUDY/mlruns.db``)."""

    tracker = "mlflow"

    def __init__(
        self, *, tracking_uri: str | None, experiment_name: str, tags: dict[str, str], searched: tuple[str, ...]
    ) -> None:
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment_name, tags=dict(tags))
        self._init_tracker(searched)


class _FlushedWandbActor(_WandbLoggingActor):
    """Ray's W&B logging actor, waiting for W&B to write everything before it returns: Ray kills the
    actor as soon as `run` returns, and W&B's service process writes a run's file after `finish`."""

    def run(self) -> None:
        super().run()
        self._wandb.teardown()


class _WandbRuns(WandbLoggerCallback):
    """WandbLoggerCallback whose runs go under the study directory (``STUDY/wandb/``) on local storage,
    that needs no API key for ``mode: offline``/``disabled``, and whose runs are complete on disk when
    the study ends."""

    _logger_actor_cls = _FlushedWandbActor

    def setup(self, *args: Any, **kwargs: Any) -> None:
        mode = self.kwargs.get("mode")
        if mode in ("offline", "disabled"):
            os.environ["WANDB_MODE"] = mode  # Ray asks for an API key unless WANDB_MODE says not to
        os.environ.setdefault("WANDB_SILENT", "true")
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial: Any) -> None:
        trial.init_local_path()  # the logging actor changes into it (before Tune's own loggers create it)
        if "dir" not in self.kwargs:
            study = _study_dir(trial)
            if study is not None:
                (study / WANDB_DIR).mkdir(parents=True, exist_ok=True)
                self.kwargs["dir"] = str(study)  # W&B adds /wandb itself
        super().log_trial_start(trial)


class WandbTracker(_Tracker, _WandbRuns):
    """One W&B run per trial (its id: the trial id), grouped by study."""

    tracker = "wandb"
    threaded = False  # Ray's callback hands each result to the trial's logging actor at once

    def __init__(
        self, *, project: str, group: str, entity: str | None, mode: str | None, tags: list[str],
        searched: tuple[str, ...],
    ) -> None:  # fmt: skip
        extra: dict[str, Any] = {"tags": list(tags)}
        if entity:
            extra["entity"] = entity
        if mode:
            extra["mode"] = mode
        # at most 2 minutes at the end of a run for uploads (Ray's default waits half an hour)
        super().__init__(project=project, group=group, upload_timeout=120, **extra)
        self._init_tracker(searched)
