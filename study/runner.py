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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from analysis.report import write_text
from study import results as results_mod
from study.errors import UserError
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
    return f"trial_{trial.trial_id}"


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
        return f"{prefix}{key} was {a!r}, now {b!r}"
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
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)

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
            callbacks=[progress, results_mod.make_prune_callback()],
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
    """Run (or resume) a study and write its results; see the module docstring."""

    out = out or sys.stdout
    if address is not None:
        check_reachable(address)  # seconds, before the spec's imports
    spec = prepare_spec(spec_path, overrides or [], smoke)
    if name is not None:  # the study's name everywhere (directory, report, table metadata)
        spec = spec.model_copy(update={"name": check_name(name, "--name")})
    name = spec.name
    store = Store.open(storage, create=True)

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
    study_dir = store.pull(name)
    trials, epochs = results_mod.collect(study_dir, spec)
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
    unfinished = sum(counts.get(s, 0) for s in ("RUNNING", "PAUSED", "PENDING"))
    if interrupted or unfinished:  # Tune stops gracefully on Ctrl-C and returns what it has
        print(
            f"[study] interrupted with {unfinished} trial(s) unfinished: run the same command again to resume",
            file=out,
            flush=True,
        )
        raise KeyboardInterrupt
    return RunOutcome(study_dir, counts, report_path)


def complete_counts(store: Store, name: str, spec: Spec) -> dict[str, int] | None:
    """Trials by status of a study whose every trial has finished (read from its saved state), else None."""
    if store.read_text(name, SPEC_FILE) is None:
        return None
    counts = results_mod.study_counts(store.pull(name))
    finished = sum(counts.get(s, 0) for s in ("TERMINATED", "DIVERGED", "STOPPED", "ERROR"))
    return counts if finished == sum(counts.values()) == spec.n_trials() else None


def _run_trials(spec: Spec, spec_path: str | Path, store: Store, name: str, address: str | None, out: TextIO) -> bool:
    """Start or resume the study's trials on Ray and wait for them; True if interrupted (Ctrl-C)."""
    from trainables import get_family

    init_ray(address)
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
    # Tune's own log would print a traceback per failed attempt
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    progress = results_mod.make_progress_callback(spec, out=out)
    tuner = build_tuner(spec, store, name, data, progress)
    interrupted = False
    try:
        tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    prune_finished(store, name)  # the final state is saved now: finished trials keep their last checkpoint
    return interrupted


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
