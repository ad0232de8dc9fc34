"""Checks of a validated `Spec` against the platform and its trainable, one `UserError` line each.

`check_limits`: sizes (trials, seeds, samples) before anything is built. `check_keys`: every key
and metric known to the family. `check_configs`: every value's rule on example configs (and, with
the data, the family's size checks). `check_shape`: the rules of packed (``pack``) and
data-parallel (``resources.workers``) trials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.errors import ConfigError, UserError, one_line, short
from study.spec.grid import example_configs
from study.spec.model import Grid, Spec

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
