"""Result tables: pure functions from the trials / epochs tables to summary tables.

Conventions used throughout:

- A *configuration* is a row's hyperparameter values without the seed; its repeats are the
  trials that share them. `with_config_id` numbers configurations (stable: sorted by value).
- Only finished (``TERMINATED``) trials enter means and intervals: a diverged trial's last
  finite metrics and a running trial's latest ones are not results. They are counted instead
  (``n_diverged``, ``n_error``, ``n_running``).
- Intervals are two-sided Student-t intervals of the mean at ``confidence`` (default 95 %):
  mean +/- t(1 - alpha/2, n - 1) * std / sqrt(n), with ``std`` the sample std (ddof=1). They are
  NaN for n < 2.
- Statistic columns are named ``<column>_<stat>``, e.g. ``final_test_acc_mean``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from scipy import stats

from analysis.load import FINISHED, UNFINISHED, StudyResults

CONFIDENCE = 0.95  # two-sided level of every interval
MAX_LEVELS = 12  # a hyperparameter with at most this many values is discrete (profiled, not binned)
PAPER_COLUMNS = [
    "label",
    "metric",
    "where",
    "paper_value",
    "paper_std",
    "n",
    "mean",
    "std",
    "ci_lo",
    "ci_hi",
    "diff",
    "in_ci",
    "dataset",
    "tolerance",
    "verdict",
    "note",
]
# verdicts of a paper number (see `paper_verdict`)
REPRODUCED, NOT_REPRODUCED, TOO_WIDE, REFERENCE, NO_TRIALS = (
    "reproduced within tolerance",
    "not reproduced",
    "CI too wide to tell",
    "reference only",
    "no trials",
)
DEFAULT_TOLERANCE = 0.03  # 3 points, for fraction metrics whose paper row gives no std
ANY_DATASET = "any"  # a paper row's dataset for numbers that do not depend on the data (parameter counts)
COMPARISON_COLUMNS = [
    "factor",
    "context",
    "level_a",
    "level_b",
    "n_a",
    "n_b",
    "mean_a",
    "mean_b",
    "diff",
    "diff_ci_lo",
    "diff_ci_hi",
    "t",
    "df",
    "p_value",
]


# ---------------------------------------------------------------------------------------------
# helpers


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials whose status is ``TERMINATED``."""
    return trials[trials["status"] == FINISHED]


def metric_columns(trials: pd.DataFrame) -> list[str]:
    """Numeric ``final_*`` and ``best_*`` columns."""
    return [c for c in trials.columns if c.startswith(("final_", "best_")) and is_numeric_dtype(trials[c])]


def is_fraction(metric: str) -> bool:
    """Accuracies and IoUs are fractions (0-1), shown as percentages, their intervals kept in [0, 1]."""
    return "acc" in metric or "iou" in metric


def is_percent(metric: str) -> bool:
    """Metrics in percent (0-100), e.g. ``test_err_pct``: errors as the papers give them."""
    return metric.endswith("_pct")


def clip_fraction(lo: Any, hi: Any, column: str, values: Any) -> tuple[Any, Any]:
    """An interval of a fraction `column` clipped to [0, 1] (a percent column to [0, 100]) when its
    `values` lie in that range: a mean of accuracies or errors cannot leave [0, 100%] whatever the
    t-interval says."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    top = 1.0 if is_fraction(column) else 100.0 if is_percent(column) else None
    if top is not None and v.size and v.min() >= 0 and v.max() <= top:
        return np.clip(lo, 0.0, top), np.clip(hi, 0.0, top)
    return lo, hi


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
    """Distinct values in display order: the spec's ``grid``/``choice`` order, then the rest sorted."""
    listed = []
    if isinstance(spec, Mapping):
        listed = list(spec.get("grid") or spec.get("choice") or [])
    present = list(pd.unique(values))
    rank = {format_value(v): i for i, v in enumerate(listed)}
    return sorted(present, key=lambda v: (rank.get(format_value(v), len(rank)), _sort_key(v)))


def _sort_key(value: Any) -> tuple:
    """Numbers before text, missing last, so that mixed columns still sort."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, 0.0, "")
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def order_by_space(frame: pd.DataFrame, columns: Sequence[str], space: Mapping[str, Any]) -> pd.DataFrame:
    """Rows sorted by `columns` in display order (see `levels`), stable otherwise."""
    if frame.empty or not columns:
        return frame
    keys = {}
    for c in columns:
        order = {format_value(v): i for i, v in enumerate(levels(frame[c], space.get(c)))}
        keys[c] = frame[c].map(lambda v, o=order: o[format_value(v)])
    return frame.iloc[np.lexsort([keys[c].to_numpy() for c in reversed(list(columns))])].reset_index(drop=True)


def format_value(value: Any) -> str:
    """A hyperparameter value as text: floats with %g, missing as ``none``."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def config_label(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``"k1=v1, k2=v2"`` for the given keys of a row (empty string for no keys)."""
    return ", ".join(f"{k}={format_value(row[k])}" for k in keys)


def t_interval(
    mean: Any, std: Any, n: Any, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standard error and the Student-t interval (lo, hi) of a mean; NaN where n < 2."""
    mean, std, n = (np.asarray(a, dtype=float) for a in (mean, std, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        sem = np.where(n >= 2, std / np.sqrt(n), np.nan)
        q = stats.t.ppf(0.5 + confidence / 2, np.where(n >= 2, n - 1, np.nan))
    return sem, mean - q * sem, mean + q * sem


def with_config_id(trials: pd.DataFrame, hyperparameters: Sequence[str]) -> pd.DataFrame:
    """A copy of `trials` with ``config_id``: equal for trials that differ only in the seed."""
    out = trials.copy()
    hp = [h for h in hyperparameters if h in trials.columns]
    if hp and len(trials):
        out["config_id"] = trials.groupby(hp, dropna=False, sort=True).ngroup().to_numpy()
    else:
        out["config_id"] = 0
    return out


def _describe(values: pd.DataFrame, by: str | list[str], columns: Sequence[str], confidence: float) -> pd.DataFrame:
    """``<col>_<stat>`` for each column over the groups of `by` (NaN values ignored)."""
    g = values.groupby(by, dropna=False, sort=True)[list(columns)]
    count, mean, std = g.count(), g.mean(), g.std(ddof=1)
    parts = {}
    for c in columns:
        sem, lo, hi = t_interval(mean[c], std[c], count[c], confidence)
        lo, hi = clip_fraction(lo, hi, c, values[c])
        parts.update(
            {
                f"{c}_n": count[c].astype(int),
                f"{c}_mean": mean[c],
                f"{c}_std": std[c],
                f"{c}_sem": sem,
                f"{c}_ci_lo": lo,
                f"{c}_ci_hi": hi,
            }
        )
    return pd.DataFrame(parts, index=count.index)


# ---------------------------------------------------------------------------------------------
# aggregates


def aggregate_repeats(
    trials: pd.DataFrame, hyperparameters: Sequence[str], *, confidence: float = CONFIDENCE
) -> pd.DataFrame:
    """One row per configuration: status counts and n/mean/std/sem/CI of every final_/best_ metric.

    Columns: ``config_id``, the hyperparameters, ``n_trials``, ``n_finished``, ``n_diverged``,
    ``n_error``, ``n_running`` (running, paused or pending), ``params``, then ``<metric>_<stat>``.
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
    done = finished(t)
    desc = _describe(done, "config_id", metrics, confidence).reindex(out.index)
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
    """The `top` configurations of each group ranked by the mean of `metric_col` over repeats.

    `mode` is ``max`` or ``min``; configurations without a finished trial are not ranked. Adds a
    ``rank`` column (1 = best); rows are ordered by group, then rank.
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


def paper_vs_reproduced(
    trials: pd.DataFrame,
    results: Sequence[Mapping[str, Any]],
    *,
    data_source: str | None = None,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Each number of the spec's ``paper.results`` beside the reproduced mean and CI, with a verdict.

    A result ``{label, where, metric, value, std, dataset, tolerance}`` is matched to the finished
    trials whose hyperparameters equal all of ``where``; their ``final_<metric>`` values are
    aggregated (or the ``<metric>`` column itself for per-trial quantities such as ``params``).
    CIs of fraction metrics are clipped to [0, 1]. ``in_ci`` is whether the paper's value lies in
    the reproduced interval (None if no interval, or if the row is a reference). ``verdict``: see
    `paper_verdict`; a row measured on another ``dataset`` than this study's `data_source` is
    ``reference only`` (the note says why); ``dataset: any`` rows (e.g. parameter counts) never are.
    """
    rows = []
    done = finished(trials)
    for r in results:
        where = dict(r.get("where") or {})
        metric = str(r.get("metric", ""))
        col = f"final_{metric}" if f"final_{metric}" in trials.columns or metric not in trials.columns else metric
        missing = [k for k in where if k not in trials.columns] + ([col] if col not in trials.columns else [])
        values = select(done, where)[col].dropna() if not missing else pd.Series(dtype=float)
        n = len(values)
        mean = float(values.mean()) if n else math.nan
        std = float(values.std(ddof=1)) if n >= 2 else math.nan
        _, lo, hi = t_interval(mean, std, n, confidence)
        lo, hi = (float(x) for x in clip_fraction(lo, hi, metric, values))
        paper = float(r["value"]) if r.get("value") is not None else math.nan
        paper_std = float(r["std"]) if r.get("std") is not None else math.nan
        dataset = str(r.get("dataset") or data_source or "")
        reference = bool(data_source) and dataset not in ("", ANY_DATASET, data_source)
        tolerance = paper_tolerance(metric, r.get("tolerance"), paper_std)
        in_ci = None if reference or math.isnan(lo) or math.isnan(paper) else bool(lo <= paper <= hi)
        note = f"no column {', '.join(missing)}" if missing else ("" if n else "no finished trial matches")
        if reference:
            verdict = REFERENCE
            note = f"the paper measured this on {dataset}; this study ran on {data_source}: shown for reference"
        else:
            verdict = paper_verdict(paper, lo, hi, tolerance, n)
        rows.append(
            {
                "label": str(r.get("label", "")),
                "metric": metric,
                "where": config_label(where, list(where)),
                "paper_value": paper,
                "paper_std": paper_std,
                "n": n,
                "mean": mean,
                "std": std,
                "ci_lo": lo,
                "ci_hi": hi,
                "diff": mean - paper,
                "in_ci": in_ci,
                "dataset": dataset,
                "tolerance": tolerance,
                "verdict": verdict,
                "note": note,
            }
        )
    return pd.DataFrame(rows, columns=PAPER_COLUMNS)


def paper_tolerance(metric: str, tolerance: Any = None, paper_std: float = math.nan) -> float:
    """How far from the paper's value a reproduction may be and still count as reproduced: the
    row's ``tolerance``, else the paper's std, else 3 points for fractions (0.03) and percentages
    (3.0), else 0 (exact, e.g. parameter counts)."""
    if tolerance is not None and not pd.isna(tolerance):
        return float(tolerance)
    if not math.isnan(paper_std) and paper_std > 0:
        return float(paper_std)
    if is_percent(metric):
        return DEFAULT_TOLERANCE * 100
    return DEFAULT_TOLERANCE if is_fraction(metric) else 0.0


def paper_verdict(paper: float, lo: float, hi: float, tolerance: float, n: int) -> str:
    """An equivalence reading of the reproduced CI [lo, hi] against the band paper +/- tolerance:

    - ``reproduced within tolerance``: the whole CI lies inside the band;
    - ``not reproduced``: the whole CI lies outside it (on one side);
    - ``CI too wide to tell``: the CI overlaps the band's edge (more seeds would tell), or there
      is no CI (n < 2);
    - ``no trials``: nothing matches the row.
    """
    if n == 0:
        return NO_TRIALS
    if any(math.isnan(x) for x in (paper, lo, hi, tolerance)):
        return TOO_WIDE
    if paper - tolerance <= lo and hi <= paper + tolerance:
        return REPRODUCED
    if hi < paper - tolerance or lo > paper + tolerance:
        return NOT_REPRODUCED
    return TOO_WIDE


def welch(
    mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int, confidence: float = CONFIDENCE
) -> dict[str, float]:
    """Welch's t-test of mean_b - mean_a from summary statistics (sample variances, ddof=1).

    Returns diff, its CI with the Welch-Satterthwaite degrees of freedom, t, df and the
    two-sided p-value (as ``scipy.stats.ttest_ind(b, a, equal_var=False)``).
    """
    va, vb = var_a / n_a, var_b / n_b
    diff = float(mean_b - mean_a)
    se = math.sqrt(va + vb)
    if not se > 0:
        return {"diff": diff, "diff_ci_lo": math.nan, "diff_ci_hi": math.nan, "t": math.nan, "df": math.nan,
                "p_value": math.nan}  # fmt: skip
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    t = diff / se
    q = float(stats.t.ppf(0.5 + confidence / 2, df))
    p = float(2 * stats.t.sf(abs(t), df))
    return {"diff": diff, "diff_ci_lo": diff - q * se, "diff_ci_hi": diff + q * se, "t": t, "df": df, "p_value": p}


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
    2 finished repeats each: the difference mean_b - mean_a of `metric_col`, its CI and Welch's
    t-test p-value.
    """
    done = finished(trials).dropna(subset=[metric_col])
    hold = [h for h in hold if h in done.columns and h != factor]
    g = done.groupby([*hold, factor], dropna=False, sort=True)[metric_col]
    st = pd.DataFrame({"n": g.count(), "mean": g.mean(), "var": g.var(ddof=1)}).reset_index()
    st = st[st["n"] >= 2]
    if order is not None:
        rank = {format_value(v): i for i, v in enumerate(order)}
        st = st.assign(_rank=st[factor].map(lambda v: rank.get(format_value(v), len(rank))))
        st = st.sort_values([*hold, "_rank"], kind="stable") if hold else st.sort_values("_rank", kind="stable")
    if hold:
        st = st[st.groupby(hold, dropna=False)["n"].transform("size") >= 2]
    rows = []
    contexts = st.groupby(hold, dropna=False, sort=False) if hold else [((), st)]
    for _, part in contexts:
        recs = part.to_dict("records")
        context = config_label(recs[0], hold) or "all" if recs else "all"
        for a, b in itertools.combinations(recs, 2):
            rows.append(
                {
                    "factor": factor,
                    "context": context,
                    "level_a": format_value(a[factor]),
                    "level_b": format_value(b[factor]),
                    "n_a": int(a["n"]),
                    "n_b": int(b["n"]),
                    "mean_a": float(a["mean"]),
                    "mean_b": float(b["mean"]),
                    **welch(a["mean"], a["var"], a["n"], b["mean"], b["var"], b["n"], confidence),
                }
            )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def varying(trials: pd.DataFrame, hyperparameters: Sequence[str]) -> list[str]:
    """The hyperparameters that take more than one value in `trials`."""
    return [h for h in hyperparameters if h in trials.columns and trials[h].nunique(dropna=False) > 1]


def comparison_hold(trials: pd.DataFrame, hyperparameters: Sequence[str], factor: str) -> list[str]:
    """What a report holds equal when comparing levels of `factor`: the other hyperparameters
    that vary, except continuous ones (random search), which are averaged over."""
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


# ---------------------------------------------------------------------------------------------
# parameter importance


def _distribution(name: str, values: pd.Series, spec: Mapping[str, Any] | None) -> Any:
    """The Optuna distribution of a searched hyperparameter: from its spec entry and the data."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind = next(iter(spec), None) if isinstance(spec, Mapping) else None
    present = values.dropna()
    if kind in ("uniform", "loguniform") and not is_categorical(values):
        lo, hi = (float(v) for v in spec[kind])
        return FloatDistribution(min(lo, present.min()), max(hi, present.max()), log=kind == "loguniform")
    if kind == "randint" and not is_categorical(values):
        lo, hi = (int(v) for v in spec[kind])
        return IntDistribution(int(min(lo, present.min())), int(max(hi, present.max())))
    if kind is None and is_continuous(values):
        return FloatDistribution(float(present.min()), float(present.max()))
    return CategoricalDistribution(sorted({_plain(v) for v in values}, key=lambda v: (v is None, str(type(v)), v)))


def _plain(value: Any) -> Any:
    """A Python scalar Optuna accepts as a categorical choice (NaN becomes None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def param_importance(
    trials: pd.DataFrame,
    searched: Sequence[str],
    *,
    metric_col: str,
    mode: str,
    space: Mapping[str, Any] | None = None,
    max_trials: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Importance of each searched hyperparameter for `metric_col` (Optuna's PED-ANOVA).

    The finished trials are fed to an in-memory Optuna study (at most `max_trials` of them, a
    seeded random sample) and `optuna.importance.get_param_importances` with
    `PedAnovaImportanceEvaluator` rates how much each hyperparameter's distribution among the top
    10 % of trials differs from all trials; importances sum to 1. Hyperparameters with a single
    value are left out. Columns: ``param``, ``importance``, ``n_trials``, ``evaluator``.
    """
    import optuna

    columns = ["param", "importance", "n_trials", "evaluator"]
    done = finished(trials).dropna(subset=[metric_col])
    done = done[np.isfinite(done[metric_col].to_numpy(dtype=float))]
    params = [p for p in searched if p in done.columns and done[p].nunique(dropna=False) > 1]
    if len(done) < 4 or not params:
        return pd.DataFrame(columns=columns)
    if len(done) > max_trials:
        done = done.sample(n=max_trials, random_state=seed)
    space = space or {}
    dists = {p: _distribution(p, done[p], space.get(p)) for p in params}
    numeric = {p for p, d in dists.items() if not isinstance(d, optuna.distributions.CategoricalDistribution)}
    frozen = []
    for values, target in zip(done[params].itertuples(index=False, name=None), done[metric_col]):
        config = {}
        for p, v in zip(params, map(_plain, values)):
            if p in numeric:
                if v is None:  # not sampled in this trial (a conditional hyperparameter)
                    continue
                v = int(v) if isinstance(dists[p], optuna.distributions.IntDistribution) else float(v)
            config[p] = v
        distributions = {p: dists[p] for p in config}
        frozen.append(optuna.trial.create_trial(params=config, distributions=distributions, value=float(target)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    study.add_trials(frozen)
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator, params=params)
    rows = [
        {"param": p, "importance": float(v), "n_trials": len(done), "evaluator": "Optuna PED-ANOVA"}
        for p, v in importances.items()
    ]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------------------------
# plot data


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


def marginal(
    trials: pd.DataFrame, keys: Sequence[str], *, metric_col: str, confidence: float = CONFIDENCE
) -> pd.DataFrame:
    """Mean and CI of `metric_col` over all finished trials sharing the `keys` values.

    Used instead of `profile` when configurations are not repeated (random search), where the
    best single trial per cell would only pick noise. Same columns as `profile`.
    """
    keys = list(keys)
    done = finished(trials).dropna(subset=[metric_col])
    cols = [*keys, "n", "mean", "ci_lo", "ci_hi", "config"]
    if done.empty:
        return pd.DataFrame(columns=cols)
    d = _describe(done, keys, [metric_col], confidence).reset_index()
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
    d = _describe(frame, [*keys, "_bin"], ["_m"], confidence)
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
) -> pd.DataFrame:
    """Per-epoch mean and CI over the finished repeats of each configuration in `configs`.

    `trials` and `configs` carry ``config_id`` (see `with_config_id`); `configs` also a ``label``.
    At most `max_points` epochs per curve are kept (evenly spaced, the last one always). Rows
    follow the order of `configs`.
    Long format: ``config_id``, ``label``, ``metric``, ``epoch``, ``n``, ``mean``, ``ci_lo``, ``ci_hi``.
    """
    cols = ["config_id", "label", "metric", "epoch", "n", "mean", "ci_lo", "ci_hi"]
    done = finished(trials)
    done = done[done["config_id"].isin(configs["config_id"])][["trial_id", "config_id"]]
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
        d = _describe(e, ["config_id", "epoch"], [m], confidence).reset_index()
        d = d.rename(columns={f"{m}_n": "n", f"{m}_mean": "mean", f"{m}_ci_lo": "ci_lo", f"{m}_ci_hi": "ci_hi"})
        parts.append(d.assign(metric=m))
    out = pd.concat(parts, ignore_index=True).merge(configs[["config_id", "label"]], on="config_id")
    position = {cid: i for i, cid in enumerate(configs["config_id"])}  # keep the order of `configs`
    out = out.assign(_pos=out["config_id"].map(position)).sort_values(["_pos", "metric", "epoch"], kind="stable")
    return out[cols].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# everything a report needs


def study_tables(results: StudyResults, *, confidence: float = CONFIDENCE) -> dict[str, pd.DataFrame]:
    """All tables of a study: trials (with ``config_id``), summary, best, comparisons, paper,
    claims (`analysis.claims.claim_tests`), importance, curves. See each function for its columns."""
    meta = results.meta
    from analysis.claims import claim_tests

    trials = with_config_id(results.trials, meta.hyperparameters)
    summary = aggregate_repeats(trials, meta.hyperparameters, confidence=confidence)
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
    paper_results = (meta.paper or {}).get("results") or []
    curve_metrics = [m for m in dict.fromkeys([meta.metric, "train_loss"]) if m]
    return {
        "trials": trials,
        "summary": summary,
        "best": best,
        "comparisons": pd.concat(comparisons, ignore_index=True)
        if comparisons
        else pd.DataFrame(columns=COMPARISON_COLUMNS),
        "paper": paper_vs_reproduced(
            trials, paper_results, data_source=meta.data_source or None, confidence=confidence
        ),
        "claims": claim_tests(trials, (meta.paper or {}).get("claims") or [], confidence=confidence),
        "importance": param_importance(trials, meta.searched, metric_col=metric_col, mode=meta.mode, space=meta.space)
        if has_metric
        else pd.DataFrame(columns=["param", "importance", "n_trials", "evaluator"]),
        "curves": learning_curves(results.epochs, trials, best, curve_metrics, confidence=confidence),
    }


def _best_label(row: Mapping[str, Any], groups: Sequence[str], searched: Sequence[str]) -> str:
    """Legend text for a best configuration: its group, then its other searched values."""
    keys = list(groups) + [s for s in searched if s not in groups]
    return config_label(row, keys) or f"config {row['config_id']}"
