"""``study run --smoke``: a tiny version of any spec that still covers its grid."""

from __future__ import annotations

from typing import Any

from core.errors import UserError
from study.spec.load import parse_spec
from study.spec.model import NAME_MAX, Data, Grid, Spec


def smoke_spec(spec: Spec, family_smoke: dict[str, Any]) -> Spec:
    """A tiny version of any spec that still covers it: one seed, one epoch, the family's small data
    sizes, on the bundled MNIST sample, and a covering set of the grid (``search.grid: cover``):
    every value of every grid axis at least once, in as many configurations as the longest axis
    has values (see `grid_points`). Grid values that cannot run on the bundled sample (the family's
    ``check`` rejects them, e.g. ``train_images: 55000`` > 2,500 images) are left out, and the
    smoke spec's description says which. A searched ``epochs`` axis becomes one epoch. The covering
    set also holds a configuration of each group of every claim and of every paper row's ``where``
    that the kept values can serve (`study.spec.grid.cover_targets`). The spec's ``run`` record
    says ``smoke: true``."""
    raw = spec.model_dump(mode="python")
    raw["data"]["source"] = "mnist-5k"
    raw["seeds"], raw["repeats"] = [spec.seed_list[0]], None
    raw["fixed"] = {**raw["fixed"], **{k: v for k, v in family_smoke.items() if k not in spec.space}, "epochs": 1}
    raw["data"] = {k: v for k, v in raw["data"].items() if k in ("source", "root") or k not in family_smoke}
    raw["name"] = f"{spec.name[: NAME_MAX - len('-smoke')]}-smoke"
    space = {}
    for key, dom in spec.space.items():
        if key == "epochs":  # one epoch, whatever the space says
            continue
        space[key] = {"grid": list(dom.grid)} if isinstance(dom, Grid) else dom.model_dump(mode="python")
    raw["space"] = space
    dropped = _unfit_grid_values(raw, spec.seed_list[0])
    for key, values in dropped.items():
        space[key]["grid"] = [v for v in space[key]["grid"] if v not in values]
    if dropped:
        left_out = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in dropped.items())
        raw["description"] = f"{raw['description']} (smoke: left out, too big for the bundled sample: {left_out})"
    raw["search"] = {**raw["search"], "num_samples": min(spec.search.num_samples, 2 if not spec.grid_axes else 1)}
    if spec.search.algorithm == "optuna":
        raw["search"]["num_samples"] = 2
    raw["search"]["grid"] = "cover"
    raw["scheduler"] = {"type": "none"}
    raw["run"] = {**(raw.get("run") or {}), "smoke": True}
    return parse_spec(raw, f"{spec.name} (--smoke)", references=False)


def _unfit_grid_values(raw: dict[str, Any], seed: int) -> dict[str, list[Any]]:
    """Grid values of a smoke spec (raw) that the family's ``check`` rejects on the smoke data,
    each tried with the other axes at their first value: {key: [values]} (at least one value kept)."""
    from trainables import REGISTRY
    from trainables.common import resolve_config

    family = REGISTRY.get(raw["trainable"])
    grids = {k: d["grid"] for k, d in raw["space"].items() if "grid" in d}
    if family is None or family.check is None or not grids:
        return {}
    data = family.load_data(raw["data"]["source"], raw["data"].get("root"))
    data_keys = {k: v for k, v in raw["data"].items() if k not in Data.model_fields}  # trainable keys only
    base = {**data_keys, **raw["fixed"], "seed": seed}
    first = {k: v[0] for k, v in grids.items()}
    dropped: dict[str, list[Any]] = {}
    for key, values in grids.items():
        bad = []
        for value in values:
            try:
                family.check(resolve_config(family, {**base, **first, key: value}), data)
            except UserError:
                bad.append(value)
        if bad and len(bad) < len(values):
            dropped[key] = bad
    return dropped
