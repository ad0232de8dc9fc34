"""Run a study: spec -> Ray Tune `Tuner` (or `Tuner.restore` for an interrupted study) -> Parquet.

A study lives in ``STORAGE/NAME/``: Ray Tune's experiment (trial directories, checkpoints,
experiment state), ``spec.yaml`` (the resolved spec it was started with) and ``results/``.
Running the same study again resumes it: finished trials are kept, unfinished ones continue
from their last checkpoint. A complete study is not run again (no Ray is started): its tables and
report are rebuilt, so an edited ``paper:`` block or description shows up.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import shutil
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from analysis.report import write_text
from study import results as results_mod
from study import tune_state
from study.errors import DiskFull, UserError, is_disk_full, one_line, short
from study.lock import StudyLock
from study.spec import Spec, check_configs, check_name, load_spec, smoke_spec, spec_to_yaml, to_param_space
from study.storage import Store

SPEC_FILE = "spec.yaml"
SPEC_SOURCE_FILE = "spec_file.txt"  # path of the YAML the study was started from


@dataclass(frozen=True)
class RunOutcome:
    study_dir: Path
    counts: dict[str, int]
    report: Path | None

    @property
    def failed(self) -> bool:
        return self.counts.get("ERROR", 0) > 0


def trial_entry(config: dict, data: Any = None, *, family_name: str, seeds: list[int] | None = None) -> None:
    """The function Ray Tune runs for every trial: look the family up, run the contract loop."""
    from trainables import get_family
    from trainables.common import run_trial

    run_trial(config, data, family=get_family(family_name), seeds=seeds)


def trial_dirname(trial: Any) -> str:
    """``trial_<id>``; never an existing directory (a new trial must not write into another's)."""
    name = f"trial_{trial.trial_id}"
    try:
        import pyarrow.fs

        storage = trial.storage
        info = storage.storage_filesystem.get_file_info(f"{storage.experiment_fs_path}/{name}")
        if info.type != pyarrow.fs.FileType.NotFound:
            name += f"_{uuid.uuid4().hex[:6]}"
    except Exception:  # noqa: BLE001 - no storage yet: Tune's own unique-name rule applies
        pass
    return name


# Why the current run is being stopped early (set by signal handlers and the guard callback, which run in
# the driver's main thread; Tune pickles callbacks, so this lives at module level)
_STOP: dict[str, str | None] = {"reason": None, "detail": None}


def request_stop(reason: str, detail: str) -> None:
    """Stop the study as Ctrl-C does (Tune saves the state; unfinished trials stay resumable)."""
    if _STOP["reason"] is None:
        _STOP.update(reason=reason, detail=detail)
    handler = signal.getsignal(signal.SIGUSR1)
    if callable(handler) and threading.current_thread() is threading.main_thread():
        handler(signal.SIGUSR1, None)  # Tune's interrupt handler: ends the run loop after this step
    else:
        raise KeyboardInterrupt


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (kill, a batch system, docker stop) is handled as Ctrl-C."""
    first = _STOP["reason"] is None
    if first:
        _STOP.update(reason="sigterm", detail="SIGTERM")
    handler = signal.getsignal(signal.SIGINT)
    if first and callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)  # Tune's graceful stop while it runs
        return
    raise Terminated


class Terminated(KeyboardInterrupt):
    """The run was stopped by SIGTERM (exit status 143)."""


def _install_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


class _RayLogGuard(logging.Filter):
    """On Tune's controller and experiment-state loggers: hides their per-trial tracebacks (our
    progress lines report failures), stops the run when Tune failed to restore a study (it would
    silently start it over), and turns a failed state upload on a full disk into a stop."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("Failed to restore the run state"):
            exc = record.exc_info[1] if record.exc_info else None
            _STOP.update(reason="restore_failed", detail=one_line(f"{type(exc).__name__}: {exc}", 300))
            raise tune_state.StateError(f"Tune could not restore the study ({_STOP['detail']})")
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_disk_full(exc):
            if _STOP["reason"] is None:
                _STOP.update(reason="disk_full", detail=one_line(exc, 200))
            return False  # one line at the end says it
        if record.name.endswith("experiment_state"):  # other failures to save the state stay visible
            return record.levelno >= logging.WARNING
        return record.levelno >= logging.CRITICAL


def prepare_spec(spec_path: str | Path, overrides: list[str], smoke: bool) -> Spec:
    from trainables import get_family

    spec = load_spec(spec_path, overrides)
    if smoke:
        spec = smoke_spec(spec, dict(get_family(spec.trainable).smoke))
    return spec


# spec keys a resumed study may change (no trial uses them; the name is the study's directory anyway)
EDITABLE = {"name": None, "description": None, "paper": None}


def spec_difference(old: dict, new: dict, prefix: str = "") -> str | None:
    """The first key path where two spec dicts differ, with both values; None if equal."""
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            return spec_difference(a, b, f"{prefix}{key}.")
        return f"{prefix}{key} was {short(a)}, now {short(b)}"
    return None


def record_spec(store: Store, name: str, spec: Spec, spec_path: str | Path) -> Path:
    """Save the resolved spec; refuse to resume a study whose trials would differ (`spec_difference`;
    `description` and `paper` may change, and are then saved). Returns the local dir."""
    text = spec_to_yaml(spec)
    from ray import tune

    existing = store.read_text(name, SPEC_FILE)
    local = store.local_dir(name)
    if existing is not None and tune.Tuner.can_restore(store.study_path(name)):
        if existing == text:
            return local
        # what the trials ran must not change; the description and the paper's numbers may
        old, new = yaml.safe_load(existing) or {}, yaml.safe_load(text)
        changed = spec_difference({**old, **EDITABLE}, {**new, **EDITABLE})
        if changed:
            raise UserError(
                f"{store.study_path(name)}: this study was started with a different spec ({changed}); "
                f"use --name to start a new study, or rerun with the same file and --set values"
            )
    local.mkdir(parents=True, exist_ok=True)
    (local / SPEC_FILE).unlink(missing_ok=True)
    write_text(text, local / SPEC_FILE)
    write_text(str(Path(spec_path).resolve()) + "\n", local / SPEC_SOURCE_FILE)
    store.push(name, SPEC_FILE, SPEC_SOURCE_FILE)
    return local


def init_ray(address: str | None) -> None:
    """Local Ray in-process by default; `address` ("auto", "host:port", "ray://...") joins a cluster."""
    import ray

    if ray.is_initialized():
        return
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    if address is None:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
        return
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--address {address}: cannot connect to a Ray cluster ({first})") from None


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not minutes, when an explicit host:port does not answer (ray.init retries ~14 min)."""
    import socket

    hostport = address.split("://", 1)[-1]
    if address == "auto" or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except ValueError:
        raise UserError(f"--address {address}: port must be a number (e.g. 10.0.0.5:6379 or auto)") from None
    except OSError as e:
        raise UserError(
            f"--address {address}: no Ray cluster answers there ({e.strerror or e}); "
            "on a cluster's head node use --address auto, from a laptop use `study submit`"
        ) from None


def check_resources(spec: Spec) -> None:
    """Fail fast when a fixed-size cluster can never give one trial what the spec asks for."""
    import ray

    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(all(n.get(k, 0) >= v for k, v in need.items() if v > 0) for n in nodes):
        return
    if autoscaling_cluster():
        print(f"[study] no node has cpu={spec.resources.cpu:g}, gpu={spec.resources.gpu:g} yet: "
              "waiting for the autoscaler to add one", flush=True)  # fmt: skip
        return
    total = ray.cluster_resources()
    have = ", ".join(f"{k}={total.get(k, 0):g}" for k in need)
    raise UserError(
        f"resources: a trial asks for cpu={spec.resources.cpu:g}, gpu={spec.resources.gpu:g} but no node of this "
        f"fixed-size cluster has that (cluster total: {have}); lower resources.* with --set or use a cluster"
    )


def autoscaling_cluster() -> bool:
    """True when the cluster runs an autoscaler that can add nodes (then waiting is right).

    The autoscaler monitor of every head writes its report to the GCS key ``__autoscaling_status``
    (what ``ray status`` reads). Without an autoscaling config it runs read-only and names node
    types ``node_<id>``; a launcher cluster reports its configured types (tests/cluster/NOTES.md).
    """
    import json

    import ray

    try:
        from ray._raylet import GcsClient

        gcs = GcsClient(address=ray.get_runtime_context().gcs_address)
        raw = gcs.internal_kv_get(b"__autoscaling_status", None, timeout=5)
    except Exception:  # noqa: BLE001 - no report: treat as fixed-size
        return False
    if not raw:
        return False
    types = set((json.loads(raw).get("autoscaler_report") or {}).get("node_type_mapping", {}).values())
    return bool(types) and not all(t.startswith("node_") for t in types)


def build_tuner(spec: Spec, store: Store, name: str, data: Any, progress: Any):
    from ray import tune

    from trainables import get_family

    family = get_family(spec.trainable)
    seeds = spec.seed_list
    use_repeater = spec.search.algorithm == "optuna" and len(seeds) > 1
    trainable = tune.with_resources(
        tune.with_parameters(trial_entry, data=data, family_name=spec.trainable, seeds=seeds if use_repeater else None),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    from study import shapes  # issue 13 hook: DDP (resources.workers) and packed (pack) trials

    trainable = shapes.shaped_trainable(spec, data, seeds if use_repeater else None) or trainable
    path = store.study_path(name)
    if tune.Tuner.can_restore(path):
        print(f"[study] resuming {path}", file=progress.out, flush=True)
        try:
            return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
        except Exception as e:  # noqa: BLE001 - a cut or foreign tuner.pkl: Ray raises whatever unpickling raised
            if is_disk_full(e):
                raise
            raise tune_state.StateError(
                f"{path}/tuner.pkl: Tune cannot read it ({type(e).__name__}: {one_line(e, 150)}); the study cannot "
                "be resumed: start it again under a new --name"
            ) from None

    param_space = to_param_space(spec, with_seeds=not use_repeater)
    param_space.setdefault("threads", max(1, int(math.floor(spec.resources.cpu))))
    if spec.pack > 1:  # issue 13 hook: one Tune trial per pack of members
        param_space = shapes.pack_param_space(spec, param_space["threads"])
    num_samples = spec.search.num_samples
    search_alg = None
    if spec.search.algorithm == "optuna":
        import optuna
        from ray.tune.search import Repeater
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory" on stderr
        search_alg = OptunaSearch(seed=spec.search.seed)
        if use_repeater:
            search_alg = Repeater(search_alg, repeat=len(seeds), set_index=True)
            num_samples *= len(seeds)
    else:
        from ray.tune.search import BasicVariantGenerator

        # constant_grid_search: a sampled config is reused across the grid (seeds are a grid axis),
        # so every sampled configuration is repeated with every seed
        search_alg = BasicVariantGenerator(constant_grid_search=True, random_state=spec.search.seed)
    scheduler = None
    if spec.scheduler.type == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=int({**family.all_defaults, **spec.base_config()}["epochs"]),
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=shapes.max_concurrent(spec),  # issue 13: DDP trials that fit at once
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=store.root,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            # every epoch's checkpoint is kept while a trial runs (so the saved state never points at a
            # deleted one after a crash); finished trials keep only their last (PruneCheckpoints)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            verbose=0,
            callbacks=[progress, results_mod.make_prune_callback(), make_guard_callback()],
        ),
    )


def run_study(
    spec_path: str | Path,
    *,
    name: str | None = None,
    storage: str | Path = "studies",
    overrides: list[str] | None = None,
    smoke: bool = False,
    address: str | None = None,
    report: bool = True,
    out: TextIO | None = None,
) -> RunOutcome:
    """Run (or resume) a study and write its results; see the module docstring.

    Raises `UserError` (bad input, a study another run holds), `DiskFull` (the storage filled up:
    rerun once space is freed), `KeyboardInterrupt` (Ctrl-C; `Terminated` for SIGTERM) after writing
    the tables of what finished."""

    out = out or sys.stdout
    given_name = name
    _STOP.update(reason=None, detail=None)
    main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        _install_sigterm()
        return _run_study(spec_path, given_name, storage, overrides, smoke, address, report, out)
    finally:
        if main_thread and previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _run_study(
    spec_path: str | Path, name: str | None, storage: str | Path, overrides: list[str] | None, smoke: bool,
    address: str | None, report: bool, out: TextIO,
) -> RunOutcome:  # fmt: skip
    given_name = name
    if address is not None:
        check_reachable(address)  # seconds, before the spec's imports
    spec = prepare_spec(spec_path, overrides or [], smoke)
    if name is not None:  # the study's name everywhere (directory, report, table metadata)
        spec = spec.model_copy(update={"name": check_name(name, "--name")})
    name = spec.name
    store = Store.open(storage, create=True)
    resume_cmd = shlex.join(
        ["study", "run", str(spec_path), *(["--name", given_name] if given_name else []),
         "--storage", str(storage), *[a for o in (overrides or []) for a in ("--set", o)],
         *(["--smoke"] if smoke else []), *(["--address", address] if address else []),
         *([] if report else ["--no-report"])]
    )  # fmt: skip
    try:
        lock = StudyLock(store, name).acquire()
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull(f"--storage {store.root}: no space left on device; free some space and run: {resume_cmd}") from None
        raise
    if lock.note:
        print(f"[study] {name}: {lock.note}", file=out, flush=True)
    try:
        return _run_locked(spec, spec_path, store, name, address, report, out, resume_cmd)
    except Exception as e:
        if is_disk_full(e) or _STOP["reason"] == "disk_full":
            raise DiskFull(_disk_full_line(store, resume_cmd, _STOP["detail"] or one_line(e, 200))) from None
        if _STOP["reason"] == "restore_failed" and not isinstance(e, UserError):
            raise tune_state.StateError(
                f"{store.study_path(name)}: Tune could not restore the study ({_STOP['detail']}); nothing was run"
            ) from None
        raise
    finally:
        lock.release()


def _disk_full_line(store: Store, resume_cmd: str, detail: str) -> str:
    free = ""
    if not store.remote:
        try:
            free = f", {shutil.disk_usage(store.root).free / 1e6:.1f} MB free"
        except OSError:
            pass
    return (
        f"--storage {store.root}: no space left on device{free} ({one_line(detail, 160)}); the study was stopped "
        f"with nothing lost: free some space, then run the same command again to resume: {resume_cmd}"
    )


def _run_locked(
    spec: Spec, spec_path: str | Path, store: Store, name: str, address: str | None, report: bool, out: TextIO,
    resume_cmd: str,
) -> RunOutcome:  # fmt: skip
    where = store.study_path(name)
    print(
        f"[study] {name}: {spec.n_trials()} trials of {spec.trainable} on {spec.data.source} -> {where}",
        file=out,
        flush=True,
    )
    complete = complete_counts(store, name, spec)
    interrupted = False
    if complete is not None:  # nothing to run: no Ray; tables and report are rebuilt (the paper block may be new)
        record_spec(store, name, spec, spec_path)
        print(f"[study] {name}: already complete ({results_mod.format_counts(complete)})", file=out, flush=True)
    else:
        interrupted = _run_trials(spec, spec_path, store, name, address, out)
    if _STOP["reason"] == "disk_full":  # the tables would not fit either: stop here, the state is saved
        raise DiskFull(_disk_full_line(store, resume_cmd, _STOP["detail"] or ""))
    study_dir = store.pull(name)
    trials, epochs = results_mod.collect(study_dir, spec, parallel=True)
    results_mod.write_results(study_dir, spec, trials, epochs)
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    report_path = None
    if report:
        report_path = write_report(study_dir, out)
    store.push(name, "results")
    results_at = f"{where}/results" if store.remote else study_dir / "results"
    print(f"[study] {name}: {results_mod.format_counts(counts)}", file=out, flush=True)
    files = (
        ["trials.parquet", "epochs.parquet", "summary.parquet", "report.html"]
        if report
        else ["trials.parquet", "epochs.parquet"]
    )
    print(f"[study] results in {results_at}/: {', '.join(files)}", file=out, flush=True)
    if counts.get("ERROR"):
        print(
            f"[study] {counts['ERROR']} trial(s) failed for good (errors in trials.parquet and the report); "
            "a rerun does not retry them: fix the cause, then run with --name NEW",
            file=out,
            flush=True,
        )
    if counts.get("MISSING"):
        print(
            f"[study] {counts['MISSING']} finished trial(s) have missing data (deleted trial directories or "
            "result files); they are marked MISSING in trials.parquet and the report",
            file=out,
            flush=True,
        )
    unfinished = sum(counts.get(s, 0) for s in ("RUNNING", "PAUSED", "PENDING"))
    if interrupted or unfinished:  # Tune stops gracefully on Ctrl-C and returns what it has
        print(
            f"[study] interrupted with {unfinished} trial(s) unfinished: run the same command again to resume: "
            f"{resume_cmd}",
            file=out,
            flush=True,
        )
        raise Terminated if _STOP["reason"] == "sigterm" else KeyboardInterrupt
    if _STOP["reason"] == "sigterm":  # after the trials had finished: the tables are complete, still 143
        raise Terminated
    return RunOutcome(study_dir, counts, report_path)


def complete_counts(store: Store, name: str, spec: Spec) -> dict[str, int] | None:
    """Trials by status of a study whose every trial has finished (read from its saved state), else None."""
    if store.read_text(name, SPEC_FILE) is None:
        return None
    try:
        counts = results_mod.study_counts(store.pull(name))
    except tune_state.StateError:  # a corrupt state: `repair_state` deals with it (or refuses)
        return None
    finished = sum(counts.get(s, 0) for s in ("TERMINATED", "DIVERGED", "STOPPED", "ERROR"))
    return counts if finished == sum(counts.values()) == spec.n_trials() else None


def repair_state(store: Store, name: str, out: TextIO) -> None:
    """Before Tune restores a study: a corrupt newest state is replaced by the newest good snapshot (or
    the run is refused, exit 2), so Tune never fails to restore and silently starts the study over."""
    from ray import tune

    if not tune.Tuner.can_restore(store.study_path(name)):
        return
    if store.remote:  # checked on the local mirror; repairing shared storage is left to the user
        mirror = store.pull(name)
        files = tune_state.state_files(mirror)
        if files:
            tune_state.parse_state(files[-1].read_bytes(), f"{store.study_path(name)}/{files[-1].name}")
        return
    note = tune_state.repair_state(store.local_dir(name))
    if note:
        print(f"[study] {name}: {note}", file=out, flush=True)


def _run_trials(spec: Spec, spec_path: str | Path, store: Store, name: str, address: str | None, out: TextIO) -> bool:
    """Start or resume the study's trials on Ray and wait for them; True if interrupted (Ctrl-C, SIGTERM,
    a full disk)."""
    from trainables import get_family

    repair_state(store, name, out)  # before anything starts: a refused study starts no Ray
    check_disk_space(store, name)
    init_ray(address)
    _install_sigterm()  # after ray.init, which installs its own (sys.exit: a native crash mid-run)
    check_resources(spec)
    t0 = time.time()
    data = get_family(spec.trainable).load_data(spec.data.source, spec.data.root, **spec.data.options)
    print(f"[study] data {spec.data.source} loaded in {time.time() - t0:.1f}s", file=out, flush=True)
    check_configs(spec, spec_path, data)  # sizes against this data, before any trial starts
    record_spec(store, name, spec, spec_path)  # only now: a study that never started is not locked to its spec

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's own tables off: our progress lines instead
    # snapshot the experiment state often (default: every >= 10 s), so a killed driver loses little
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # a trial that diverges in its first epoch reports no metric yet (it is recorded as DIVERGED)
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # trial failures are reported by our progress lines (one line each) and kept in trials.parquet;
    # Tune's own log would print a traceback per failed attempt. A failed restore stops the run.
    guard = _RayLogGuard()
    for logger_name in ("ray.tune.execution.tune_controller", "ray.tune.execution.experiment_state"):
        logger = logging.getLogger(logger_name)
        logger.setLevel(logging.INFO)
        if not any(isinstance(f, _RayLogGuard) for f in logger.filters):
            logger.addFilter(guard)
    progress = results_mod.make_progress_callback(spec, out=out)
    tuner = build_tuner(spec, store, name, data, progress)
    interrupted = False
    try:
        tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    if _STOP["reason"] in ("sigterm", "disk_full"):
        interrupted = True
    prune_finished(store, name)  # the final state is saved now: finished trials keep their last checkpoint
    return interrupted


MIN_FREE_MB = float(os.environ.get("STUDY_MIN_FREE_MB", "4"))  # stop before the storage is full


def free_space_needed(state_bytes: int) -> float:
    """Bytes a run keeps free on local storage: a margin plus two copies of the experiment state
    (Tune rewrites it every few seconds; the tables need about as much)."""
    return MIN_FREE_MB * 1e6 + 2 * state_bytes


def check_disk_space(store: Store, name: str) -> None:
    """Refuse to start (DiskFull, exit 1) on local storage with less than `free_space_needed` free."""
    if store.remote:
        return
    files = tune_state.state_files(store.local_dir(name))
    need = free_space_needed(max((f.stat().st_size for f in files), default=0))
    free = shutil.disk_usage(store.root).free
    if free < need:
        raise DiskFull(f"--storage {store.root}: no space left on device ({free / 1e6:.1f} MB free, a run needs "
                       f"{need / 1e6:.1f} MB); free some space, then run the same command again")  # fmt: skip


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
            import study.runner as runner  # by reference: the module's _STOP, not a pickled copy

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
                    need = runner.free_space_needed(max((f.stat().st_size for f in states), default=0))
                    free = shutil.disk_usage(study_dir).free
                except OSError:
                    need, free = 0, 1
                if free < need:
                    runner.request_stop("disk_full", f"{free / 1e6:.1f} MB free, {need / 1e6:.1f} MB needed")
                    return
            if staging and now - self.last_backup >= 5.0:
                self.last_backup = now
                try:
                    tune_state.backup_snapshot(staging, study_dir)
                except OSError:
                    pass

        def _failed(self, trial: Any) -> None:
            import study.runner as runner

            text = results_mod.error_line(trial.error_file, 300) or ""
            if "No space left on device" in text or "Disk quota exceeded" in text:
                runner.request_stop("disk_full", text)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._failed(trial)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._failed(trial)

    return GuardCallback()


def prune_finished(store: Store, name: str) -> None:
    try:
        results_mod.prune_checkpoints(*store.fs_path(name))
    except (OSError, ValueError, KeyError):  # pruning only saves space: never fail a study over it
        pass


def write_report(study_dir: Path, out: TextIO | None = None) -> Path | None:
    """Build the study's tables and HTML report (analysis package)."""
    from analysis.report import write_study_outputs

    out = out or sys.stdout
    path = write_study_outputs(study_dir)
    print(f"[study] report: {path}", file=out, flush=True)
    return path
