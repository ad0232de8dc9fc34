"""The configurations a spec stands for: its grid points (product or covering set, inert duplicates
collapsed) and example configs for cheap checks.

`grid_plan` is what a study schedules, with what was collapsed and added; `grid_points` its
points. `CoverValue` and `PointValue` are the rules Ray Tune samples the grid axes by when the
points are not a plain product (`study.run.tuner.to_param_space`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from study.spec.domains import Choice, Grid, LogUniform, RandInt, Uniform, _equality_key

if TYPE_CHECKING:  # the model calls this module (Spec.n_trials): no import of it at run time
    from study.spec.model import Spec


@dataclass(frozen=True)
class GridPlan:
    """The grid points a spec schedules (per seed and sample), in Ray's order.

    Args:
        points: the scheduled grid points ({axis: value}).
        n_before: points before inert duplicates were collapsed.
        collapsed: points left out because they repeat another (differing only in inert keys).
        keys: the inert keys of the collapsed points (the ones whose value was set to another).
        at: grid values every collapsed point shares (where those keys have no effect), e.g.
            ``{"stages": 1}``.
        added: points added to a covering set so that it exercises every claim and paper row.
    """

    points: list[dict[str, Any]]
    n_before: int
    collapsed: int = 0
    keys: tuple[str, ...] = ()
    at: dict[str, Any] = field(default_factory=dict)
    added: int = 0

    @property
    def is_product(self) -> bool:
        """True when the points are the plain product or Latin cover of the axes (Ray's own grid)."""
        return self.collapsed == 0 and self.added == 0


def product_points(spec: Spec) -> list[dict[str, Any]]:
    """The grid points before collapsing: every combination (``search.grid: product``) or the
    covering set (``cover``): as many configurations as the longest axis (the first longest is the
    *lead*); configuration i takes the lead's i-th value and value i mod m of every other axis
    with m values (Latin-style), so every value of every axis appears at least once."""
    axes = {k: list(d.grid) for k, d in spec.space.items() if isinstance(d, Grid)}
    if spec.search.grid == "cover" and axes:
        n = max(len(v) for v in axes.values())
        return [{k: v[i % len(v)] for k, v in axes.items()} for i in range(n)]
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def grid_points(spec: Spec) -> list[dict[str, Any]]:
    """The grid configurations a spec runs (per seed and sample), in Ray's order: `grid_plan`'s points."""
    return grid_plan(spec).points


def grid_plan(spec: Spec) -> GridPlan:
    """What the grid schedules: `product_points`; with ``cover``, one configuration of each group
    of every claim and of every paper row's ``where`` that the covering set lacks (`cover_targets`);
    then, with ``search.inert: collapse``, the points that differ only in keys the family declares
    inert there (``Family.inert_keys``) collapsed into one, whose inert keys take the family's
    default when it is a value of the axis, else the axis' first value. Cached on the spec."""
    key = _cache_key(spec)
    cached = spec._grid
    if cached is not None and cached[0] == key:
        return cached[1]
    points = product_points(spec)
    added = 0
    if spec.search.grid == "cover":
        for target in cover_targets(spec, points):
            points.append(target)
            added += 1
    plan = GridPlan(points=points, n_before=len(points), added=added)
    if spec.search.inert == "collapse" and points and spec.grid_axes:
        plan = _collapse(spec, plan)
    spec._grid = (key, plan)
    return plan


def _cache_key(spec: Spec) -> str:
    fields = {"trainable", "data", "fixed", "space", "search", "paper"}
    return json.dumps(spec.model_dump(mode="json", include=fields), sort_keys=True, default=str)


def _grid_part(spec: Spec, where: Mapping[str, Any]) -> dict[str, Any] | None:
    """The grid-axis values of `where`; None when one of them is not a value of its axis."""
    out = {}
    for k, v in where.items():
        dom = spec.space.get(k)
        if isinstance(dom, Grid):
            if _equality_key(v) not in {_equality_key(x) for x in dom.grid}:
                return None
            out[k] = v
    return out


def _has(points: Sequence[Mapping[str, Any]], want: Mapping[str, Any]) -> bool:
    return any(all(k in p and p[k] == v for k, v in want.items()) for p in points)


def cover_targets(spec: Spec, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Grid points a covering set needs besides `points` so that a smoke run exercises every
    claim (a configuration of group a and one of group b, differing only in the groups' keys) and
    every paper row's ``where``. Only grid axes are set; a group naming a value the axis lacks
    (e.g. one the smoke data cannot hold) gets none."""
    have = list(points)
    out: list[dict[str, Any]] = []
    if not have:
        return out

    def need(point: dict[str, Any]) -> None:
        if not _has(have, point):
            have.append(point)
            out.append(point)

    for c in spec.paper.claims:
        where, a, b = (_grid_part(spec, g) for g in (c.where, {**c.where, **c.a}, {**c.where, **c.b}))
        if where is None or a is None or b is None:
            continue
        if _has(have, a) and _has(have, b):
            continue
        base = next((p for p in have if all(p.get(k) == v for k, v in where.items())), have[0])
        need({**base, **a})
        need({**base, **b})
    for r in spec.paper.results:
        want = _grid_part(spec, r.where)
        if want is not None and not _has(have, want):
            need({**have[0], **want})
    return out


def _sampled_variants(spec: Spec) -> list[dict[str, Any]]:
    """Values of the sampled (non-grid) keys a trial may get: their first values, then each other
    choice value and range end in turn (as `example_configs`)."""
    sampled: dict[str, list[Any]] = {}
    for key, dom in spec.space.items():
        if isinstance(dom, Choice):
            sampled[key] = list(dom.choice)
        elif isinstance(dom, Uniform):
            sampled[key] = list(dom.uniform)
        elif isinstance(dom, LogUniform):
            sampled[key] = list(dom.loguniform)
        elif isinstance(dom, RandInt):
            lo, hi = dom.randint
            sampled[key] = list(range(lo, hi)) if hi - lo <= 64 else [lo, hi - 1]
    first = {k: v[0] for k, v in sampled.items()}
    return [first] + [{**first, k: v} for k, values in sampled.items() for v in values[1:]]


def inert_in(spec: Spec, point: Mapping[str, Any]) -> frozenset[str]:
    """The grid axes without effect at `point` whatever the sampled keys draw (the family's
    ``inert_keys`` of the point's config, for every sampled value); empty for an unknown family or
    a config the family cannot read (the checks report those)."""
    return _inert_rule(spec)(point)


def _inert_rule(spec: Spec) -> Any:
    """`inert_in` for `spec`, with the family, base config and sampled values looked up once."""
    from trainables import REGISTRY

    family = REGISTRY.get(spec.trainable)
    base, variants = spec.base_config(), _sampled_variants(spec)

    def rule(point: Mapping[str, Any]) -> frozenset[str]:
        if family is None:
            return frozenset()
        inert: frozenset[str] | None = None
        for variant in variants:
            try:
                keys = frozenset(family.inert_keys({**base, **variant, **point}))
            except Exception:  # noqa: BLE001 - a bad value: check_configs names it; nothing is collapsed
                return frozenset()
            inert = keys if inert is None else inert & keys
        return frozenset(k for k in inert or () if k in point)

    return rule


def _collapse(spec: Spec, plan: GridPlan) -> GridPlan:
    from trainables import REGISTRY

    family = REGISTRY.get(spec.trainable)
    if family is None:
        return plan
    defaults = family.all_defaults
    axes = {k: list(d.grid) for k, d in spec.space.items() if isinstance(d, Grid)}
    rep = {k: defaults[k] if k in defaults and _has([{k: x} for x in v], {k: defaults[k]}) else v[0]
           for k, v in axes.items()}  # fmt: skip
    inert_of = _inert_rule(spec)
    kept: list[dict[str, Any]] = []
    first: dict[Any, dict[str, Any]] = {}  # per configuration, the first grid point that stands for it
    dropped: list[tuple[dict[str, Any], set[str]]] = []  # a repeating point, the keys it differs in
    for point in plan.points:
        inert = inert_of(point)
        canon = {k: rep[k] if k in inert else v for k, v in point.items()}
        if canon != point and inert_of(canon) != inert:  # the stand-in is another experiment
            canon = point
        key = _equality_key(canon)
        if key in first:
            dropped.append((point, {k for k in inert if point[k] != first[key][k]}))
            continue
        first[key] = point
        kept.append(canon)
    if not dropped:
        return plan
    changed_keys = set().union(*(changed for _, changed in dropped))
    keys = [k for k in axes if k in changed_keys]
    at = {}
    for k in axes:
        values = {_equality_key(p[k]) for p, _ in dropped}
        if k not in keys and len(values) == 1:
            at[k] = dropped[0][0][k]
    return GridPlan(points=kept, n_before=plan.n_before, collapsed=len(dropped), keys=tuple(keys), at=at,
                    added=plan.added)  # fmt: skip


def collapse_note(spec: Spec) -> str:
    """``12 of 36 trials repeat another configuration (ms, integration have no effect at stages: 1);
    the grid runs 24`` for a spec whose grid collapsed inert duplicates, else ``""``."""
    plan = grid_plan(spec)
    if not plan.collapsed:
        return ""
    per_point = spec.search.num_samples * spec.n_seeds
    total = plan.n_before * per_point
    where = ", ".join(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in plan.at.items())
    verb = "has" if len(plan.keys) == 1 else "have"
    there = f"at {where}" if where else "in some configurations"
    return (
        f"{plan.collapsed * per_point} of {total} trials repeat another configuration ({', '.join(plan.keys)} "
        f"{verb} no effect {there}); the grid runs {len(plan.points) * per_point}"
    )


def collapse_record(spec: Spec) -> dict[str, Any] | None:
    """What the grid collapsed, for the study's metadata: ``{trials, of, keys, at}``, or None."""
    plan = grid_plan(spec)
    if not plan.collapsed:
        return None
    per_point = spec.search.num_samples * spec.n_seeds
    return {
        "trials": plan.collapsed * per_point,
        "of": plan.n_before * per_point,
        "keys": list(plan.keys),
        "at": json.loads(json.dumps(plan.at, default=str)),
    }


class CoverValue:
    """Ray Tune ``sample_from`` function of a covering set (`grid_points`): the value of one axis
    for the configuration whose lead-axis value Ray's grid search picked. Picklable (no closure)."""

    def __init__(self, lead: str, lead_values: list[Any], values: list[Any]) -> None:
        self.lead, self.lead_values, self.values = lead, lead_values, values

    def __call__(self, spec: Any) -> Any:
        i = self.lead_values.index(spec.config[self.lead])
        return self.values[i % len(self.values)]


POINT_KEY = "__point__"  # trial config key: the index of its grid point when the points are not a product


class PointValue:
    """Ray Tune ``sample_from`` function of a grid that is not a plain product (inert duplicates
    collapsed, claim points added): the value of one axis at the grid point whose index Ray's grid
    search over `POINT_KEY` picked. Picklable (no closure)."""

    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def __call__(self, spec: Any) -> Any:
        return self.values[int(spec.config[POINT_KEY])]


def example_configs(spec: Spec, limit: int = 1000, shaping: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Configs covering the space for cheap checks: every grid point (up to `limit`), then each
    choice value and each range end substituted into the first grid point. Keys in `shaping` (the
    ones that shape the model, for `--models`) searched as choice or randint are combined with
    each other and with every grid point (a randint of at most 64 values by each of its values),
    so that every distinct model of the space is among the configs (up to `limit`)."""
    base = spec.base_config()
    grid = {k: d.grid for k, d in spec.space.items() if isinstance(d, Grid)}
    points = [dict(zip(grid, combo)) for combo in itertools.islice(itertools.product(*grid.values()), limit)]
    first = points[0] if points else {}
    sampled: dict[str, list[Any]] = {}
    for key, dom in spec.space.items():
        if isinstance(dom, Choice):
            sampled[key] = list(dom.choice)
        elif isinstance(dom, Uniform | LogUniform):
            sampled[key] = list(getattr(dom, "uniform", None) or dom.loguniform)
        elif isinstance(dom, RandInt):
            sampled[key] = [dom.randint[0], dom.randint[1] - 1]
    defaults = {k: v[0] for k, v in sampled.items()}
    configs = [{**base, **defaults, **p} for p in points] or [{**base, **defaults}]
    for key, values in sampled.items():
        configs += [{**base, **defaults, **first, key: v} for v in values[1:]]
    combos: list[dict[str, Any]] = [{}]
    for key, dom in spec.space.items():
        if key not in shaping or not isinstance(dom, Choice | RandInt):
            continue
        lo, hi = dom.randint if isinstance(dom, RandInt) else (0, 0)
        values = list(dom.choice) if isinstance(dom, Choice) else list(range(lo, hi)) if hi - lo <= 64 else sampled[key]
        combos = [{**c, key: v} for c in combos for v in values][:limit]
    if combos != [{}]:
        configs += [{**base, **defaults, **p, **c} for p in points or [{}] for c in combos][:limit]
    return configs
