"""Per-configuration aggregates over seeds: the seed is the unit of replication.

- A *configuration* is a trial's hyperparameter values without the seed, and without the keys
  the family declares inert for that trial (a key the model ignores in that configuration, e.g.
  ``lr_milestones`` without a step schedule): `with_config_id` gives trials that differ only
  in the seed or in inert keys the same ``config_id``. The runner records inert keys in the
  trials file's metadata as ``inert_keys`` ({trial_id: [key, ...]}), or an ``effective_config``
  column naming each trial's effective configuration.
- `seed_units` averages the finished trials of a group per seed, so that a seed counts once
  however many trials it has in the group; every n in summaries, paper rows, claims and plots
  is a number of seeds.
- Only finished (``TERMINATED``) trials enter means and intervals; the others are counted
  (``n_diverged``, ``n_error``, ``n_running``).
- Intervals: `analysis.stats.t_interval`, clipped to the metric's unit bounds when the study
  declares its semantics (`core.metrics.Metric.bounds`), else not clipped.
- Statistic columns are named ``<column>_<stat>``, e.g. ``final_test_acc_mean``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from analysis.format import format_value, sort_key
from analysis.stats import CONFIDENCE, clip, t_interval
from core.metrics import Metric
from core.status import FINISHED, UNFINISHED

MAX_LEVELS = 12  # a hyperparameter with at most this many values is discrete (profiled, not binned)
EFFECTIVE_CONFIG = "effective_config"  # optional trials column: the trial's effective configuration


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials whose status is ``TERMINATED``."""
    return trials[trials["status"] == FINISHED]


def metric_columns(trials: pd.DataFrame) -> list[str]:
    """Numeric ``final_*`` and ``best_*`` columns."""
    return [c for c in trials.columns if c.startswith(("final_", "best_")) and is_numeric_dtype(trials[c])]


def metric_name(column: str) -> str:
    """The metric a trials column holds: ``final_test_acc`` -> ``test_acc``, ``params`` -> ``params``."""
    for prefix in ("final_", "best_"):
        if column.startswith(prefix):
            return column[len(prefix) :]
    return column


def semantic(semantics: Mapping[str, Metric] | None, column: str) -> Metric | None:
    """The declared meaning of a trials column's metric, or None (undeclared: shown raw)."""
    return (semantics or {}).get(metric_name(column))


def bounds_of(semantics: Mapping[str, Metric] | None, column: str) -> tuple[float | None, float | None] | None:
    m = semantic(semantics, column)
    return m.bounds if m is not None else None


# ---------------------------------------------------------------------------------------------
# levels of a hyperparameter


def is_categorical(values: pd.Series) -> bool:
    """True for str / bool / mixed columns, False for numeric ones (ints and floats, NaN allowed)."""
    if is_bool_dtype(values):
        return True
    if is_numeric_dtype(values):
        return False
    present = values.dropna()
    return not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in present)


def is_continuous(values: pd.Series) -> bool:
    """Numeric with more than `MAX_LEVELS` distinct values (random search), so effects are binned."""
    return not is_categorical(values) and values.nunique() > MAX_LEVELS


def levels(values: pd.Series, spec: Mapping[str, Any] | None = None) -> list[Any]:
    """Distinct values in display order: numbers in numeric order; text in the spec's
    ``grid``/``choice`` order, then the rest sorted; missing last."""
    present = list(pd.unique(values))
    if not is_categorical(values):
        return sorted(present, key=sort_key)
    listed = list(spec.get("grid") or spec.get("choice") or []) if isinstance(spec, Mapping) else []
    rank = {format_value(v): i for i, v in enumerate(listed)}
    return sorted(present, key=lambda v: (rank.get(format_value(v), len(rank)), sort_key(v)))


def order_by_space(frame: pd.DataFrame, columns: Sequence[str], space: Mapping[str, Any]) -> pd.DataFrame:
    """Rows sorted by `columns` in display order (see `levels`), stable otherwise."""
    if frame.empty or not columns:
        return frame
    keys = {}
    for c in columns:
        order = {format_value(v): i for i, v in enumerate(levels(frame[c], space.get(c)))}
        keys[c] = frame[c].map(lambda v, o=order: o[format_value(v)])
    return frame.iloc[np.lexsort([keys[c].to_numpy() for c in reversed(list(columns))])].reset_index(drop=True)


def _matches(values: pd.Series, wanted: Any) -> pd.Series:
    """Rows of a hyperparameter column equal to a YAML value (floats compared with isclose)."""
    if wanted is None:
        return values.isna()
    if isinstance(wanted, bool):
        return values.map(lambda v: isinstance(v, (bool, np.bool_)) and bool(v) == wanted).astype(bool)
    if isinstance(wanted, (int, float)):
        numbers = pd.to_numeric(values, errors="coerce")
        if is_categorical(values):
            numbers = values.map(lambda v: np.nan if isinstance(v, (bool, np.bool_)) else v)
            numbers = pd.to_numeric(numbers, errors="coerce")
        return pd.Series(np.isclose(numbers.to_numpy(dtype=float), float(wanted), rtol=1e-9, atol=0.0), values.index)
    return values.astype(str) == str(wanted)


def select(trials: pd.DataFrame, where: Mapping[str, Any]) -> pd.DataFrame:
    """Rows matching every ``column: value`` of `where` (none if a column is missing)."""
    mask = pd.Series(True, index=trials.index)
    for key, wanted in where.items():
        if key not in trials.columns:
            return trials.iloc[0:0]
        mask &= _matches(trials[key], wanted)
    return trials[mask]


# ---------------------------------------------------------------------------------------------
# configurations and seed units


def with_config_id(
    trials: pd.DataFrame, hyperparameters: Sequence[str], inert_keys: Mapping[str, Sequence[str]] | None = None
) -> pd.DataFrame:
    """A copy of `trials` with ``config_id``: equal for trials that differ only in the seed or in
    keys declared inert for them (`inert_keys`: {trial_id: [key, ...]}; or an ``effective_config``
    column, which wins)."""
    out = trials.copy()
    if EFFECTIVE_CONFIG in trials.columns and len(trials):
        out["config_id"] = trials[EFFECTIVE_CONFIG].astype(str).factorize(sort=True)[0]
        return out
    hp = [h for h in hyperparameters if h in trials.columns]
    if not hp or not len(trials):
        out["config_id"] = 0
        return out
    keys = trials[hp]
    if inert_keys and "trial_id" in trials.columns:
        keys = keys.astype(object).copy()
        for i, tid in enumerate(trials["trial_id"].astype(str)):
            for k in inert_keys.get(tid, ()):
                if k in keys.columns:
                    keys.iat[i, keys.columns.get_loc(k)] = None
    out["config_id"] = keys.groupby(hp, dropna=False, sort=True).ngroup().to_numpy()
    return out


def seed_units(rows: pd.DataFrame, by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """One row per (`by` values, seed): the mean of each column over those rows (NaN ignored).

    Without a ``seed`` column every row is its own unit. Columns: `by`, ``seed``, `columns`.
    """
    by, columns = list(by), list(columns)
    if "seed" not in rows.columns:
        return rows[by + columns].assign(seed=np.arange(len(rows)))[[*by, "seed", *columns]]
    if rows.empty:
        return rows[[*by, "seed", *columns]]
    return rows.groupby([*by, "seed"], dropna=False, sort=True)[columns].mean().reset_index()


def describe(
    values: pd.DataFrame,
    by: str | list[str],
    columns: Sequence[str],
    confidence: float = CONFIDENCE,
    semantics: Mapping[str, Metric] | None = None,
) -> pd.DataFrame:
    """``<col>_<stat>`` (n, mean, std, sem, ci_lo, ci_hi) of each column over the groups of `by`
    (NaN values ignored); CIs clipped to the unit's bounds when the metric is declared."""
    g = values.groupby(by, dropna=False, sort=True)[list(columns)]
    count, mean, std = g.count(), g.mean(), g.std(ddof=1)
    parts = {}
    for c in columns:
        sem, lo, hi = t_interval(mean[c], std[c], count[c], confidence)
        lo, hi = clip(lo, hi, bounds_of(semantics, c))
        parts.update({f"{c}_n": count[c].astype(int), f"{c}_mean": mean[c], f"{c}_std": std[c],
                      f"{c}_sem": sem, f"{c}_ci_lo": lo, f"{c}_ci_hi": hi})  # fmt: skip
    return pd.DataFrame(parts, index=count.index)


def aggregate_repeats(
    trials: pd.DataFrame,
    hyperparameters: Sequence[str],
    *,
    confidence: float = CONFIDENCE,
    semantics: Mapping[str, Metric] | None = None,
) -> pd.DataFrame:
    """One row per configuration: status counts and n/mean/std/sem/CI of every final_/best_ metric
    over its seeds (a seed's trials of one configuration averaged first).

    Columns: ``config_id``, the hyperparameters, ``n_trials``, ``n_finished``, ``n_diverged``,
    ``n_error``, ``n_running`` (running, paused or pending), ``params``, then ``<metric>_<stat>``
    (``_n``: seeds).
    """
    t = trials if "config_id" in trials.columns else with_config_id(trials, hyperparameters)
    hp = [h for h in hyperparameters if h in t.columns]
    metrics = metric_columns(t)
    ids = t.groupby("config_id", sort=True)
    out = ids[hp].first() if hp else pd.DataFrame(index=ids.size().index)
    status = t["status"].astype(str)
    out["n_trials"] = ids.size()
    for name, states in (
        ("n_finished", [FINISHED]),
        ("n_diverged", ["DIVERGED"]),
        ("n_error", ["ERROR"]),
        ("n_running", list(UNFINISHED)),
    ):
        out[name] = status.isin(states).groupby(t["config_id"]).sum().astype(int)
    if "params" in t.columns:
        out["params"] = ids["params"].max()
    units = seed_units(finished(t), ["config_id"], metrics)
    desc = describe(units, "config_id", metrics, confidence, semantics).reindex(out.index)
    for c in metrics:  # configurations without a finished trial: n = 0
        desc[f"{c}_n"] = desc[f"{c}_n"].fillna(0).astype(int)
    return pd.concat([out, desc], axis=1).reset_index()


def default_group_by(trials: pd.DataFrame, searched: Sequence[str]) -> list[str]:
    """The grouping for "best per group": searched hyperparameters that are categorical (str/bool).

    E.g. ``arch`` when the grid is arch x lr x batch_size (the best lr and batch size per net).
    """
    return [
        h for h in searched if h in trials.columns and is_categorical(trials[h]) and trials[h].nunique() <= MAX_LEVELS
    ]


def best_configs(
    summary: pd.DataFrame, *, metric_col: str, mode: str, group_by: Sequence[str] = (), top: int = 1
) -> pd.DataFrame:
    """The `top` configurations of each group ranked by the mean of `metric_col` over seeds.

    `mode` (``max`` or ``min``) is the metric's declared direction; configurations without a
    finished trial are not ranked. Adds ``rank`` (1 = best); rows ordered by group, then rank.
    """
    col = f"{metric_col}_mean"
    ranked = summary[summary[col].notna()].sort_values(col, ascending=(mode == "min"), kind="stable")
    keys = list(group_by)
    if keys:
        rank = ranked.groupby(keys, dropna=False, sort=False).cumcount() + 1
    else:
        rank = pd.Series(np.arange(1, len(ranked) + 1), index=ranked.index)
    out = ranked.assign(rank=rank.to_numpy())
    out = out[out["rank"] <= top]
    return out.sort_values([*keys, "rank"], kind="stable").reset_index(drop=True)


def plain(value: Any) -> Any:
    """A Python scalar (NaN becomes None), e.g. for level tuples and Optuna choices."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
