"""The configurations a spec stands for: its grid points (product or covering set) and example
configs for cheap checks. `CoverValue` is the covering set's rule in the form Ray Tune samples it."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from study.spec.model import Choice, Grid, LogUniform, RandInt, Spec, Uniform


def grid_points(spec: Spec) -> list[dict[str, Any]]:
    """The grid configurations a spec runs (per seed and sample), in Ray's order.

    ``search.grid: product``: every combination of the grid axes. ``cover``: a covering set with
    as many configurations as the longest axis (the first longest is the *lead*): configuration i
    takes the lead's i-th value and value i mod m of every other axis with m values (Latin-style),
    so every value of every axis appears at least once."""
    axes = {k: list(d.grid) for k, d in spec.space.items() if isinstance(d, Grid)}
    if spec.search.grid == "cover" and axes:
        n = max(len(v) for v in axes.values())
        return [{k: v[i % len(v)] for k, v in axes.items()} for i in range(n)]
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


class CoverValue:
    """Ray Tune ``sample_from`` function of a covering set (`grid_points`): the value of one axis
    for the configuration whose lead-axis value Ray's grid search picked. Picklable (no closure)."""

    def __init__(self, lead: str, lead_values: list[Any], values: list[Any]) -> None:
        self.lead, self.lead_values, self.values = lead, lead_values, values

    def __call__(self, spec: Any) -> Any:
        i = self.lead_values.index(spec.config[self.lead])
        return self.values[i % len(self.values)]


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
