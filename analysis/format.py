"""Text of values: hyperparameter values, metric values by their declared unit, p-values, durations.

Nothing here guesses from a metric's name: a metric value is formatted by its unit (a
`core.metrics.Metric` unit string, or None when the study declares no semantics for it, which
is shown raw). Every string from a study that reaches a page goes through `esc`: HTML-escaped,
control characters removed.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.errors import printable


def missing(value: Any) -> bool:
    """True for None, NaN and pandas' missing values."""
    if value is None or value is pd.NA:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def format_value(value: Any) -> str:
    """A hyperparameter value as text: floats with %g, missing as ``none``."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def sort_key(value: Any) -> tuple:
    """Numbers before text, missing last, so that mixed columns still sort."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, 0.0, "")
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def config_label(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``"k1=v1, k2=v2"`` for the given keys of a row (empty string for no keys)."""
    return ", ".join(f"{k}={format_value(row[k])}" for k in keys)


def esc(value: Any) -> str:
    """HTML-escaped text of any value, control characters removed (the only way study text enters a page)."""
    return html.escape(printable(value if isinstance(value, str) else format_value(value)))


def _raw(v: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if abs(v) >= 1e4 and v == round(v):
        return f"{v:{sign},.0f}"
    return f"{v:{sign}.4g}"


def fmt_metric(value: Any, unit: str | None) -> str:
    """A metric value by its unit: fractions as percentages (2 decimals), percent with a % sign,
    counts >= 10,000 with thousands separators, anything else (and undeclared metrics) raw."""
    if missing(value):
        return "—"
    v = float(value)
    if unit == "fraction":
        return f"{100 * v:.2f}%"
    if unit == "percent":
        return f"{v:.2f}%"
    return _raw(v)


def fmt_diff(value: Any, unit: str | None) -> str:
    """A difference of metric values: percentage points for fractions and percentages."""
    if missing(value):
        return "—"
    v = float(value)
    if unit == "fraction":
        return f"{100 * v:+.2f} pp"
    if unit == "percent":
        return f"{v:+.2f} pp"
    return _raw(v, signed=True)


def fmt_ci(lo: Any, hi: Any, unit: str | None, *, diff: bool = False) -> str:
    """``[lo, hi]`` (of values, or of differences with `diff`), a dash when there is no interval."""
    if missing(lo) or missing(hi):
        return "—"
    fmt = fmt_diff if diff else fmt_metric
    return f"[{fmt(lo, unit)}, {fmt(hi, unit)}]"


def fmt_p(p: Any) -> str:
    """A p-value with 2 significant digits (``< 1e-4`` below that)."""
    if missing(p):
        return "—"
    return "< 1e-4" if p < 1e-4 else f"{p:.2g}"


def fmt_duration(seconds: Any) -> str:
    """``3 h 05 min``, ``4 min 10 s`` or ``12.3 s``."""
    if missing(seconds):
        return "—"
    s = float(seconds)
    if s >= 3600:
        return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
    if s >= 60:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{s:.1f} s"
