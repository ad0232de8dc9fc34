"""Claims: a paper's statements about two groups, tested on a study's trials (pure functions).

A claim (the spec's ``paper.claims``) says that group ``a`` has a greater (``direction:
greater``) or smaller (``less``) ``metric`` than group ``b`` (``kind: direction``, the default),
or that the two are equal within ``margin`` (``kind: equivalence``). The groups are ``where``
filters on the trials, both also restricted by the claim's own ``where``; with ``within: [k]``
the comparison is made separately within each level of those keys (a missing value is one
level, "none").

Method (one *test* per claim and level):

- The seed is the unit: a group's observation for a seed is the mean final ``metric`` over its
  finished trials with that seed (each configuration's trials averaged first), so n counts seeds.
- Welch's t-test of diff = mean_a - mean_b (`analysis.stats.welch`), Hedges' g with its CI; a
  paired t-test beside it where both groups have the same seeds. Equivalence: TOST at ``margin``.
- Holm's correction over all the tests of a study: ``p_holm``; each test's CI is drawn at its
  Holm-consistent level ``ci_level`` (``adj_ci_lo``, ``adj_ci_hi``), so that it excludes 0
  exactly when the verdict is significant. A directional verdict from a two-sided test at
  family-wise alpha = 0.05 has an effective one-sided level of alpha / 2 = 0.025.
- Verdict: ``supported`` when p_holm < alpha in the claimed direction (equivalence: the TOST is
  significant), ``contradicted`` the other way (equivalence: the adjusted CI lies wholly
  outside +/- margin), else ``inconclusive`` with the reason, and, when a difference was seen,
  the seeds per group at which it would be detected at 80 % power (``seeds_needed``).
- No spread in either group (`analysis.stats.DETERMINISTIC`) with at least `MIN_TIED_SEEDS`
  seeds each, or a metric declared deterministic: the difference is exact and judged by its sign
  (equivalence: by |diff| < margin); with fewer tied seeds: too few seeds.
- A claim over levels (`claim_summary`): ``supported`` if every level is, ``contradicted`` if some
  level is and none supported, ``mixed`` if levels are supported and contradicted, else
  ``inconclusive``.

Claims are about differences, so they are tested on any data source (the scorecard shows which).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.aggregate import finished, plain, seed_units, select
from analysis.format import config_label, format_value, sort_key
from analysis.provenance import row_flags
from analysis.stats import (
    ALPHA,
    CONFIDENCE,
    DETERMINISTIC,
    MIN_TIED_SEEDS,
    REL_SPREAD,
    holm,
    holm_levels,
    paired,
    seeds_needed,
    tost,
    welch,
    welch_ci,
)
from core.metrics import Metric

SUPPORTED, CONTRADICTED, INCONCLUSIVE, MIXED = "supported", "contradicted", "inconclusive", "mixed"
CLAIM_COLUMNS = [
    "claim",  # index of the claim in paper.claims
    "label",
    "quote",
    "metric",
    "unit",
    "kind",  # direction | equivalence
    "direction",
    "margin",
    "a",
    "b",
    "where",
    "within",
    "level",
    "n_a",
    "n_b",
    "mean_a",
    "mean_b",
    "diff",  # mean_a - mean_b
    "ci_lo",  # unadjusted 95 % Welch CI of diff
    "ci_hi",
    "ci_level",  # confidence of the Holm-consistent CI
    "adj_ci_lo",
    "adj_ci_hi",
    "effect_size",  # Hedges' g
    "g_lo",
    "g_hi",
    "t",
    "df",
    "p_value",
    "p_holm",
    "n_paired",
    "paired_diff",
    "paired_ci_lo",
    "paired_ci_hi",
    "paired_p",
    "seeds_needed",
    "verdict",
    "flags",
    "note",
]
SUMMARY_COLUMNS = [
    "claim",
    "label",
    "quote",
    "metric",
    "unit",
    "kind",
    "direction",
    "margin",
    "a",
    "b",
    "where",
    "within",
    "levels",
    "n_supported",
    "n_contradicted",
    "n_a",
    "n_b",
    "diff",
    "ci_lo",
    "ci_hi",
    "ci_level",
    "adj_ci_lo",
    "adj_ci_hi",
    "effect_size",
    "g_lo",
    "g_hi",
    "p_value",
    "p_holm",
    "seeds_needed",
    "verdict",
    "flags",
    "note",
]


def seed_means(trials: pd.DataFrame, where: Mapping[str, Any], metric_col: str) -> pd.Series:
    """Per seed, the mean of `metric_col` over the finished trials matching `where` (each
    configuration's trials of that seed averaged first)."""
    if metric_col not in trials.columns:
        return pd.Series(dtype=float)
    rows = select(finished(trials), where).dropna(subset=[metric_col])
    if rows.empty:
        return pd.Series(dtype=float)
    if "seed" not in rows.columns:
        return rows[metric_col].astype(float).reset_index(drop=True)
    by = ["config_id"] if "config_id" in rows.columns else []
    return seed_units(rows, by, [metric_col]).groupby("seed", sort=True)[metric_col].mean().astype(float)


def compare_groups(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """diff = mean(a) - mean(b), Welch's CI, t, df, two-sided p and Hedges' g (`analysis.stats.welch`)."""
    return welch(a, b, confidence)


def _levels(trials: pd.DataFrame, where: Mapping[str, Any], within: Sequence[str]) -> list[dict[str, Any]]:
    """The combinations of `within` values among the finished trials matching `where` (a missing
    value is one level, None)."""
    if not within or any(k not in trials.columns for k in within):
        return [{}]
    rows = select(finished(trials), where)
    if rows.empty:
        return [{}]
    combos = {tuple(map(plain, values)) for values in rows[list(within)].itertuples(index=False, name=None)}
    ordered = sorted(combos, key=lambda values: tuple(sort_key(v) for v in values))
    return [dict(zip(within, values)) for values in ordered]


def _claim(c: Any) -> dict[str, Any]:
    """A claim as a plain dict (from the YAML or a `study.spec.Claim`)."""
    return dict(c.model_dump() if hasattr(c, "model_dump") else c)


def _note(ga: pd.Series, gb: pd.Series, test: Mapping[str, Any], missing: Sequence[str], exact: bool) -> str:
    if missing:
        return f"no column {', '.join(missing)}"
    if len(ga) == 0 or len(gb) == 0:
        return f"no finished trial in group {'a' if len(ga) == 0 else 'b'}"
    if exact:
        return ""
    if test["spread"] == DETERMINISTIC:
        return (f"every seed gives the same value in both groups, but with n_a={len(ga)}, n_b={len(gb)} "
                f"fewer than {MIN_TIED_SEEDS} seeds each: too few seeds to call it deterministic")  # fmt: skip
    if len(ga) < 2 or len(gb) < 2:
        return f"too few seeds (n_a={len(ga)}, n_b={len(gb)}; 2 or more each are needed)"
    return ""


def claim_tests(
    trials: pd.DataFrame,
    claims: Sequence[Mapping[str, Any]],
    *,
    alpha: float = ALPHA,
    confidence: float = CONFIDENCE,
    semantics: Mapping[str, Metric] | None = None,
    recipe: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
    study_flags: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per claim and level (see the module docstring); columns `CLAIM_COLUMNS`."""
    rows, groups = [], []
    for i, raw in enumerate(claims):
        c = _claim(raw)
        where, within = dict(c.get("where") or {}), list(c.get("within") or [])
        a, b = dict(c.get("a") or {}), dict(c.get("b") or {})
        metric = str(c.get("metric", ""))
        kind = str(c.get("kind") or "direction")
        margin = float(c["margin"]) if c.get("margin") is not None else math.nan
        col = f"final_{metric}"
        declared = (semantics or {}).get(metric)
        missing = [k for k in {**where, **a, **b, **dict.fromkeys(within)} if k not in trials.columns]
        missing += [col] if col not in trials.columns else []
        for level in _levels(trials, where, within):
            sel_a, sel_b = {**where, **level, **a}, {**where, **level, **b}
            ga = seed_means(trials, sel_a, col) if not missing else pd.Series(dtype=float)
            gb = seed_means(trials, sel_b, col) if not missing else pd.Series(dtype=float)
            test = welch(ga.to_numpy(), gb.to_numpy(), confidence)
            fixed_metric = bool(declared and declared.deterministic) and len(ga) and len(gb)
            tied = test["spread"] == DETERMINISTIC and min(len(ga), len(gb)) >= MIN_TIED_SEEDS
            exact = bool(fixed_metric or tied)
            p = test["p_value"] if kind == "direction" else tost(ga.to_numpy(), gb.to_numpy(), margin)
            common = ga.index.intersection(gb.index) if "seed" in trials.columns else pd.Index([])
            pair = paired(ga[common].to_numpy(), gb[common].to_numpy(), confidence) if len(common) >= 2 else {}
            matched = trials.iloc[0:0] if missing else pd.concat([select(trials, sel_a), select(trials, sel_b)])
            rows.append(
                {
                    "claim": i,
                    "label": str(c.get("label", "")),
                    "quote": str(c.get("quote", "")),
                    "metric": metric,
                    "unit": declared.unit if declared else "",
                    "kind": kind,
                    "direction": str(c.get("direction", "greater")),
                    "margin": margin,
                    "a": config_label(a, list(a)),
                    "b": config_label(b, list(b)),
                    "where": config_label(where, list(where)),
                    "within": ", ".join(within),
                    "level": config_label(level, list(level)),
                    "n_a": 1 if fixed_metric else len(ga),
                    "n_b": 1 if fixed_metric else len(gb),
                    **{
                        k: test[k]
                        for k in (
                            "mean_a",
                            "mean_b",
                            "diff",
                            "ci_lo",
                            "ci_hi",
                            "effect_size",
                            "g_lo",
                            "g_hi",
                            "t",
                            "df",
                        )
                    },  # fmt: skip
                    "p_value": math.nan if exact else p,
                    "n_paired": len(common),
                    **{k: pair.get(k, math.nan) for k in ("paired_diff", "paired_ci_lo", "paired_ci_hi", "paired_p")},
                    "flags": row_flags(matched, recipe=recipe, fixed=fixed, study=study_flags),
                    "note": _note(ga, gb, test, missing, exact),
                    "_exact": exact,
                }
            )
            groups.append((ga.to_numpy(), gb.to_numpy()))
    out = pd.DataFrame(rows, columns=[*CLAIM_COLUMNS, "_exact"])
    p = out["p_value"].to_numpy(dtype=float)
    out["p_holm"] = holm(p) if len(out) else []
    gamma = holm_levels(p, out["p_holm"].to_numpy(dtype=float), alpha) if len(out) else np.array([])
    m = max(int(np.sum(~np.isnan(p))), 1)
    levels, adj_lo, adj_hi, needed, verdicts, notes = [], [], [], [], [], []
    for r, (ga, gb), g in zip(out.to_dict("records"), groups, gamma):
        equivalence = r["kind"] == "equivalence"
        level = 1 - (2 * g if equivalence else g) if not math.isnan(g) else math.nan
        lo, hi = welch_ci(ga, gb, level) if not math.isnan(level) else (math.nan, math.nan)
        verdict, note = _verdict(r, lo, hi, alpha)
        n_more = None
        if verdict == INCONCLUSIVE and not r["_exact"] and r["kind"] == "direction" and not r["note"]:
            n_more = seeds_needed(ga, gb, alpha / m)
            if n_more is not None:
                note += f"; about {n_more} seeds per group would detect this difference at 80% power (at α/{m})"
        levels.append(level)
        adj_lo.append(lo)
        adj_hi.append(hi)
        needed.append(n_more)
        verdicts.append(verdict)
        notes.append(note)
    out["ci_level"], out["adj_ci_lo"], out["adj_ci_hi"] = levels, adj_lo, adj_hi
    out["seeds_needed"] = pd.array(needed, dtype="Int64") if len(out) else pd.array([], dtype="Int64")
    out["verdict"], out["note"] = verdicts, notes
    return out[CLAIM_COLUMNS]


def _verdict(r: Mapping[str, Any], lo: float, hi: float, alpha: float) -> tuple[str, str]:
    """The verdict of one test and its note (see the module docstring)."""
    if r["note"]:
        return INCONCLUSIVE, r["note"]
    diff, margin = r["diff"], r["margin"]
    if r["_exact"]:
        scale = max(abs(r["mean_a"]), abs(r["mean_b"]), 1e-300)
        if r["kind"] == "equivalence":
            ok = abs(diff) < margin
            return (SUPPORTED if ok else CONTRADICTED), "no spread: an exact difference, judged against the margin"
        if abs(diff) <= REL_SPREAD * scale:
            return INCONCLUSIVE, "no spread and no difference: both groups give the same value"
        claimed = diff if r["direction"] == "greater" else -diff
        rule = "no spread in either group (every seed gives the same value): an exact difference, judged by its sign"
        return (SUPPORTED if claimed > 0 else CONTRADICTED), rule
    if r["kind"] == "equivalence":
        if not pd.isna(r["p_holm"]) and r["p_holm"] < alpha:
            return SUPPORTED, f"equivalent within ±{format_value(margin)} (TOST, Holm-corrected)"
        if not math.isnan(lo) and (lo > margin or hi < -margin):
            return CONTRADICTED, f"the adjusted CI lies wholly outside ±{format_value(margin)}"
        return INCONCLUSIVE, f"the adjusted CI is not inside ±{format_value(margin)}"
    if pd.isna(r["p_holm"]) or r["p_holm"] >= alpha:
        return INCONCLUSIVE, f"the difference is not significant after Holm's correction (p_holm >= {alpha:g})"
    claimed = diff if r["direction"] == "greater" else -diff
    return (SUPPORTED if claimed > 0 else CONTRADICTED), ""


def claim_summary(tests: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: its verdict over its levels, and the numbers of its single test (or of
    its weakest supported / strongest contradicting level when it has several); `SUMMARY_COLUMNS`."""
    rows = []
    tests = tests.reindex(columns=list(dict.fromkeys([*CLAIM_COLUMNS, *tests.columns])))  # older claims.parquet
    for _, part in tests.groupby("claim", sort=True):
        verdicts = part["verdict"].tolist()
        n_sup, n_con = verdicts.count(SUPPORTED), verdicts.count(CONTRADICTED)
        if n_sup and n_con:
            verdict = MIXED
            shown = part[part["verdict"] == CONTRADICTED].sort_values("p_holm").iloc[0]
        elif n_con:
            verdict = CONTRADICTED
            shown = part[part["verdict"] == CONTRADICTED].sort_values("p_holm").iloc[0]
        elif n_sup == len(part):
            verdict = SUPPORTED
            shown = part.sort_values("p_holm", na_position="first").iloc[-1]  # the weakest level
        else:
            verdict = INCONCLUSIVE
            shown = part[part["verdict"] == INCONCLUSIVE].iloc[0]
        levels = len(part)
        if levels > 1:
            note = f"{n_sup} of {levels} levels supported, {n_con} contradicted; shown: {shown['level']}"
        else:
            note = str(shown["note"])
        first = part.iloc[0]
        keys = ("claim", "label", "quote", "metric", "unit", "kind", "direction", "margin", "a", "b", "where", "within")
        stats_keys = ("n_a", "n_b", "diff", "ci_lo", "ci_hi", "ci_level", "adj_ci_lo", "adj_ci_hi", "effect_size",
                      "g_lo", "g_hi", "p_value", "p_holm", "seeds_needed")  # fmt: skip
        flags = "; ".join(dict.fromkeys(f for f in part["flags"] if isinstance(f, str) and f))
        rows.append({**{k: first[k] for k in keys}, "levels": levels, "n_supported": n_sup, "n_contradicted": n_con,
                     **{k: shown[k] for k in stats_keys}, "verdict": verdict, "flags": flags, "note": note})  # fmt: skip
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
