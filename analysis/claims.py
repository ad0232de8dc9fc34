"""Claims: a paper's directional statements tested on a study's trials (pure functions, no I/O).

A claim (the spec's ``paper.claims``, see `study.spec.Claim`) says that group ``a`` has a
greater (``direction: greater``) or smaller (``less``) ``metric`` than group ``b``; the groups are
``where`` filters on the trials, both also restricted by the claim's own ``where``. With
``within: [k, ...]`` the comparison is made separately within each level (combination of values)
of those keys, e.g. per training-set size.

Method (one *test* per claim and level):

- Unit of replication: the seed. A group's observation for a seed is the mean final ``metric``
  over its finished trials with that seed (a group spanning several configurations is averaged
  over them, the marginal effect), so n is the number of seeds with a finished trial.
- Difference ``diff = mean_a - mean_b``, its two-sided Student-t interval at 95 % with the
  Welch-Satterthwaite degrees of freedom, Welch's t-test p-value (two-sided), and the effect size
  Cohen's d (``diff`` over the pooled std).
- Holm's correction over all the tests of a study (every level of every claim): ``p_holm``.
- Verdict of a test: ``supported`` when ``p_holm < alpha`` and the difference goes the claimed
  way (for a single test, the 95 % CI excludes 0 on the claimed side), ``contradicted`` when
  ``p_holm < alpha`` the other way, else ``inconclusive`` (``note`` says why: too few seeds, no
  trials in a group, or the CI includes 0 after correction).
- Verdict of a claim (`claim_summary`): ``contradicted`` if any level is, ``supported`` if every
  level is, else ``inconclusive`` ("k of n levels supported").

Claims are about directions, so they are tested on any data source (the scorecard shows which).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis.tables import CONFIDENCE, _sort_key, config_label, finished, format_value, select

ALPHA = 0.05  # family-wise error rate of a study's claims (Holm)
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
CLAIM_COLUMNS = [
    "claim",  # index of the claim in paper.claims
    "label",
    "quote",
    "metric",
    "direction",
    "a",
    "b",
    "where",
    "within",
    "level",
    "n_a",
    "n_b",
    "mean_a",
    "mean_b",
    "diff",
    "ci_lo",
    "ci_hi",
    "effect_size",
    "t",
    "df",
    "p_value",
    "p_holm",
    "verdict",
    "note",
]
SUMMARY_COLUMNS = [
    "claim",
    "label",
    "quote",
    "metric",
    "direction",
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
    "effect_size",
    "p_value",
    "p_holm",
    "verdict",
    "note",
]


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def seed_means(trials: pd.DataFrame, where: Mapping[str, Any], metric_col: str) -> pd.Series:
    """Per seed, the mean of `metric_col` over the finished trials matching `where`."""
    if metric_col not in trials.columns:
        return pd.Series(dtype=float)
    rows = select(finished(trials), where).dropna(subset=[metric_col])
    if rows.empty:
        return pd.Series(dtype=float)
    if "seed" not in rows.columns:
        return rows[metric_col].astype(float).reset_index(drop=True)
    return rows.groupby("seed", sort=True)[metric_col].mean().astype(float)


def compare_groups(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float]:
    """diff = mean(a) - mean(b), its Welch CI, t, df, two-sided p and Cohen's d (NaN where undefined)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = len(a), len(b)
    out = dict.fromkeys(("mean_a", "mean_b", "diff", "ci_lo", "ci_hi", "effect_size", "t", "df", "p_value"), math.nan)
    out["mean_a"] = float(a.mean()) if na else math.nan
    out["mean_b"] = float(b.mean()) if nb else math.nan
    out["diff"] = out["mean_a"] - out["mean_b"]
    if na < 2 or nb < 2:
        return out
    va, vb = a.var(ddof=1), b.var(ddof=1)
    pooled = math.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
    se = math.sqrt(va / na + vb / nb)
    if not se > 0:  # no spread at all: no test
        return out
    df = (va / na + vb / nb) ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    t = out["diff"] / se
    q = float(stats.t.ppf(0.5 + confidence / 2, df))
    out.update(
        ci_lo=out["diff"] - q * se,
        ci_hi=out["diff"] + q * se,
        effect_size=out["diff"] / pooled if pooled > 0 else math.nan,
        t=t,
        df=df,
        p_value=float(2 * stats.t.sf(abs(t), df)),
    )
    return out


def _levels(trials: pd.DataFrame, where: Mapping[str, Any], within: Sequence[str]) -> list[dict[str, Any]]:
    """The combinations of `within` values among the finished trials matching `where`."""
    if not within:
        return [{}]
    if any(k not in trials.columns for k in within):
        return [{}]
    rows = select(finished(trials), where)
    if rows.empty:
        return [{}]
    combos = {tuple(map(_plain, values)) for values in rows[list(within)].itertuples(index=False, name=None)}
    ordered = sorted(combos, key=lambda values: tuple(_sort_key(v) for v in values))
    return [dict(zip(within, values)) for values in ordered]


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _claim(c: Any) -> dict[str, Any]:
    """A claim as a plain dict (from the YAML or a `study.spec.Claim`)."""
    return dict(c.model_dump() if hasattr(c, "model_dump") else c)


def claim_tests(
    trials: pd.DataFrame,
    claims: Sequence[Mapping[str, Any]],
    *,
    alpha: float = ALPHA,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """One row per claim and level (see the module docstring); columns `CLAIM_COLUMNS`."""
    rows = []
    for i, raw in enumerate(claims):
        c = _claim(raw)
        where, within = dict(c.get("where") or {}), list(c.get("within") or [])
        a, b = dict(c.get("a") or {}), dict(c.get("b") or {})
        metric = str(c.get("metric", ""))
        col = f"final_{metric}"
        missing = [k for k in {**where, **a, **b, **dict.fromkeys(within)} if k not in trials.columns]
        for level in _levels(trials, where, within):
            ga = seed_means(trials, {**where, **level, **a}, col) if not missing else pd.Series(dtype=float)
            gb = seed_means(trials, {**where, **level, **b}, col) if not missing else pd.Series(dtype=float)
            test = compare_groups(ga.to_numpy(), gb.to_numpy(), confidence)
            note = ""
            if missing:
                note = f"no column {', '.join(missing)}"
            elif len(ga) == 0 or len(gb) == 0:
                note = f"no finished trial in group {'a' if len(ga) == 0 else 'b'}"
            elif len(ga) < 2 or len(gb) < 2:
                note = f"too few seeds (n_a={len(ga)}, n_b={len(gb)}; 2 or more each are needed)"
            elif math.isnan(test["p_value"]):
                note = "no spread within the groups: no test"
            rows.append(
                {
                    "claim": i,
                    "label": str(c.get("label", "")),
                    "quote": str(c.get("quote", "")),
                    "metric": metric,
                    "direction": str(c.get("direction", "greater")),
                    "a": config_label(a, list(a)),
                    "b": config_label(b, list(b)),
                    "where": config_label(where, list(where)),
                    "within": ", ".join(within),
                    "level": config_label(level, list(level)),
                    "n_a": len(ga),
                    "n_b": len(gb),
                    **{k: test[k] for k in ("mean_a", "mean_b", "diff", "ci_lo", "ci_hi", "effect_size", "t", "df")},
                    "p_value": test["p_value"],
                    "note": note,
                }
            )
    out = pd.DataFrame(rows, columns=[c for c in CLAIM_COLUMNS if c not in ("p_holm", "verdict")])
    out["p_holm"] = holm(out["p_value"].to_numpy(dtype=float)) if len(out) else []
    out["verdict"] = [_verdict(r, alpha) for r in out.to_dict("records")]
    out.loc[(out["verdict"] == INCONCLUSIVE) & (out["note"] == ""), "note"] = (
        f"the difference is not significant after Holm's correction (p_holm >= {format_value(alpha)})"
    )
    return out[CLAIM_COLUMNS]


def _verdict(r: Mapping[str, Any], alpha: float) -> str:
    if pd.isna(r["p_holm"]) or r["p_holm"] >= alpha:
        return INCONCLUSIVE
    claimed = r["diff"] if r["direction"] == "greater" else -r["diff"]
    return SUPPORTED if claimed > 0 else CONTRADICTED


def claim_summary(tests: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: its verdict over its levels, and the numbers of its single test (or of
    its weakest supported / contradicting level when it has several); columns `SUMMARY_COLUMNS`."""
    rows = []
    for _, part in tests.groupby("claim", sort=True):
        verdicts = part["verdict"].tolist()
        n_sup, n_con = verdicts.count(SUPPORTED), verdicts.count(CONTRADICTED)
        if n_con:
            verdict = CONTRADICTED
            shown = part[part["verdict"] == CONTRADICTED].sort_values("p_holm").iloc[0]
        elif n_sup == len(part):
            verdict = SUPPORTED
            shown = part.sort_values("p_holm").iloc[-1]  # the weakest level
        else:
            verdict = INCONCLUSIVE
            shown = part[part["verdict"] == INCONCLUSIVE].iloc[0]
        levels = len(part)
        if levels > 1:
            note = f"{n_sup} of {levels} levels supported, {n_con} contradicted; shown: {shown['level']}"
        else:
            note = str(shown["note"])
        first = part.iloc[0]
        rows.append(
            {
                **{
                    k: first[k] for k in ("claim", "label", "quote", "metric", "direction", "a", "b", "where", "within")
                },
                "levels": levels,
                "n_supported": n_sup,
                "n_contradicted": n_con,
                **{k: shown[k] for k in ("n_a", "n_b", "diff", "ci_lo", "ci_hi", "effect_size", "p_value", "p_holm")},
                "verdict": verdict,
                "note": note,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
