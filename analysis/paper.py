"""Paper numbers against the study: each row of the spec's ``paper.results`` beside the reproduced
mean and CI over seeds, with a verdict, its tolerance rule and its flags.

Provenance first: a row is judged only on the data the paper measured it on (its ``dataset:``,
else the paper block's ``dataset:``; ``any`` for numbers that do not depend on data, such as
parameter counts). A study on other data shows the row as *reference only*, with its distance
to the paper (measured on a stand-in); a row that names no dataset, or a study that records no
data source, is *not judged* (fail closed).

Tolerances: a row's ``tolerance:`` (a number: absolute, in the metric's unit; or a mapping with
exactly one of ``absolute``, ``relative``, ``printed: true``), else the default rule of the
metric's unit (`DEFAULT_RULES`). Each verdict shows its rule.

Verdicts (`paper_verdict`): the reproduced 95 % CI over seeds against the band the rule gives;
a deterministic metric (counts, sizes) is judged on its single value (n = 1) and never "too
wide". Seeds that all give the same value are judged on that value from `MIN_TIED_SEEDS` seeds
on; fewer tied seeds are "too wide to tell" (n too small), never a zero-width CI. Beside each
verdict: its flags (`analysis.provenance`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.aggregate import finished, seed_units, select
from analysis.format import config_label
from analysis.provenance import row_flags
from analysis.stats import CONFIDENCE, MIN_TIED_SEEDS, clip, has_spread, t_interval
from core.metrics import Metric

REPRODUCED, NOT_REPRODUCED, TOO_WIDE, REFERENCE, NO_TRIALS, NOT_JUDGED = (
    "reproduced within tolerance",
    "not reproduced",
    "CI too wide to tell",
    "reference only",
    "no trials",
    "not judged",
)
ANY_DATASET = "any"  # a paper row's dataset for numbers that do not depend on the data
PAPER_COLUMNS = [
    "label",
    "metric",
    "unit",  # the metric's declared unit ("" when undeclared)
    "where",
    "paper_value",
    "paper_printed",  # the number as the paper prints it ("25.55M"), else ""
    "paper_std",
    "n",  # seeds (1 for a deterministic metric)
    "mean",
    "std",
    "ci_lo",
    "ci_hi",
    "diff",  # mean - paper_value
    "in_ci",
    "dataset",
    "band_lo",  # the values that count as reproduced: [band_lo, band_hi]
    "band_hi",
    "tolerance",  # half the band's width
    "rule",  # the tolerance rule in words
    "verdict",
    "flags",
    "note",
]

# Default tolerance rules per unit: (kind, amount, description). "relative" is of the error rate
# for fractions and percentages (accuracy: 1 - value; error: the value), of the gain for points,
# of the value otherwise.
DEFAULT_RULES: dict[str, tuple[str, float, str]] = {
    "fraction": ("relative", 0.2, "within 20% of the paper's error rate"),
    "percent": ("relative", 0.2, "within 20% of the paper's error rate"),
    "points": ("relative", 0.5, "within 50% of the paper's gain"),
    "count": ("printed", 0.0, "as printed: every count that prints as the paper's number"),
    "seconds": ("relative", 0.2, "within 20% of the paper's value"),
    "MB": ("relative", 0.2, "within 20% of the paper's value"),
    "loss": ("relative", 0.1, "within 10% of the paper's value"),
    "ratio": ("relative", 0.1, "within 10% of the paper's value"),
}
SUFFIXES = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9}
_PRINTED = re.compile(r"^\s*([+-]?\d+(?:\.(\d*))?)\s*([kKMGB]?)\s*%?\s*$")


def parse_printed(text: Any) -> tuple[float, float] | None:
    """A number as printed (``"25.55M"``, ``"0.907"``, ``"377826"``) -> (value, unit of its last
    printed digit), e.g. (25_550_000, 10_000); None if it is not such a string."""
    if not isinstance(text, str):
        return None
    m = _PRINTED.match(text)
    if not m:
        return None
    digits, decimals, suffix = m.group(1), m.group(2) or "", m.group(3)
    scale = SUFFIXES[suffix]
    return float(digits) * scale, 10.0 ** (-len(decimals)) * scale


@dataclass(frozen=True)
class Band:
    """The values that count as reproduced, and the rule in words."""

    lo: float
    hi: float
    rule: str


def _base(kind_of: str, metric: Metric, value: float) -> float:
    """What a relative tolerance is a fraction of (see `DEFAULT_RULES`)."""
    if metric.unit in ("fraction", "percent"):
        top = 1.0 if metric.unit == "fraction" else 100.0
        return top - value if metric.direction == "max" else value
    return abs(value)


def tolerance_band(row: Mapping[str, Any], metric: Metric | None, value: float) -> Band | str:
    """The band of a paper row around `value`, or the reason there is none (a string).

    Rules: ``tolerance: x`` or ``{absolute: x}``: value +/- x; ``{relative: r}``: +/- r times the
    error rate (fractions, percentages), the gain (points) or the value (other units);
    ``{printed: true}``: from half a unit of the last printed digit below to one unit above
    (what prints as the paper's string, rounded or truncated); no tolerance: the unit's default.
    """
    tol = row.get("tolerance")
    printed = parse_printed(row.get("printed")) or parse_printed(row.get("value"))
    if isinstance(tol, Mapping):  # a dumped model carries the rules not given as None
        tol = {k: v for k, v in tol.items() if v is not None and v is not False} or None
    elif tol is not None:
        tol = {"absolute": tol}
    if tol is None:
        if metric is None:
            return "no declared semantics for this metric (direction, unit): no default tolerance"
        kind, amount, text = DEFAULT_RULES[metric.unit]
        if kind == "printed" and printed is None:
            return Band(value - 0.5, value + 0.5, "exact (to the nearest whole number)")
        tol = {kind: amount if kind != "printed" else True}
        default = f"default for {metric.unit}: {text}"
    else:
        default = ""
    (kind, amount), *_ = tol.items()
    if kind == "absolute":
        a = float(amount)
        return Band(value - a, value + a, default or f"± {a:g} (the row's absolute tolerance)")
    if kind == "relative":
        if metric is None:
            return "a relative tolerance needs the metric's declared unit and direction"
        a = float(amount) * _base(kind, metric, value)
        return Band(value - a, value + a, default or f"within {float(amount):.0%} (the row's relative tolerance)")
    if kind == "printed":
        if printed is None:
            return 'printed: true needs the number as printed (value or printed: a string such as "25.55M")'
        _, unit = printed
        return Band(value - unit / 2, value + unit, default or "as printed (rounded or truncated to its last digit)")
    return f"unknown tolerance kind {kind!r}"


def paper_verdict(lo: float, hi: float, band: Band | None, n: int, *, deterministic: bool = False) -> str:
    """The reproduced CI [lo, hi] (a single value for a deterministic metric) against the band:

    - ``reproduced within tolerance``: wholly inside the band;
    - ``not reproduced``: wholly outside it;
    - ``CI too wide to tell``: it overlaps the band's edge, or there is no CI (one seed);
    - ``no trials``: nothing matches the row.
    """
    if n == 0:
        return NO_TRIALS
    if band is None:
        return NOT_JUDGED
    if deterministic:
        return REPRODUCED if band.lo <= lo <= band.hi else NOT_REPRODUCED
    if math.isnan(lo) or math.isnan(hi):
        return TOO_WIDE
    if band.lo <= lo and hi <= band.hi:
        return REPRODUCED
    if hi < band.lo or lo > band.hi:
        return NOT_REPRODUCED
    return TOO_WIDE


def row_values(trials: pd.DataFrame, where: Mapping[str, Any], col: str) -> pd.Series:
    """Per seed, the mean of `col` over the finished trials matching `where` (each configuration's
    trials of a seed averaged first, so a seed counts once)."""
    rows = select(finished(trials), where).dropna(subset=[col])
    if rows.empty:
        return pd.Series(dtype=float)
    if "seed" not in rows.columns:
        return rows[col].astype(float).reset_index(drop=True)
    by = ["config_id"] if "config_id" in rows.columns else []
    units = seed_units(rows, by, [col])
    return units.groupby("seed", sort=True)[col].mean().astype(float)


def paper_vs_reproduced(
    trials: pd.DataFrame,
    results: Sequence[Mapping[str, Any]],
    *,
    data_source: str | None = None,
    semantics: Mapping[str, Metric] | None = None,
    paper_dataset: str | None = None,
    recipe: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
    study_flags: Sequence[str] = (),
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Each number of the spec's ``paper.results`` beside the reproduced mean and CI over seeds,
    with a verdict (see the module docstring); columns `PAPER_COLUMNS`.

    A result ``{label, where, metric, value, printed, std, dataset, tolerance}`` is matched to
    the finished trials whose hyperparameters equal all of ``where``; their ``final_<metric>``
    (or the ``<metric>`` column itself for per-trial quantities such as ``params``) is averaged
    per seed. ``in_ci``: whether the paper's value lies in the reproduced interval (None when
    there is none, or the row is not judged).
    """
    rows = []
    done = finished(trials)
    for raw in results:
        r = dict(raw.model_dump() if hasattr(raw, "model_dump") else raw)
        where = dict(r.get("where") or {})
        metric = str(r.get("metric", ""))
        col = f"final_{metric}" if f"final_{metric}" in trials.columns or metric not in trials.columns else metric
        missing = [k for k in where if k not in trials.columns] + ([col] if col not in trials.columns else [])
        declared = (semantics or {}).get(metric)
        values = row_values(done, where, col) if not missing else pd.Series(dtype=float)
        deterministic = bool(declared and declared.deterministic)
        n = len(values)
        mean = float(values.mean()) if n else math.nan
        std = float(values.std(ddof=1)) if n >= 2 else math.nan
        note = ""
        tied = n >= 2 and not has_spread(values.to_numpy(float), abs(mean))
        if deterministic and n:
            if n >= 2 and not tied:
                note = "declared deterministic, but its value varies across seeds: judged on the mean"
            n, std, lo, hi = 1, math.nan, mean, mean
        elif tied and n >= MIN_TIED_SEEDS:
            deterministic, std, lo, hi = True, 0.0, mean, mean
            note = f"all {n} seeds give the same value: judged on that value"
        elif tied:
            lo = hi = math.nan
            note = f"the {n} seeds tie (no spread to build a CI from): n too small to tell"
        else:
            _, lo, hi = t_interval(mean, std, n, confidence)
            lo, hi = (float(x) for x in clip(lo, hi, declared.bounds if declared else None))
        printed = r.get("printed") or (r["value"] if isinstance(r.get("value"), str) else "")
        parsed = parse_printed(r.get("value"))
        paper = parsed[0] if parsed else (float(r["value"]) if r.get("value") is not None else math.nan)
        paper_std = float(r["std"]) if r.get("std") is not None else math.nan
        dataset = str(r.get("dataset") or paper_dataset or "")
        band = tolerance_band(r, declared, paper) if not math.isnan(paper) else "the row has no value"
        if missing:
            verdict, note = NO_TRIALS, f"no column {', '.join(missing)}"
        elif n == 0:
            verdict, note = NO_TRIALS, "no finished trial matches"
        elif not data_source:
            verdict, note = NOT_JUDGED, "the study records no data source: not judged"
        elif not dataset:
            verdict, note = NOT_JUDGED, "the row does not say which data the paper measured it on (dataset:)"
        elif dataset not in (ANY_DATASET, data_source):
            verdict = REFERENCE
            note = (f"the paper measured this on {dataset}; this study ran on {data_source} (a stand-in): "
                    "the distance is shown for reference")  # fmt: skip
        elif isinstance(band, str):
            verdict, note = NOT_JUDGED, band
        else:
            verdict = paper_verdict(lo, hi, band, n, deterministic=deterministic)
            if verdict == TOO_WIDE and not note:
                note = "one seed: no CI (more seeds would tell)" if n == 1 else "the CI overlaps the band's edge"
        judged = verdict in (REPRODUCED, NOT_REPRODUCED, TOO_WIDE)
        in_ci = None if not judged or math.isnan(lo) or math.isnan(paper) else bool(lo <= paper <= hi)
        b = band if isinstance(band, Band) else None
        rows.append(
            {
                "label": str(r.get("label", "")),
                "metric": metric,
                "unit": declared.unit if declared else "",
                "where": config_label(where, list(where)),
                "paper_value": paper,
                "paper_printed": str(printed or ""),
                "paper_std": paper_std,
                "n": n,
                "mean": mean,
                "std": std,
                "ci_lo": lo,
                "ci_hi": hi,
                "diff": mean - paper,
                "in_ci": in_ci,
                "dataset": dataset,
                "band_lo": b.lo if b else math.nan,
                "band_hi": b.hi if b else math.nan,
                "tolerance": (b.hi - b.lo) / 2 if b else math.nan,
                "rule": b.rule if b else "",
                "verdict": verdict,
                "flags": row_flags(
                    select(trials, where) if not missing else trials.iloc[0:0],
                    recipe=recipe,
                    fixed=fixed,
                    study=study_flags,
                ),  # fmt: skip
                "note": note,
            }
        )
    out = pd.DataFrame(rows, columns=PAPER_COLUMNS)
    return out.astype({"in_ci": object}) if len(out) else out


def max_distance(paper: pd.DataFrame) -> float:
    """The largest |mean - paper| over rows with a mean (NaN if none)."""
    d = np.abs(pd.to_numeric(paper["diff"], errors="coerce").to_numpy(float)) if len(paper) else np.array([])
    d = d[~np.isnan(d)]
    return float(d.max()) if d.size else math.nan
