"""Pairwise comparisons of the levels of each categorical searched hyperparameter.

Unadjusted pairwise Welch tests (`analysis.stats.welch`) of a - b, the same sign as claims, over
seed units: per seed, the mean of a level's finished trials in the context. They describe the
grid; verdicts come from claims (`analysis.claims`), which are corrected for multiplicity.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from analysis.aggregate import finished, is_continuous, seed_units
from analysis.format import config_label, format_value
from analysis.stats import CONFIDENCE, welch

COMPARISON_COLUMNS = [
    "factor",
    "context",
    "level_a",
    "level_b",
    "n_a",
    "n_b",
    "mean_a",
    "mean_b",
    "diff",  # mean_a - mean_b
    "diff_ci_lo",
    "diff_ci_hi",
    "t",
    "df",
    "p_value",
]


def compare_factor(
    trials: pd.DataFrame,
    factor: str,
    *,
    metric_col: str,
    hold: Sequence[str] = (),
    order: Sequence[Any] | None = None,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Pairwise comparisons of the levels of `factor`, with the `hold` columns kept equal.

    For every combination of the `hold` values (the *context*; none = pooled over everything)
    and every pair of levels a before b (in `order`, default sorted) present there with at least
    2 seeds each: the difference mean_a - mean_b of `metric_col`, its CI and Welch's p-value.
    """
    done = finished(trials).dropna(subset=[metric_col])
    hold = [h for h in hold if h in done.columns and h != factor]
    units = seed_units(done, [*hold, factor], [metric_col])
    groups = []
    for key, part in units.groupby([*hold, factor], dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        values = part[metric_col].to_numpy(float)
        if len(values) >= 2:
            groups.append(dict(zip([*hold, factor], key)) | {"values": values})
    if order is not None:
        rank = {format_value(v): i for i, v in enumerate(order)}
        groups.sort(key=lambda g: rank.get(format_value(g[factor]), len(rank)))
    contexts: dict[str, list[dict]] = {}
    for g in groups:
        contexts.setdefault(config_label(g, hold) or "all", []).append(g)
    rows = []
    for context in contexts:
        for a, b in itertools.combinations(contexts[context], 2):
            test = welch(a["values"], b["values"], confidence)
            rows.append({"factor": factor, "context": context, "level_a": format_value(a[factor]),
                         "level_b": format_value(b[factor]), "n_a": len(a["values"]), "n_b": len(b["values"]),
                         "mean_a": test["mean_a"], "mean_b": test["mean_b"], "diff": test["diff"],
                         "diff_ci_lo": test["ci_lo"], "diff_ci_hi": test["ci_hi"], "t": test["t"],
                         "df": test["df"], "p_value": test["p_value"]})  # fmt: skip
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def varying(trials: pd.DataFrame, hyperparameters: Sequence[str]) -> list[str]:
    """The hyperparameters that take more than one value in `trials`."""
    return [h for h in hyperparameters if h in trials.columns and trials[h].nunique(dropna=False) > 1]


def comparison_hold(trials: pd.DataFrame, hyperparameters: Sequence[str], factor: str) -> list[str]:
    """What to hold equal when comparing `factor`'s levels: the other varying hyperparameters
    except continuous ones (random search), which are averaged over."""
    return [h for h in varying(trials, hyperparameters) if h != factor and not is_continuous(trials[h])]


def focus_comparisons(
    comparisons: pd.DataFrame,
    trials: pd.DataFrame,
    best: Mapping[str, Any] | None,
    hyperparameters: Sequence[str],
    *,
    max_contexts: int = 8,
) -> pd.DataFrame:
    """The comparisons a report shows: per factor, every context if there are at most
    `max_contexts`, else only the context of the overall best configuration `best`."""
    parts = []
    for factor, part in comparisons.groupby("factor", sort=False):
        if part["context"].nunique() > max_contexts and best is not None:
            hold = comparison_hold(trials, hyperparameters, factor)
            part = part[part["context"] == (config_label(best, hold) or "all")]
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else comparisons.iloc[0:0]
