"""Plot data: pure functions from the trials / summary / epochs tables to the tables figures draw.

Every n is a number of seeds (or, for random search, of trials: each is its own configuration);
intervals are `analysis.stats.t_interval`, clipped to the metric's unit bounds when declared
(a band of a loss never dips below 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.aggregate import MAX_LEVELS, describe, finished, is_categorical, seed_units, semantic
from analysis.format import config_label
from analysis.stats import CONFIDENCE
from core.metrics import Metric


def profile(
    summary: pd.DataFrame,
    keys: Sequence[str],
    *,
    metric_col: str,
    mode: str,
    hyperparameters: Sequence[str],
) -> pd.DataFrame:
    """For each combination of `keys`, the configuration with the best mean over the others.

    This is the paper's "best setting" reading (Table 1 of the digit-pair study): e.g. keys
    (arch, lr) gives, per net and lr, the best batch size's mean and CI. Columns: the keys,
    ``n``, ``mean``, ``ci_lo``, ``ci_hi``, ``config`` (the other hyperparameters' values).
    """
    col = metric_col
    ranked = summary[summary[f"{col}_mean"].notna()]
    ranked = ranked.sort_values(f"{col}_mean", ascending=(mode == "min"), kind="stable")
    keys = list(keys)
    top = ranked.groupby(keys, dropna=False, sort=True).head(1) if keys else ranked.head(1)
    others = [h for h in hyperparameters if h not in keys]
    out = top[keys].copy()
    for stat in ("n", "mean", "ci_lo", "ci_hi"):
        out[stat] = top[f"{col}_{stat}"].to_numpy()
    out["config"] = [config_label(r, others) for r in top[others].to_dict("records")] if others else ""
    return out.sort_values(keys, kind="stable").reset_index(drop=True) if keys else out.reset_index(drop=True)


def _units(trials: pd.DataFrame, keys: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Finished trials as seed units of their configuration (when ``config_id`` is known)."""
    done = finished(trials).dropna(subset=list(columns))
    if "config_id" not in done.columns:
        return done
    by = [*dict.fromkeys([*keys, "config_id"])]
    return seed_units(done, by, columns)


def marginal(
    trials: pd.DataFrame,
    keys: Sequence[str],
    *,
    metric_col: str,
    confidence: float = CONFIDENCE,
    semantics: Mapping[str, Metric] | None = None,
) -> pd.DataFrame:
    """Mean and CI of `metric_col` over all finished (configuration, seed) units sharing the
    `keys` values.

    Used instead of `profile` when configurations are not repeated (random search), where the
    best single trial per cell would only pick noise. Same columns as `profile`.
    """
    keys = list(keys)
    done = _units(trials, keys, [metric_col])
    cols = [*keys, "n", "mean", "ci_lo", "ci_hi", "config"]
    if done.empty:
        return pd.DataFrame(columns=cols)
    d = describe(done, keys, [metric_col], confidence, semantics).reset_index()
    d = d.rename(columns={f"{metric_col}_{s}": s for s in ("n", "mean", "ci_lo", "ci_hi")})
    return d.assign(config="all settings of the others")[cols]


def repeated(summary: pd.DataFrame) -> bool:
    """Whether any configuration has two or more finished repeats."""
    return bool(len(summary)) and int(summary["n_finished"].max()) >= 2


def binned_effect(
    trials: pd.DataFrame,
    x: str,
    *,
    metric_col: str,
    group: str | None = None,
    bins: int = 10,
    log: bool = False,
    confidence: float = CONFIDENCE,
    semantics: Mapping[str, Metric] | None = None,
) -> pd.DataFrame:
    """Mean and CI of `metric_col` over finished trials in `bins` equal-width (or log) bins of x.

    For continuous hyperparameters (random search), where configurations do not repeat.
    Columns: group (if given), ``x`` (the mean -- geometric if `log` -- of x in the bin),
    ``n``, ``mean``, ``ci_lo``, ``ci_hi``.
    """
    done = finished(trials).dropna(subset=[x, metric_col])
    keys = [group] if group else []
    cols = [*keys, "x", "n", "mean", "ci_lo", "ci_hi"]
    if done.empty:
        return pd.DataFrame(columns=cols)
    xs = done[x].to_numpy(dtype=float)
    log = log and bool((xs > 0).all())
    scale = np.log10(xs) if log else xs
    edges = np.linspace(scale.min(), scale.max(), bins + 1)
    idx = np.clip(np.searchsorted(edges, scale, side="right") - 1, 0, bins - 1)
    frame = done[keys].assign(_bin=idx, _x=scale, _m=done[metric_col].to_numpy(dtype=float))
    g = frame.groupby([*keys, "_bin"], dropna=False, sort=True)
    out = g["_x"].mean().rename("x").to_frame()
    declared = semantic(semantics, metric_col)
    sem = {"_m": declared} if declared is not None else None
    d = describe(frame, [*keys, "_bin"], ["_m"], confidence, sem)
    out["n"], out["mean"], out["ci_lo"], out["ci_hi"] = d["_m_n"], d["_m_mean"], d["_m_ci_lo"], d["_m_ci_hi"]
    out["x"] = 10 ** out["x"] if log else out["x"]
    return out.reset_index()[cols]


def choose_group(trials: pd.DataFrame, x: str, candidates: Sequence[str], *, metric_col: str) -> str | None:
    """The categorical hyperparameter (not `x`) with the most effect: the largest spread of means.

    Candidates with 2..`MAX_LEVELS` levels among finished trials are scored by max - min of their
    levels' mean `metric_col`; None if there is no candidate.
    """
    done = finished(trials).dropna(subset=[metric_col])
    best, spread = None, -1.0
    for c in candidates:
        if c == x or c not in done.columns or not is_categorical(done[c]):
            continue
        means = done.groupby(c, dropna=False)[metric_col].mean()
        if 2 <= len(means) <= MAX_LEVELS and float(means.max() - means.min()) > spread:
            best, spread = c, float(means.max() - means.min())
    return best


def wants_log_axis(values: pd.Series, spec: Mapping[str, Any] | None = None) -> bool:
    """Log scale for ``loguniform`` hyperparameters and positive values spanning >= 2 decades."""
    if isinstance(spec, Mapping) and "loguniform" in spec:
        return True
    if is_categorical(values):
        return False
    v = values.dropna().to_numpy(dtype=float)
    return bool(len(v)) and bool((v > 0).all()) and v.max() / v.min() >= 100


def learning_curves(
    epochs: pd.DataFrame,
    trials: pd.DataFrame,
    configs: pd.DataFrame,
    metrics: Sequence[str],
    *,
    max_points: int = 200,
    confidence: float = CONFIDENCE,
    semantics: Mapping[str, Metric] | None = None,
) -> pd.DataFrame:
    """Per-epoch mean and CI over the finished seeds of each configuration in `configs`.

    `trials` and `configs` carry ``config_id`` (see `analysis.aggregate.with_config_id`);
    `configs` also a ``label``. At most `max_points` epochs per curve are kept (evenly spaced, the
    last one always). Rows follow the order of `configs`. Long format: ``config_id``, ``label``,
    ``metric``, ``epoch``, ``n``, ``mean``, ``ci_lo``, ``ci_hi``.
    """
    cols = ["config_id", "label", "metric", "epoch", "n", "mean", "ci_lo", "ci_hi"]
    done = finished(trials)
    keep_cols = ["trial_id", "config_id"] + (["seed"] if "seed" in done.columns else [])
    done = done[done["config_id"].isin(configs["config_id"])][keep_cols]
    metrics = [m for m in metrics if m in epochs.columns]
    if done.empty or not metrics or epochs.empty:
        return pd.DataFrame(columns=cols)
    e = epochs[epochs["trial_id"].isin(done["trial_id"])].merge(done, on="trial_id")
    last = int(e["epoch"].max()) if len(e) else 0
    if last > max_points:
        keep = np.unique(np.linspace(1, last, max_points).round().astype(int))
        e = e[e["epoch"].isin(keep)]
    parts = []
    for m in metrics:
        units = seed_units(e, ["config_id", "epoch"], [m]) if "seed" in e.columns else e
        d = describe(units, ["config_id", "epoch"], [m], confidence, semantics).reset_index()
        d = d.rename(columns={f"{m}_n": "n", f"{m}_mean": "mean", f"{m}_ci_lo": "ci_lo", f"{m}_ci_hi": "ci_hi"})
        parts.append(d.assign(metric=m))
    out = pd.concat(parts, ignore_index=True).merge(configs[["config_id", "label"]], on="config_id")
    position = {cid: i for i, cid in enumerate(configs["config_id"])}  # keep the order of `configs`
    out = out.assign(_pos=out["config_id"].map(position)).sort_values(["_pos", "metric", "epoch"], kind="stable")
    return out[cols].reset_index(drop=True)
