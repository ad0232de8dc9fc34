"""Run a study: spec -> Ray Tune `Tuner` (or `Tuner.restore` for an interrupted study) -> Parquet.

A study lives in ``STORAGE/NAME/`` (`core.layout`): Ray Tune's experiment (trial directories,
checkpoints, experiment state), ``spec.yaml`` (the resolved spec it was started with) and
``results/``. Running the same study again resumes it: finished trials are kept, unfinished ones
continue from their last checkpoint. A complete study is not run again (no Ray is started): its
tables and report are rebuilt, so an edited ``paper:`` block or description shows up.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from core.errors import DiskFull, UserError, is_disk_full, one_line
from core.layout import EPOCHS_FILE, REPORT_FILE, RESULTS_DIR, SPEC_FILE, SUMMARY_FILE, TRIALS_FILE, results_dir
from core.status import UNFINISHED
from study.lock import StudyLock
from study.results import state as tune_state
from study.results.counts import format_counts
from study.results.tables import collect, write_results
from study.run import stop as run_stop
from study.run.callbacks import make_progress_callback
from study.run.cluster import check_reachable, check_resources, init_ray
from study.run.disk import check_disk_space, disk_full_line
from study.run.resume import complete_counts, prune_finished, record_spec, repair_state
from study.run.stop import RayLogGuard, StopRequest, Terminated
from study.run.tuner import build_tuner
from study.spec.checks import check_configs
from study.spec.grid import collapse_note
from study.spec.load import load_spec
from study.spec.model import RunRecord, Spec, check_name
from study.spec.smoke import smoke_spec
from study.storage import Store
from study.trackers.settings import check_installed


@dataclass(frozen=True)
class RunOutcome:
    """What a run ended with: the study's local directory, its trials by status, the report page
    (None with ``--no-report``)."""

    study_dir: Path
    counts: dict[str, int]
    report: Path | None

    @property
    def failed(self) -> bool:
        return self.counts.get("ERROR", 0) > 0


def prepare_spec(spec_path: str | Path, overrides: list[str], smoke: bool) -> Spec:
    """The spec a run uses: the file with its ``--set`` values, or the smoke version of that."""
    from trainables import get_family

    spec = load_spec(spec_path, overrides)
    check_installed(spec.log_to, spec_path)  # a tracker's package: one line naming the extra
    if smoke:
        spec = smoke_spec(spec, dict(get_family(spec.trainable).smoke))
    # recorded in spec.yaml and the tables' metadata: the analysis flags both
    return spec.model_copy(update={"run": RunRecord(overrides=list(overrides), smoke=smoke)})


def keep_recorded_trials(store: Store, name: str, spec: Spec) -> Spec:
    """`spec` as a study already started under `name` ran it: a study recorded before grid points
    with inert keys were collapsed (its spec.yaml has no ``search.inert``) keeps every one of its
    trials (``search.inert: keep``)."""
    import yaml

    text = store.read_text(name, SPEC_FILE)
    if text is None or spec.search.inert == "keep":
        return spec
    try:
        search = (yaml.safe_load(text) or {}).get("search")
    except (yaml.YAMLError, AttributeError):
        return spec  # a damaged spec.yaml: record_spec reports it
    if isinstance(search, dict) and "inert" not in search:
        return spec.model_copy(update={"search": spec.search.model_copy(update={"inert": "keep"})})
    return spec


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
    stop = run_stop.begin_run()
    main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        stop.install_sigterm()
        return _run_study(spec_path, name, storage, overrides, smoke, address, report, out, stop)
    finally:
        if main_thread and previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _run_study(
    spec_path: str | Path, name: str | None, storage: str | Path, overrides: list[str] | None, smoke: bool,
    address: str | None, report: bool, out: TextIO, stop: StopRequest,
) -> RunOutcome:  # fmt: skip
    given_name = name
    if address is not None:
        check_reachable(address)  # seconds, before the spec's imports
    spec = prepare_spec(spec_path, overrides or [], smoke)
    if name is not None:  # the study's name everywhere (directory, report, table metadata)
        spec = spec.model_copy(update={"name": check_name(name, "--name")})
    name = spec.name
    store = Store.open(storage, create=True)
    spec = keep_recorded_trials(store, name, spec)
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
            raise DiskFull(
                f"--storage {store.root}: no space left on device; free some space and run: {resume_cmd}"
            ) from None
        raise
    if lock.note:
        print(f"[study] {name}: {lock.note}", file=out, flush=True)
    run = StudyRun(spec, spec_path, store, name, address, report, out, resume_cmd, stop)
    try:
        return run.locked()
    except Exception as e:
        if is_disk_full(e) or stop.reason == "disk_full":
            raise DiskFull(disk_full_line(store, resume_cmd, stop.detail or one_line(e, 200))) from None
        if stop.reason == "restore_failed" and not isinstance(e, UserError):
            raise tune_state.StateError(
                f"{store.study_path(name)}: Tune could not restore the study ({stop.detail}); nothing was run"
            ) from None
        raise
    finally:
        lock.release()


@dataclass
class StudyRun:
    """One `study run` of a study whose lock is held: what it runs, where, and its `StopRequest`."""

    spec: Spec
    spec_path: str | Path
    store: Store
    name: str
    address: str | None
    report: bool
    out: TextIO
    resume_cmd: str
    stop: StopRequest

    def locked(self) -> RunOutcome:
        """The run, holding the study's lock: its trials (unless complete), then its tables and report."""
        spec, spec_path, store, name, out = self.spec, self.spec_path, self.store, self.name, self.out
        stop, resume_cmd = self.stop, self.resume_cmd
        where = store.study_path(name)
        print(
            f"[study] {name}: {spec.n_trials()} trials of {spec.trainable} on {spec.data.source} -> {where}",
            file=out,
            flush=True,
        )
        note = collapse_note(spec)
        if note:
            print(f"[study] {name}: {note}", file=out, flush=True)
        print(f"[study] {name}: watch it live: study serve --storage {shlex.quote(str(store.root))} "
              f"(then http://127.0.0.1:8000/study/{name})", file=out, flush=True)  # fmt: skip
        complete = complete_counts(store, name, spec)
        interrupted = False
        if complete is not None:  # nothing to run: no Ray; tables and report are rebuilt (the paper block may be new)
            record_spec(store, name, spec, spec_path)
            print(f"[study] {name}: already complete ({format_counts(complete)})", file=out, flush=True)
        else:
            interrupted = self.trials()
        if stop.reason == "disk_full":  # the tables would not fit either: stop here, the state is saved
            raise DiskFull(disk_full_line(store, resume_cmd, stop.detail or ""))
        study_dir = store.pull(name)
        trials, epochs = collect(study_dir, spec, parallel=True)
        write_results(study_dir, spec, trials, epochs)
        counts = trials["status"].value_counts().to_dict() if len(trials) else {}
        report_path = None
        if self.report:
            report_path = write_report(study_dir, out)
        store.push(name, RESULTS_DIR)
        results_at = f"{where}/{RESULTS_DIR}" if store.remote else results_dir(study_dir)
        print(f"[study] {name}: {format_counts(counts)}", file=out, flush=True)
        files = [TRIALS_FILE, EPOCHS_FILE, SUMMARY_FILE, REPORT_FILE] if self.report else [TRIALS_FILE, EPOCHS_FILE]
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
        unfinished = sum(counts.get(s, 0) for s in UNFINISHED)
        if interrupted or unfinished:  # Tune stops gracefully on Ctrl-C and returns what it has
            print(
                f"[study] interrupted with {unfinished} trial(s) unfinished: run the same command again to resume: "
                f"{resume_cmd}",
                file=out,
                flush=True,
            )
            raise Terminated if stop.reason == "sigterm" else KeyboardInterrupt
        if stop.reason == "sigterm":  # after the trials had finished: the tables are complete, still 143
            raise Terminated
        return RunOutcome(study_dir, counts, report_path)

    def trials(self) -> bool:
        """Start or resume the study's trials on Ray and wait for them; True if interrupted (Ctrl-C, SIGTERM,
        a full disk)."""
        from trainables import get_family

        spec, spec_path, store, name, out, stop = self.spec, self.spec_path, self.store, self.name, self.out, self.stop
        repair_state(store, name, out, spec)  # before anything starts: a refused study starts no Ray
        check_disk_space(store, name)
        init_ray(self.address)
        stop.install_sigterm()  # after ray.init, which installs its own (sys.exit: a native crash mid-run)
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
        RayLogGuard(stop).install()
        progress = make_progress_callback(spec, out=out)
        tuner = build_tuner(spec, store, name, data, progress)
        interrupted = False
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        if stop.reason in ("sigterm", "disk_full"):
            interrupted = True
        prune_finished(store, name)  # the final state is saved now: finished trials keep their last checkpoint
        return interrupted


def write_report(study_dir: Path, out: TextIO | None = None) -> Path | None:
    """Build the study's tables and HTML report (analysis package)."""
    from analysis.report import write_study_outputs
    from study.results.tables import checked_results_dir

    out = out or sys.stdout
    checked_results_dir(study_dir)  # never written through a link into another study
    path = write_study_outputs(study_dir)
    print(f"[study] report: {path}", file=out, flush=True)
    return path
