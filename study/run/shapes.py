"""Trial shapes, the Tune side: multi-worker (DDP) trials and packed trials.

- ``resources.workers`` > 1: each trial is a Ray Train ``TorchTrainer`` run on that many workers
  (each with ``resources.cpu``/``gpu``), launched from a Tune function trainable
  (`trainables.ddp.run_ddp_trial`). The driver itself asks Tune for no CPU (its work is waiting);
  at most as many trials run at once as the cluster has room for all their workers.
- ``pack: N`` > 1: the grid's trials are grouped by everything but `MEMBER_KEYS` (seed, lr, ...)
  into packs of at most N, in grid order; each pack is one Tune trial
  (`trainables.packing.run_pack_trial`) whose config is ``{"__pack__": {"shared": ..., "members":
  [...]}}``. `study.results.packs.expand_packs` turns a pack back into its members wherever the
  study's trials are read (tables, status, resume checks), so each member is its own trial to the user.

Rules (`study.spec.checks.check_shape`, one line each): pack needs ``search.algorithm: grid`` with grid axes only
and a family with packing support; pack and ASHA are refused (ASHA stops trials one at a time by
their own results; a pack's members train in lock step); pack and workers > 1 are refused.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Any

from study.spec.grid import grid_points
from study.spec.model import Spec
from trainables.keys import MEMBER_KEYS

DRIVER_MEMORY = 2**20  # bytes of Ray's memory resource a DDP trial's driver asks for
# bytes one trial process is taken to need (a worker process with torch and a small model and its
# data: 0.5-1 GB measured); STUDY_TRIAL_MEMORY_MB overrides it
TRIAL_MEMORY = int(float(os.environ.get("STUDY_TRIAL_MEMORY_MB", "1024")) * 2**20)


def pack_size(spec: Spec, shared: dict[str, Any]) -> int:
    """Members per pack of a group: ``spec.pack``, or with ``pack: auto`` the family's choice for the
    group's shared config (on a GPU when the spec asks for one); 1 when the family makes none."""
    if spec.pack != "auto":
        return int(spec.pack)
    from trainables import get_family
    from trainables.packing import support

    sup = support(get_family(spec.trainable))
    if sup is None or sup.auto_members is None:
        return 1
    return max(1, int(sup.auto_members(shared, spec.resources.gpu > 0)))


def pack_param_space(spec: Spec, threads: int) -> dict[str, Any]:
    """``{"__pack__": grid_search(packs)}``: the grid's trials (grid order, seeds last) grouped by
    their non-member keys, in packs of at most `pack_size` members."""
    from ray import tune

    base = {**spec.base_config(), "threads": threads}
    groups: dict[str, tuple[dict, list[dict]]] = {}
    # the spec's grid points (every combination, or a covering set with search.grid: cover), x seeds
    for point, seed in itertools.product(grid_points(spec), spec.seed_list):
        config = {**base, **point, "seed": seed}
        shared = {k: v for k, v in config.items() if k not in MEMBER_KEYS}
        member = {k: v for k, v in config.items() if k in MEMBER_KEYS}
        key = repr(sorted(shared.items()))
        groups.setdefault(key, (shared, []))[1].append(member)
    packs = []
    for shared, members in groups.values():
        size = pack_size(spec, shared)
        for i in range(0, len(members), size):
            packs.append(
                {"shared": shared, "members": members[i : i + size], "metric": spec.metric, "mode": spec.mode}
            )
    return {"__pack__": tune.grid_search(packs)}


def pack_entry(config: dict, data: Any = None, *, family_name: str) -> None:
    """The function Ray Tune runs for a pack."""
    from trainables import get_family
    from trainables.packing import run_pack_trial

    run_pack_trial(config, data, family=get_family(family_name))


def ddp_entry(config: dict, data: Any = None, *, family_name: str, seeds: list[int] | None, **resources: Any) -> None:
    """The function Ray Tune runs for a multi-worker trial (the Train driver)."""
    from trainables.ddp import run_ddp_trial

    run_ddp_trial(config, data, family_name=family_name, seeds=seeds, **resources)


def shaped_trainable(spec: Spec, data: Any, seeds: list[int] | None) -> Any:
    """The Tune trainable (with its resources) for a DDP or packed study; None for plain trials."""
    from ray import tune

    if spec.resources.workers > 1:
        r = spec.resources
        fn = tune.with_parameters(
            ddp_entry, data=data, family_name=spec.trainable, seeds=seeds, workers=r.workers, cpu=r.cpu, gpu=r.gpu
        )
        # the driver only waits: no CPU (Tune needs a non-empty request: 1 MiB of Ray's memory resource),
        # so the workers get every core, e.g. 2 workers x 1 CPU on a 2-core machine
        return tune.with_resources(fn, {"cpu": 0, "memory": DRIVER_MEMORY})
    if spec.pack != 1:
        fn = tune.with_parameters(pack_entry, data=data, family_name=spec.trainable)
        return tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    return None


def max_concurrent(spec: Spec) -> int | None:
    """How many trials run at once: `search.max_concurrent`, and at most as many trial processes as
    the cluster's memory holds (`TRIAL_MEMORY` each: ``cpu: 0.25`` on 2 cores must not start 8
    trial processes whatever their size); for DDP studies also as many trials as the cluster's CPUs
    and GPUs hold all their workers (Tune does not see the workers' resources; more drivers would
    only wait). None: Tune's own limit (by CPUs and GPUs). The cluster is sized by
    `study.run.cluster.cluster_capacity` (an autoscaling cluster of unknown size: no bound)."""
    from study.run.cluster import cluster_capacity

    r = spec.resources
    cap = cluster_capacity() or {}
    fits = []
    if cap.get("memory"):
        fits.append(math.floor(cap["memory"] / (TRIAL_MEMORY * r.workers)))
    if r.workers > 1 and cap:
        fits.append(math.floor(cap.get("CPU", 0) / (r.workers * r.cpu)))
        if r.gpu > 0:
            fits.append(math.floor(cap.get("GPU", 0) / (r.workers * r.gpu)))
    if spec.search.max_concurrent:
        fits.append(spec.search.max_concurrent)
    return max(1, min(fits)) if fits else None
