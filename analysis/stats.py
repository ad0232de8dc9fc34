"""The statistics every verdict rests on, in one place (pure functions of arrays, no tables).

- Intervals of a mean: two-sided Student-t, mean +/- t(1 - alpha/2, n - 1) * s / sqrt(n) (NaN for
  n < 2), clipped to the unit's bounds only (`core.metrics.Metric.bounds`).
- One two-sample test: Welch's t-test, ``scipy.stats.ttest_ind(a, b, equal_var=False)``, its CI
  of mean(a) - mean(b) with the Welch-Satterthwaite degrees of freedom; the effect size is
  Hedges' g (Cohen's d with the exact small-sample correction) with a 95 % CI from inverting the
  noncentral t distribution (exact under normality).
- Zero spread, one rule whatever the rounding: a group's spread counts as zero when its sample
  std is at most `REL_SPREAD` times the larger magnitude of the two means (so [0.9] x 3 is zero
  spread whether its std comes out as 0 or 1e-17). Such a group's values are taken as exactly
  equal. When both groups have zero spread the difference is deterministic: there is no p-value
  and no effect size, and the difference is judged by its sign (`DETERMINISTIC`).
- Multiplicity: Holm's step-down over the tests of a study; each test's CI is drawn at its
  Holm-consistent level (`holm_levels`) so that the CI excludes 0 exactly when the Holm-adjusted
  p-value is below alpha. Benjamini-Hochberg (`bh`) over a whole scorecard page.
- Power: seeds per group a two-sided two-sample t-test needs to detect a difference at 80 % power.
- Paired t-test (``scipy.stats.ttest_rel``) where seeds are matched; TOST for equivalence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import optimize, special, stats

CONFIDENCE = 0.95  # two-sided level of every interval
ALPHA = 0.05  # family-wise error rate of a study's claims (Holm)
POWER = 0.80  # target power of the "seeds that would tell" estimate
REL_SPREAD = 1e-9  # a std below this fraction of the means' magnitude is zero spread
MIN_TIED_SEEDS = 3  # seeds that all give one value: deterministic from 3 on, "n too small" below
MAX_SEEDS = 100_000  # the power search stops here
DETERMINISTIC = "deterministic"  # spread label: both groups without spread


def t_interval(
    mean: Any, std: Any, n: Any, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standard error and the Student-t interval (lo, hi) of a mean; NaN where n < 2."""
    mean, std, n = (np.asarray(a, dtype=float) for a in (mean, std, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        sem = np.where(n >= 2, std / np.sqrt(n), np.nan)
        q = stats.t.ppf(0.5 + confidence / 2, np.where(n >= 2, n - 1, np.nan))
    return sem, mean - q * sem, mean + q * sem


def clip(lo: Any, hi: Any, bounds: tuple[float | None, float | None] | None) -> tuple[Any, Any]:
    """An interval clipped to a unit's `bounds` (None: not clipped on that side, or at all)."""
    if bounds is None:
        return lo, hi
    low, high = bounds
    lo = np.asarray(lo, dtype=float) if np.ndim(lo) else float(lo)
    hi = np.asarray(hi, dtype=float) if np.ndim(hi) else float(hi)
    if low is not None:
        lo, hi = np.maximum(lo, low), np.maximum(hi, low)
    if high is not None:
        lo, hi = np.minimum(lo, high), np.minimum(hi, high)
    return lo, hi


def has_spread(values: np.ndarray, scale: float) -> bool:
    """Whether `values` (n >= 2) spread by more than `REL_SPREAD` of `scale` (see the module docstring)."""
    if len(values) < 2:
        return False
    return float(np.std(values, ddof=1)) > REL_SPREAD * max(scale, 1e-300)


def _flatten(values: np.ndarray, scale: float) -> np.ndarray:
    """`values` with zero spread (by the relative rule) replaced by copies of their mean."""
    if len(values) >= 2 and not has_spread(values, scale):
        return np.full(len(values), float(values.mean()))
    return values


EMPTY_TEST = ("mean_a", "mean_b", "diff", "ci_lo", "ci_hi", "t", "df", "p_value", "effect_size", "g_lo", "g_hi")


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Welch's t-test of mean(a) - mean(b) (``scipy.stats.ttest_ind(a, b, equal_var=False)``).

    Returns mean_a, mean_b, diff, ci_lo, ci_hi (at `confidence`), t, df, two-sided p_value,
    effect_size (Hedges' g), g_lo, g_hi (its 95 % CI) and ``spread``: ``ok``, ``too few`` (a
    group with fewer than 2 values) or `DETERMINISTIC` (no spread in either group: no test).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out: dict[str, Any] = dict.fromkeys(EMPTY_TEST, math.nan)
    out["mean_a"] = float(a.mean()) if len(a) else math.nan
    out["mean_b"] = float(b.mean()) if len(b) else math.nan
    out["diff"] = out["mean_a"] - out["mean_b"]
    if len(a) < 2 or len(b) < 2:
        out["spread"] = "too few"
        return out
    scale = max(abs(out["mean_a"]), abs(out["mean_b"]))
    a, b = _flatten(a, scale), _flatten(b, scale)
    if not has_spread(a, scale) and not has_spread(b, scale):
        out["spread"] = DETERMINISTIC
        return out
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence)
    g, g_lo, g_hi = hedges_g(a, b)
    out.update(ci_lo=float(ci.low), ci_hi=float(ci.high), t=float(res.statistic), df=float(res.df),
               p_value=float(res.pvalue), effect_size=g, g_lo=g_lo, g_hi=g_hi, spread="ok")  # fmt: skip
    return out


def welch_ci(a: Sequence[float], b: Sequence[float], confidence: float) -> tuple[float, float]:
    """Welch's CI of mean(a) - mean(b) at `confidence` (NaN when `welch` has no test)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    scale = max(abs(float(a.mean())), abs(float(b.mean())))
    a, b = _flatten(a, scale), _flatten(b, scale)
    if not has_spread(a, scale) and not has_spread(b, scale):
        return math.nan, math.nan
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    return float(ci.low), float(ci.high)


def hedges_g(a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Hedges' g of mean(a) - mean(b) over the pooled std, and its CI.

    g = J * d with d = diff / s_pooled and J = Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2)), m = n_a +
    n_b - 2. The CI inverts the noncentral t: the noncentrality parameters for which the observed
    t = d * sqrt(n_a n_b / (n_a + n_b)) is the 97.5 % and 2.5 % point, scaled back and times J.
    """
    na, nb = len(a), len(b)
    m = na + nb - 2
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / m) if m > 0 else 0.0
    if not pooled > 0:
        return math.nan, math.nan, math.nan
    d = (float(a.mean()) - float(b.mean())) / pooled
    j = math.exp(special.gammaln(m / 2) - special.gammaln((m - 1) / 2)) / math.sqrt(m / 2) if m > 1 else 1.0
    scale = math.sqrt(na * nb / (na + nb))
    t_obs = d * scale
    tail = (1 - confidence) / 2

    def ncp(target: float) -> float:
        f = lambda x: stats.nct.cdf(t_obs, m, x) - target  # noqa: E731
        lo, hi = t_obs - 10 - 2 * abs(t_obs), t_obs + 10 + 2 * abs(t_obs)
        try:
            return float(optimize.brentq(f, lo, hi, xtol=1e-10))
        except ValueError:
            return math.nan

    lo, hi = ncp(1 - tail) / scale, ncp(tail) / scale
    return j * d, j * lo, j * hi


def cohen_d(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's d: mean(a) - mean(b) over the pooled sample std."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    m = len(a) + len(b) - 2
    pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / m)
    return (float(a.mean()) - float(b.mean())) / pooled


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


def holm_levels(p_values: Sequence[float], p_holm: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """Per test, the two-sided level gamma at which its CI is drawn so that CI and Holm verdict agree.

    gamma = alpha * p / p_holm: the CI at confidence 1 - gamma excludes 0 exactly when
    p < gamma, i.e. when p_holm < alpha. It lies between alpha / m (Bonferroni) and alpha. NaN
    where there is no test.
    """
    p, ph = np.asarray(p_values, dtype=float), np.asarray(p_holm, dtype=float)
    m = int(np.sum(~np.isnan(p)))
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = np.where(ph > 0, alpha * p / ph, alpha / max(m, 1))
    return np.where(np.isnan(p), np.nan, np.clip(gamma, alpha / max(m, 1), alpha))


def bh(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control``); NaN kept."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = ~np.isnan(p)
    if valid.any():
        out[valid] = stats.false_discovery_control(p[valid], method="bh")
    return out


def power(n: int, effect: float, alpha: float) -> float:
    """Power of a two-sided two-sample t-test with `n` per group at standardized `effect`."""
    df = 2 * n - 2
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(effect) * math.sqrt(n / 2)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_needed(a: Sequence[float], b: Sequence[float], alpha: float, target: float = POWER) -> int | None:
    """Seeds per group at which a two-sided two-sample t-test at level `alpha` detects the observed
    difference of `a` and `b` (observed Cohen's d taken as the truth) with power `target`; None
    when there is no spread or no difference, or beyond `MAX_SEEDS`."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        d = cohen_d(a, b)
    if not math.isfinite(d) or d == 0:
        return None
    lo, hi = 2, 2
    while power(hi, d, alpha) < target:
        lo, hi = hi, hi * 2
        if hi > MAX_SEEDS:
            return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if power(mid, d, alpha) < target else (lo, mid)
    return lo


def paired(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float]:
    """Paired t-test of a - b over matched seeds (``scipy.stats.ttest_rel``): diff, CI, p (NaN when
    fewer than 2 pairs or the differences have no spread)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = {"paired_diff": float(np.mean(a - b)) if len(a) else math.nan, "paired_ci_lo": math.nan,
           "paired_ci_hi": math.nan, "paired_p": math.nan}  # fmt: skip
    if len(a) < 2:
        return out
    d = a - b
    if not has_spread(d, max(abs(float(a.mean())), abs(float(b.mean())))):
        return out
    res = stats.ttest_rel(a, b)
    ci = res.confidence_interval(confidence)
    out.update(paired_ci_lo=float(ci.low), paired_ci_hi=float(ci.high), paired_p=float(res.pvalue))
    return out


def tost(a: Sequence[float], b: Sequence[float], margin: float) -> float:
    """TOST p-value that |mean(a) - mean(b)| < `margin` (two one-sided Welch tests; the larger p)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    scale = max(abs(float(a.mean())), abs(float(b.mean())))
    a, b = _flatten(a, scale), _flatten(b, scale)
    if not has_spread(a, scale) and not has_spread(b, scale):
        return math.nan
    lower = stats.ttest_ind(a + margin, b, equal_var=False, alternative="greater").pvalue  # diff > -margin
    upper = stats.ttest_ind(a - margin, b, equal_var=False, alternative="less").pvalue  # diff < margin
    return float(max(lower, upper))
