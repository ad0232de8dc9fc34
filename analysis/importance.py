"""Hyperparameter importance: the share of the metric's variance each searched key explains alone.

Method (a one-way ANOVA per key, over seed units): the finished trials are averaged per
(configuration, seed); for each searched key, its values (continuous keys: `BINS` quantile bins)
split the units into groups, and eta squared = between-group sum of squares / total sum of
squares is the share of the variance that key's main effect explains. Importances are the eta
squared values scaled to sum to 1 (``eta_sq`` keeps the raw share). A key with a real effect
gets a real weight however few the top trials are (a quantile method such as PED-ANOVA gives a
key 0 when the top 10 % of a small grid happen to share its values).

With fewer than `MIN_UNITS` units, or fewer than `MIN_PER_LEVEL` units per value on average,
the table is empty with a reason (``importance_note``): too few trials to mean anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.aggregate import finished, is_continuous

MIN_UNITS = 20  # fewer (configuration, seed) units: no importance
MIN_PER_LEVEL = 3  # fewer units per value of a key on average: too thin to rate
BINS = 10  # quantile bins of a continuous key
EVALUATOR = "main-effect variance share (one-way ANOVA eta²)"
COLUMNS = ["param", "importance", "eta_sq", "n_trials", "evaluator"]


def _groups(values: pd.Series) -> pd.Series:
    """Group labels of a key: its values, or quantile bins for a continuous key."""
    if is_continuous(values):
        return pd.qcut(values.astype(float).rank(method="first"), BINS, labels=False)
    return values.astype(object).where(values.notna(), "none").astype(str)


def importance_note(trials: pd.DataFrame, searched: Sequence[str], *, metric_col: str) -> str:
    """Why there is no importance table (empty when there is one)."""
    if metric_col not in trials.columns:
        return f"no column {metric_col}"
    units = _units(trials, searched, metric_col)
    params = [p for p in searched if p in units.columns and units[p].nunique(dropna=False) > 1]
    if not params:
        return "no searched hyperparameter varies among finished trials"
    if len(units) < MIN_UNITS:
        return f"{len(units)} finished (configuration, seed) units: at least {MIN_UNITS} are needed to rate keys"
    thin = [p for p in params if len(units) / _groups(units[p]).nunique() < MIN_PER_LEVEL]
    if len(thin) == len(params):
        return f"fewer than {MIN_PER_LEVEL} units per value of every key: too few trials to rate them"
    return ""


def _units(trials: pd.DataFrame, searched: Sequence[str], metric_col: str) -> pd.DataFrame:
    done = finished(trials).dropna(subset=[metric_col])
    done = done[np.isfinite(done[metric_col].to_numpy(dtype=float))]
    keys = [p for p in searched if p in done.columns]
    if "config_id" in done.columns and "seed" in done.columns and len(done):
        first = done.groupby(["config_id", "seed"], sort=True)[keys].first()
        mean = done.groupby(["config_id", "seed"], sort=True)[metric_col].mean()
        return first.assign(**{metric_col: mean}).reset_index()
    return done


def param_importance(
    trials: pd.DataFrame,
    searched: Sequence[str],
    *,
    metric_col: str,
    mode: str = "max",
    space: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Importance of each searched hyperparameter for `metric_col` (see the module docstring).

    Columns: ``param``, ``importance`` (sums to 1), ``eta_sq``, ``n_trials`` (units), ``evaluator``;
    largest first. Empty when `importance_note` gives a reason. `mode` and `space` are accepted
    for the callers' convenience; a variance share does not depend on them.
    """
    if importance_note(trials, searched, metric_col=metric_col):
        return pd.DataFrame(columns=COLUMNS)
    units = _units(trials, searched, metric_col)
    y = units[metric_col].to_numpy(dtype=float)
    total = float(((y - y.mean()) ** 2).sum())
    rows = []
    for p in searched:
        if p not in units.columns or units[p].nunique(dropna=False) <= 1:
            continue
        g = _groups(units[p])
        if len(units) / g.nunique() < MIN_PER_LEVEL:
            continue
        means = units.groupby(g.to_numpy(), sort=False)[metric_col].agg(["mean", "size"])
        between = float((means["size"] * (means["mean"] - y.mean()) ** 2).sum())
        rows.append({"param": p, "eta_sq": between / total if total > 0 else 0.0})
    out = pd.DataFrame(rows, columns=["param", "eta_sq"])
    s = out["eta_sq"].sum()
    out["importance"] = out["eta_sq"] / s if s > 0 else 1.0 / max(len(out), 1)
    out["n_trials"], out["evaluator"] = len(units), EVALUATOR
    return out.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)[COLUMNS]
