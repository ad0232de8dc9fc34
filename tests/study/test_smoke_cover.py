"""`--smoke` covers the space: every value of every grid axis runs at least once, and every
claim's groups and every paper row's configuration run too (what the bundled data can serve).

The configurations are the ones Ray Tune's own variant generator makes from `study.run.tuner.to_param_space`
(no Ray started), so the test checks what a smoke run really runs. It globs the directory: a
space added later is covered by the same test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.tune.search.variant_generator import generate_variants

from study.errors import UserError
from study.run.tuner import to_param_space
from study.spec import grid_points, load_spec, smoke_spec
from study.spec.grid import grid_plan
from trainables import get_family
from trainables.common import resolve_config

SPACES = sorted((Path(__file__).parents[2] / "search_spaces").glob("*.yaml"))


def ray_configs(spec) -> list[dict]:
    """The trial configs Ray Tune generates for `spec` (one per grid point, seed and sample)."""
    return [v["config"] for _, v in generate_variants({"config": to_param_space(spec)})]


def test_every_shipped_space_is_checked() -> None:
    assert len(SPACES) >= 5 and any(p.name == "share_split.yaml" for p in SPACES)


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_smoke_covers_every_grid_value(path: Path) -> None:
    spec = load_spec(path)
    family = get_family(spec.trainable)
    smoke = smoke_spec(spec, dict(family.smoke))
    configs = ray_configs(smoke)
    assert len(configs) == smoke.n_trials()
    assert {c["seed"] for c in configs} == {spec.seed_list[0]} and all(c["epochs"] == 1 for c in configs)
    longest = max((len(d.grid) for k, d in smoke.space.items() if k in smoke.grid_axes), default=1)
    plan = grid_plan(smoke)  # a covering set, not the product: the Latin cover plus claim points
    assert len(configs) == len(plan.points) * smoke.search.num_samples
    assert plan.n_before == longest + plan.added
    data = family.load_data(smoke.data.source, smoke.data.root)
    if family.check is not None:  # every smoke config runs on the bundled sample (sizes included)
        for c in configs:
            family.check(resolve_config(family, c), data)
    for key in spec.grid_axes:
        if key == "epochs":  # a smoke run is one epoch by definition
            continue
        ran = [c[key] for c in configs]
        for value in spec.space[key].grid:
            if value in ran:
                continue
            # only values the bundled sample cannot hold may be left out, and the smoke spec says so
            with pytest.raises(UserError):
                family.check(resolve_config(family, {**configs[0], key: value}), data)
            assert f"{key}: " in smoke.description and str(value) in smoke.description


def test_share_split_smoke_runs_the_box_task_and_the_long_schedule() -> None:
    """The motivating example: the first-values smoke never ran task cls_box nor copies 80."""
    spec = load_spec(next(p for p in SPACES if p.name == "share_split.yaml"))
    configs = ray_configs(smoke_spec(spec, dict(get_family(spec.trainable).smoke)))
    assert {c["task"] for c in configs} == {"cls", "cls_box"}
    assert {c["copies"] for c in configs} == {1, 80}
    assert {c["features"] for c in configs} == {40, 80, 120, 160} and {c["head"] for c in configs} == {"share", "split"}


def test_cover_is_latin_style(tmp_path: Path) -> None:
    raw = {
        "name": "t",
        "trainable": "digit_pairs",
        "data": {"source": "mnist-5k"},
        "space": {
            "arch": {"grid": ["ConvNet", "Siamese"]},
            "lr": {"grid": [0.1, 0.2, 0.3, 0.4]},
            "batch_size": {"grid": [10, 20, 30]},
            "momentum": {"uniform": [0.0, 0.5]},
        },
        "search": {"grid": "cover"},
        "repeats": 2,
    }
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(raw))
    spec = load_spec(p)
    assert spec.n_trials() == 4 * 2
    assert grid_points(spec) == [
        {"arch": "ConvNet", "lr": 0.1, "batch_size": 10},
        {"arch": "Siamese", "lr": 0.2, "batch_size": 20},
        {"arch": "ConvNet", "lr": 0.3, "batch_size": 30},
        {"arch": "Siamese", "lr": 0.4, "batch_size": 10},
    ]
    configs = ray_configs(spec)
    got = sorted((c["seed"], c["lr"], c["arch"], c["batch_size"]) for c in configs)
    want = sorted((s, g["lr"], g["arch"], g["batch_size"]) for g in grid_points(spec) for s in (0, 1))
    assert got == want and all(0.0 <= c["momentum"] <= 0.5 for c in configs)
    product = spec.model_copy(update={"search": spec.search.model_copy(update={"grid": "product"})})
    assert product.n_trials() == 2 * 4 * 3 * 2 == len(ray_configs(product))


def _selected(configs: list[dict], where: dict) -> bool:
    return any(all(k in c and c[k] == v for k, v in where.items()) for c in configs)


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_smoke_exercises_every_claim_and_row(path: Path) -> None:
    """Each group of every claim, at a level both share, and every row's where, is among the
    configurations a smoke run really runs, unless it names a value the bundled data cannot hold
    (left out of the smoke grid, and said so in its description)."""
    spec = load_spec(path)
    smoke = smoke_spec(spec, dict(get_family(spec.trainable).smoke))
    configs = ray_configs(smoke)

    def servable(where: dict) -> bool:
        return all(v in smoke.space[k].grid for k, v in where.items() if k in smoke.grid_axes)

    for c in spec.paper.claims:
        a, b = {**c.where, **c.a}, {**c.where, **c.b}
        if not (servable(a) and servable(b)):
            assert "left out" in smoke.description, (path.name, c.label)
            continue
        assert _selected(configs, a) and _selected(configs, b), (path.name, c.label)
        level = [k for k in c.within if k in smoke.grid_axes]
        levels_a = {tuple(x[k] for k in level) for x in configs if all(x.get(k) == v for k, v in a.items())}
        levels_b = {tuple(x[k] for k in level) for x in configs if all(x.get(k) == v for k, v in b.items())}
        assert levels_a & levels_b, (path.name, c.label, "a and b never at the same level")
    for r in spec.paper.results:
        if servable(r.where):
            assert _selected(configs, r.where), (path.name, r.label)


def test_wsms_scale_mnist_smoke_runs_wsms_net() -> None:
    """The motivating example: the Latin cover ran the plain net and MS-Net, never WSMS-Net."""
    spec = load_spec(next(p for p in SPACES if p.name == "wsms_scale_mnist.yaml"))
    configs = ray_configs(smoke_spec(spec, dict(get_family(spec.trainable).smoke)))
    assert _selected(configs, {"stages": 2, "ms": False}) and _selected(configs, {"stages": 2, "ms": True})
    assert _selected(configs, {"stages": 1, "ms": False})
