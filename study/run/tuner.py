"""The Ray Tune side of a study: its trainable, its param space (the one place where a spec becomes
Ray Tune domains) and the `Tuner` (new, or restored for an interrupted study)."""

from __future__ import annotations

import math
import uuid
from typing import Any

from core.errors import is_disk_full, one_line
from study.results import state as tune_state
from study.run import shapes
from study.run.callbacks import make_guard_callback, make_prune_callback
from study.spec.grid import POINT_KEY, CoverValue, PointValue, grid_plan
from study.spec.model import Choice, Grid, LogUniform, RandInt, Spec, Uniform
from study.storage import Store
from study.trackers import tracker_callbacks


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


def to_param_space(spec: Spec, *, with_seeds: bool = True) -> dict[str, Any]:
    """The one place where a spec becomes Ray Tune domains (grid_search, choice, ...). Grid points
    that are not a plain product (`study.spec.grid.grid_plan`: inert duplicates collapsed, claim
    points added to a covering set) are one grid search over their index (``__point__``)."""
    from ray import tune

    space: dict[str, Any] = dict(spec.base_config())
    axes = {k: list(d.grid) for k, d in spec.space.items() if isinstance(d, Grid)}
    plan = grid_plan(spec)
    lead = max(axes, key=lambda k: len(axes[k])) if spec.search.grid == "cover" and len(axes) > 1 else None
    for key, dom in spec.space.items():
        if isinstance(dom, Grid) and not plan.is_product:  # collapsed or added points: by their index
            if POINT_KEY not in space:
                space[POINT_KEY] = tune.grid_search(list(range(len(plan.points))))
            space[key] = tune.sample_from(PointValue([p[key] for p in plan.points]))
        elif isinstance(dom, Grid) and lead is not None and key != lead:  # covering set: follows the lead axis
            space[key] = tune.sample_from(CoverValue(lead, axes[lead], list(dom.grid)))
        elif isinstance(dom, Grid):
            space[key] = tune.grid_search(list(dom.grid))
        elif isinstance(dom, Choice):
            space[key] = tune.choice(list(dom.choice))
        elif isinstance(dom, Uniform):
            space[key] = tune.uniform(*dom.uniform)
        elif isinstance(dom, LogUniform):
            space[key] = tune.loguniform(*dom.loguniform)
        elif isinstance(dom, RandInt):
            space[key] = tune.randint(*dom.randint)
    if with_seeds:
        seeds = spec.seed_list
        space["seed"] = tune.grid_search(seeds) if len(seeds) > 1 else seeds[0]
    return space


def build_tuner(spec: Spec, store: Store, name: str, data: Any, progress: Any) -> Any:
    """The study's `ray.tune.Tuner`: restored when Tune has saved its state (resume), else new, with
    `progress` (a `make_progress_callback`), checkpoint pruning and the free-space guard."""
    from ray import tune

    from trainables import get_family

    family = get_family(spec.trainable)
    seeds = spec.seed_list
    use_repeater = spec.search.algorithm == "optuna" and len(seeds) > 1
    trainable = tune.with_resources(
        tune.with_parameters(trial_entry, data=data, family_name=spec.trainable, seeds=seeds if use_repeater else None),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    # DDP (resources.workers) and packed (pack) trials have their own trainable
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
    if spec.pack != 1:  # one Tune trial per pack of members
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
        # so every sampled configuration is repeated with every seed. Tune ignores
        # max_concurrent_trials for a generator passed in, so the limit is the generator's own.
        search_alg = BasicVariantGenerator(
            constant_grid_search=True, random_state=spec.search.seed, max_concurrent=shapes.max_concurrent(spec) or 0
        )
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
            # the optuna searcher is limited by Tune (a ConcurrencyLimiter); the grid's generator by itself
            max_concurrent_trials=shapes.max_concurrent(spec) if spec.search.algorithm == "optuna" else None,
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
            callbacks=[progress, make_prune_callback(), make_guard_callback(),
                       *tracker_callbacks(spec, storage=store.root, remote=store.remote)],  # fmt: skip
        ),
    )
