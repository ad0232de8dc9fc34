"""Every table of a study's report, and the headline that opens it (pure: no I/O).

`study_tables` is the one entry point: trials (with ``config_id``), summary, best, comparisons,
paper, claims, importance, curves. `headline` reads the claims and paper tables into the few
lines the report starts with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from analysis.aggregate import (
    aggregate_repeats,
    best_configs,
    default_group_by,
    levels,
    order_by_space,
    with_config_id,
)
from analysis.claims import CONTRADICTED, INCONCLUSIVE, MIXED, SUPPORTED, claim_summary, claim_tests
from analysis.compare import COMPARISON_COLUMNS, compare_factor, comparison_hold
from analysis.format import config_label, fmt_diff
from analysis.importance import COLUMNS as IMPORTANCE_COLUMNS
from analysis.importance import param_importance
from analysis.load import StudyMeta, StudyResults
from analysis.paper import REFERENCE, paper_vs_reproduced
from analysis.plotdata import learning_curves
from analysis.provenance import study_flags
from analysis.stats import CONFIDENCE


def paper_block(meta: StudyMeta) -> dict[str, Any]:
    """The spec's ``paper:`` block as a plain dict ({} when there is none)."""
    return dict(meta.paper or {})


def paper_table(trials: pd.DataFrame, meta: StudyMeta, *, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """`analysis.paper.paper_vs_reproduced` with the study's facts (data source, semantics, recipe, flags)."""
    paper = paper_block(meta)
    return paper_vs_reproduced(
        trials,
        paper.get("results") or [],
        data_source=meta.data_source or None,
        semantics=meta.semantics,
        paper_dataset=paper.get("dataset"),
        recipe=paper.get("recipe"),
        fixed=meta.fixed,
        study_flags=study_flags(meta.overrides, meta.smoke),
        confidence=confidence,
    )


def claims_table(trials: pd.DataFrame, meta: StudyMeta, *, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """`analysis.claims.claim_tests` with the study's facts."""
    paper = paper_block(meta)
    return claim_tests(
        trials,
        paper.get("claims") or [],
        confidence=confidence,
        semantics=meta.semantics,
        recipe=paper.get("recipe"),
        fixed=meta.fixed,
        study_flags=study_flags(meta.overrides, meta.smoke),
    )


def study_tables(results: StudyResults, *, confidence: float = CONFIDENCE) -> dict[str, pd.DataFrame]:
    """All tables of a study: trials (with ``config_id``), summary, best, comparisons, paper,
    claims, importance, curves. See each function for its columns."""
    meta = results.meta
    trials = with_config_id(results.trials, meta.hyperparameters, meta.inert_keys)
    summary = aggregate_repeats(trials, meta.hyperparameters, confidence=confidence, semantics=meta.semantics)
    groups = default_group_by(trials, meta.searched)
    metric_col = meta.metric_col
    has_metric = f"{metric_col}_mean" in summary.columns
    best = (
        best_configs(summary, metric_col=metric_col, mode=meta.mode, group_by=groups, top=1 if groups else 5)
        if has_metric
        else summary.iloc[0:0].assign(rank=pd.Series(dtype=int))
    )
    best = order_by_space(best, groups, meta.space)
    best = best.assign(label=[_best_label(r, groups, meta.searched) for r in best.to_dict("records")])
    comparisons = [
        compare_factor(
            trials,
            f,
            metric_col=metric_col,
            hold=comparison_hold(trials, meta.hyperparameters, f),
            order=levels(trials[f], meta.space.get(f)),
            confidence=confidence,
        )
        for f in groups
        if has_metric and trials[f].nunique(dropna=False) >= 2
    ]
    comparisons = [c for c in comparisons if not c.empty]
    curve_metrics = [m for m in dict.fromkeys([meta.metric, "train_loss"]) if m]
    return {
        "trials": trials,
        "summary": summary,
        "best": best,
        "comparisons": pd.concat(comparisons, ignore_index=True)
        if comparisons
        else pd.DataFrame(columns=COMPARISON_COLUMNS),
        "paper": paper_table(trials, meta, confidence=confidence),
        "claims": claims_table(trials, meta, confidence=confidence),
        "importance": param_importance(trials, meta.searched, metric_col=metric_col, mode=meta.mode, space=meta.space)
        if has_metric
        else pd.DataFrame(columns=IMPORTANCE_COLUMNS),
        "curves": learning_curves(
            results.epochs, trials, best, curve_metrics, confidence=confidence, semantics=meta.semantics
        ),
    }


def _best_label(row: Mapping[str, Any], groups: Sequence[str], searched: Sequence[str]) -> str:
    """Legend text for a best configuration: its group, then its other searched values."""
    keys = list(groups) + [s for s in searched if s not in groups]
    return config_label(row, keys) or f"config {row['config_id']}"


def _count_phrase(counts: Mapping[str, int], order: Sequence[str]) -> str:
    return ", ".join(f"{counts[v]} {v}" for v in order if counts.get(v))


def headline(meta: StudyMeta, tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """What the study found, in a few plain lines (claims by verdict, paper rows by verdict, and
    for stand-in data the largest distance to the paper)."""
    lines = []
    claims = tables.get("claims", pd.DataFrame())
    if len(claims):
        summary = claim_summary(claims)
        counts = summary["verdict"].value_counts().to_dict()
        lines.append(
            f"Claims ({len(summary)}): "
            + _count_phrase(counts, [SUPPORTED, CONTRADICTED, MIXED, INCONCLUSIVE])
            + " (Welch over seeds, Holm-corrected)."
        )
    paper = tables.get("paper", pd.DataFrame())
    ran = paper[paper["n"].fillna(0) > 0] if len(paper) else paper
    if len(ran):
        counts = ran["verdict"].value_counts().to_dict()
        lines.append(f"Paper numbers with trials ({len(ran)}): " + _count_phrase(counts, list(counts)) + ".")
        ref = ran[ran["verdict"] == REFERENCE]
        for unit, part in ref.groupby("unit", sort=True):
            d = part["diff"].abs().max()
            if math.isnan(d):
                continue
            sources = ", ".join(sorted({str(s) for s in part["dataset"]}))
            shown = fmt_diff(d, unit or None).lstrip("+")
            lines.append(
                f"On {meta.data_source or 'this data'} (a stand-in for {sources}): the {len(part)} "
                f"{'mean is' if len(part) == 1 else 'means are'} within {shown} of the paper."
            )
    if not lines:
        lines.append("No paper claims or numbers to test: see the best configurations below.")
    return lines
