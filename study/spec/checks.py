"""Checks of a validated `Spec` against the platform and its trainable, one `UserError` line each.

`check_limits`: sizes (trials, seeds, samples) before anything is built. `check_keys`: every key
and metric known to the family. `check_configs`: every value's rule on example configs (and, with
the data, the family's size checks). `check_paper`: the ``paper:`` block's provenance and
references against the configurations the study schedules. `check_shape`: the rules of packed (``pack``) and
data-parallel (``resources.workers``) trials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.errors import ConfigError, UserError, one_line, short
from study.spec.grid import example_configs, grid_plan, grid_points, product_points
from study.spec.model import Choice, Grid, LogUniform, RandInt, Spec, Uniform

# Limits checked before anything is built from a spec (a seed list, a grid, a YAML value): each
# stops a typo (repeats=1e9, a 3x10^10 grid) or a hostile file before it eats the machine's memory.
MAX_TRIALS = 100_000  # trials in one study (grid points x samples x seeds)
MAX_REPEATS = 1_000  # seeds per configuration (repeats, or the length of seeds)
MAX_SAMPLES = 100_000  # search.num_samples


def check_limits(spec: Spec, path: str | Path) -> None:
    """One-line errors for studies too large to run (`MAX_TRIALS`, `MAX_REPEATS`, `MAX_SAMPLES`),
    computed from sizes only (nothing is materialised)."""
    key = "seeds" if spec.seeds is not None else "repeats"
    if spec.n_seeds > MAX_REPEATS:
        raise UserError(f"{path}: {key}: at most {MAX_REPEATS:,} seeds per configuration (got {spec.n_seeds:,})")
    if spec.search.num_samples > MAX_SAMPLES:
        raise UserError(f"{path}: search.num_samples: at most {MAX_SAMPLES:,} (got {spec.search.num_samples:,})")
    n = spec.n_trials()
    if n > MAX_TRIALS:
        sizes = [f"{len(d.grid)} {k}" for k, d in spec.space.items() if isinstance(d, Grid)]
        factors = " x ".join([*sizes, f"{spec.search.num_samples} samples", f"{spec.n_seeds} seeds"])
        raise UserError(
            f"{path}: space: the study would run {n:.3g} trials ({one_line(factors, 200)}); at most {MAX_TRIALS:,} "
            "per study: split it into several studies or search it with optuna/random num_samples"
        )


def check_keys(spec: Spec, path: str | Path) -> None:
    """Every config key must be known to the trainable (values: `check_configs`)."""
    from trainables import REGISTRY

    family = REGISTRY.get(spec.trainable)
    if family is None:
        raise UserError(
            f"{path}: trainable: unknown trainable {spec.trainable!r}; known: {', '.join(sorted(REGISTRY))}"
        )
    if family.sources is not None and spec.data.source not in family.sources:
        raise UserError(
            f"{path}: data.source: {family.name} reads {', '.join(family.sources)}, not {spec.data.source!r}"
        )
    known = family.all_defaults
    for section, keys in (("data", spec.data.config), ("fixed", spec.fixed), ("space", spec.space)):
        for key in keys:
            if key not in known:
                raise UserError(
                    f"{path}: {section}.{key}: unknown config key for trainable {family.name}; "
                    f"known: {', '.join(sorted(known))}"
                )
    metrics = ", ".join((*family.metrics, *(f"/{p}/" for p in family.metric_patterns)))
    if not family.knows_metric(spec.metric):
        raise UserError(f"{path}: metric: {family.name} reports no metric {spec.metric!r}; known: {metrics}")
    declared = family.metric(spec.metric)
    if declared is not None and declared.direction != spec.mode:
        better = "lower" if declared.direction == "min" else "higher"
        raise UserError(
            f"{path}: mode: {family.name} declares {spec.metric} {better} is better, so mode must be "
            f"{declared.direction}, but got {spec.mode}"
        )
    hp = set(known) | {"seed"}
    for i, r in enumerate(spec.paper.results):
        for key in r.where:
            if key not in hp:
                raise UserError(f"{path}: paper.results.{i}.where.{key}: not a config key of {family.name}")
        if r.metric != "params" and not family.knows_metric(r.metric):  # params: every trial reports it
            raise UserError(
                f"{path}: paper.results.{i}.metric: {family.name} reports no metric {r.metric!r}; "
                f"known: {metrics}, params"
            )
    for i, c in enumerate(spec.paper.claims):
        for part in ("where", "a", "b"):
            for key in getattr(c, part):
                if key not in hp:
                    raise UserError(f"{path}: paper.claims.{i}.{part}.{key}: not a config key of {family.name}")
        for key in c.within:
            if key not in hp:
                raise UserError(f"{path}: paper.claims.{i}.within: {key!r} is not a config key of {family.name}")
        if not family.knows_metric(c.metric):
            raise UserError(
                f"{path}: paper.claims.{i}.metric: {family.name} reports no metric {c.metric!r}; known: {metrics}"
            )


def check_configs(spec: Spec, path: str | Path, data: Any = None) -> None:
    """Check `example_configs` before any trial: each value's type and rule (`resolve_config`), then
    the trainable's own `check` (with `data`: also the data sizes). One-line `UserError`s naming the
    section that sets the key (`fixed.lr: ...`)."""
    from trainables import get_family
    from trainables.common import resolve_config

    family = get_family(spec.trainable)
    sections = {**{k: "data" for k in spec.data.config}, **{k: "fixed" for k in spec.fixed}}
    for config in example_configs(spec):
        try:
            cfg = resolve_config(family, {**config, "seed": spec.seed_list[0]})
            if str(cfg["device"]).startswith("cuda") and spec.resources.gpu == 0:
                raise ConfigError(family.name, "device", f"{cfg['device']} needs resources.gpu > 0 (got gpu 0)")
            if family.check is not None:
                family.check(cfg, data)
        except ConfigError as e:  # a rule of one value: name the key where the file sets it
            key = e.key.split("[")[0]
            where = f"{sections[key]}.{e.key}" if key in sections else f"space.{e.key}" if key in spec.space else e.key
            raise UserError(f"{path}: {where}: {e.detail}") from None
        except UserError as e:
            shown = one_line(
                ", ".join(
                    f"{k}={config[k] if isinstance(config[k], (str, int, float)) and len(str(config[k])) <= 40 else short(config[k], 40)}"
                    for k in spec.space
                    if k in config
                ),
                300,
            )
            raise UserError(f"{path}: {e}" + (f" (at {shown})" if shown else "")) from None


def check_shape(spec: Spec, path: str | Path) -> None:
    """One-line errors for spec combinations the trial shapes do not support."""
    if spec.pack == 1:
        return
    if spec.resources.workers > 1:
        raise UserError(f"{path}: pack: pack > 1 and resources.workers > 1 cannot be combined; use one of them")
    if spec.scheduler.type == "asha":
        raise UserError(
            f"{path}: pack: pack > 1 cannot be combined with scheduler asha (ASHA stops trials one by one, "
            "packed trials train in lock step); use pack: 1 or scheduler: {type: none}"
        )
    if spec.search.algorithm != "grid" or spec.search.num_samples != 1:
        raise UserError(f"{path}: pack: pack > 1 needs search.algorithm grid with num_samples 1")
    sampled = [k for k, d in spec.space.items() if not isinstance(d, Grid)]
    if sampled:
        raise UserError(f"{path}: pack: pack > 1 needs grid axes only, but space.{sampled[0]} is sampled")
    amps = [spec.fixed.get("amp"), spec.data.config.get("amp"), *getattr(spec.space.get("amp"), "grid", [])]
    if "fp16" in amps:
        raise UserError(
            f"{path}: pack: pack > 1 cannot train with amp fp16 (no per-member grad scaler); use bf16 or off"
        )
    from trainables import REGISTRY
    from trainables.packing import support

    family = REGISTRY.get(spec.trainable)
    if family is not None and support(family) is None:
        raise UserError(
            f"{path}: pack: trainable {spec.trainable} cannot be packed yet (only digit_pairs); use pack: 1"
        )


def _shown(where: dict[str, Any]) -> str:
    return one_line(", ".join(f"{k}: {short(v, 40)}" for k, v in where.items()), 200) or "{}"


def _admissible(spec: Spec, key: str, value: Any) -> str | None:
    """Why no trial can have ``key: value`` (by the key's own section), else None; grid axes are
    matched against the scheduled points by `_selects`."""
    dom = spec.space.get(key)
    base = spec.base_config()
    if key == "seed":
        return (
            None if value in spec.seed_list else f"seed {short(value)} is not one of the seeds {short(spec.seed_list)}"
        )
    if isinstance(dom, Grid):
        return (
            None if value in dom.grid else f"{key}: {short(value)} is not a grid value of space.{key} {short(dom.grid)}"
        )
    if isinstance(dom, Choice):
        return (
            None if value in dom.choice else f"{key}: {short(value)} is not a choice of space.{key} {short(dom.choice)}"
        )
    if isinstance(dom, Uniform | LogUniform | RandInt):
        lo, hi = getattr(dom, "uniform", None) or getattr(dom, "loguniform", None) or dom.randint
        ok = isinstance(value, int | float) and not isinstance(value, bool) and lo <= value <= hi
        if isinstance(dom, RandInt):
            ok = ok and isinstance(value, int) and value < hi
        return (
            None
            if ok
            else f"{key}: {short(value)} is outside space.{key} [{lo}, {hi}{')' if isinstance(dom, RandInt) else ']'}"
        )
    if key in base:
        section = "fixed" if key in spec.fixed else "data"
        return None if base[key] == value else f"{key}: {short(value)}, but {section}.{key} is {short(base[key])}"
    return f"{key}: not set by the spec (the tables have no {key} column); set it in fixed: or space:"


def _selects(spec: Spec, points: list[dict[str, Any]], where: dict[str, Any]) -> str | None:
    """Why `where` selects no trial the study schedules, else None."""
    for key, value in where.items():
        why = _admissible(spec, key, value)
        if why:
            return why
    grid = {k: v for k, v in where.items() if k in spec.grid_axes}
    if not grid or any(_match(p, grid) for p in points):
        return None
    plan = grid_plan(spec)
    if plan.collapsed and any(_match(p, grid) for p in product_points(spec)):
        keys = [k for k in grid if k in plan.keys]
        kept = next((p for p in points if _match(p, {k: v for k, v in grid.items() if k not in keys})), None)
        with_ = f"; the study runs it with {_shown({k: kept[k] for k in keys})}" if kept and keys else ""
        verb = "has" if len(keys) == 1 else "have"
        return f"{_shown(grid)} is a configuration the grid collapsed ({', '.join(keys)} {verb} no effect there{with_})"
    return f"no grid point has {_shown(grid)}"


def _match(point: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(point[k] == v for k, v in want.items())


def _sampled_conflict(a: dict[str, Any], b: dict[str, Any], spec: Spec) -> bool:
    """True when a and b name different values of a key that is not a grid axis (never both)."""
    return any(k in b and k not in spec.grid_axes and a[k] != b[k] for k in a)


def check_paper(spec: Spec, path: str | Path, *, references: bool = True) -> None:
    """The ``paper:`` block against the space: every row states what it was measured on (its own
    ``dataset`` or ``paper.dataset``; a file's data.source never stands in); every row's and
    claim's ``where``, ``a`` and ``b`` select at least one configuration the study schedules; a
    claim's groups do not overlap and meet at some level of its ``within`` keys. One `UserError`
    line each, naming the row or claim by index and label. Without `references`, provenance only."""
    paper = spec.paper
    for i, r in enumerate(paper.results):
        if r.dataset is None and paper.dataset is None:
            raise UserError(
                f"{path}: paper.results.{i} ({short(r.label, 60)}): dataset: say what the paper measured this "
                "number on (dataset: per row, or paper.dataset once; any for numbers that do not depend on the "
                "data); the file's data.source never stands in"
            )
    if references:
        for _, _, line in reference_problems(spec, path):
            raise UserError(line)


def reference_problems(spec: Spec, path: str | Path) -> list[tuple[str, int, str]]:
    """Every paper row and claim whose references the study cannot serve, as (``results`` or
    ``claims``, index, one line naming the file, the row or claim and the rule)."""
    paper = spec.paper
    points = grid_points(spec)
    problems: list[tuple[str, int, str]] = []
    for i, r in enumerate(paper.results):
        why = _selects(spec, points, r.where)
        if why:
            name = f"{path}: paper.results.{i} ({short(r.label, 60)})"
            problems.append(("results", i, f"{name}: where selects no configuration this study runs ({why})"))
    for i, c in enumerate(paper.claims):
        line = _claim_problem(spec, points, c, f"{path}: paper.claims.{i} ({short(c.label, 60)})")
        if line:
            problems.append(("claims", i, line))
    return problems


def _claim_problem(spec: Spec, points: list[dict[str, Any]], c: Any, name: str) -> str | None:
    """Why claim `c` cannot be tested on the study's configurations (one line), or None."""
    for part, group in (("where", c.where), ("a", {**c.where, **c.a}), ("b", {**c.where, **c.b})):
        why = _selects(spec, points, group)
        if why:
            return f"{name}: {part} selects no configuration this study runs ({why})"
    a, b = {**c.where, **c.a}, {**c.where, **c.b}
    ga = {k: v for k, v in a.items() if k in spec.grid_axes}
    gb = {k: v for k, v in b.items() if k in spec.grid_axes}
    if not _sampled_conflict(a, b, spec) and any(
        all(p[k] == v for k, v in {**ga, **gb}.items()) and all(ga.get(k, v) == v for k, v in gb.items())
        for p in points
    ):
        return (
            f"{name}: a and b overlap: a trial with {_shown({**a, **b})} is in both groups; "
            "make them exclusive (name the same key with different values)"
        )
    within = [k for k in c.within if k in spec.grid_axes]
    if within:
        levels_a = {tuple(repr(p[k]) for k in within) for p in points if all(p[k] == v for k, v in ga.items())}
        levels_b = {tuple(repr(p[k]) for k in within) for p in points if all(p[k] == v for k, v in gb.items())}
        if not levels_a & levels_b:
            return (
                f"{name}: within {', '.join(within)}: a and b never run at the same {', '.join(within)} "
                "(no level has both groups)"
            )
    return None
