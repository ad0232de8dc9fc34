"""What a verdict stands on, besides its numbers: the flags shown beside every verdict.

- Left out: k of n matching trials diverged, failed, were stopped or lost their results, and
  are not in the mean (never silently dropped); trials still running are counted too.
- Overrides: the run's ``--set`` changes against the spec file (metadata ``overrides``).
- Smoke: a ``--smoke`` run (metadata ``smoke: true``): tiny data, one epoch; a banner on the
  report, and left out of the scorecard unless asked for.
- Recipe: the paper block's ``recipe:`` (e.g. ``{epochs: 25}``) against what the study ran
  (the trials' column of that key, else the spec's ``fixed:``), e.g. "2 epochs where the paper
  trained 25".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from analysis.aggregate import plain
from analysis.format import format_value
from core.status import FINISHED, LEFT_OUT, UNFINISHED


def left_out_flag(rows: pd.DataFrame) -> str:
    """``"2 of 9 trials diverged or failed, left out"`` (and still running), or ``""``."""
    if rows.empty or "status" not in rows.columns:
        return ""
    status = rows["status"].astype(str)
    n, bad, running = len(rows), int(status.isin(LEFT_OUT).sum()), int(status.isin(UNFINISHED).sum())
    parts = []
    if bad:
        kinds = sorted({s.lower() for s in status[status.isin(LEFT_OUT)]})
        parts.append(f"{bad} of {n} trials {'/'.join(kinds)}, left out")
    if running:
        parts.append(f"{running} of {n} trials still running, not counted")
    return "; ".join(parts)


def recipe_differences(
    recipe: Mapping[str, Any] | None, rows: pd.DataFrame, fixed: Mapping[str, Any] | None
) -> list[str]:
    """Each recipe key whose value in the study differs from the paper's, as a short phrase."""
    out = []
    for key, paper in (recipe or {}).items():
        if key in rows.columns and len(rows):
            ours = sorted({format_value(plain(v)) for v in rows[key]})
        elif fixed and key in fixed:
            ours = [format_value(fixed[key])]
        else:
            continue
        if ours != [format_value(paper)]:
            out.append(f"{' / '.join(ours)} {key} where the paper used {format_value(paper)}")
    return out


def fewer_epochs(recipe: Mapping[str, Any] | None, trials: pd.DataFrame, fixed: Mapping[str, Any] | None) -> bool:
    """Whether the study trained fewer epochs than the paper's recipe says."""
    paper = (recipe or {}).get("epochs")
    if paper is None:
        return False
    if "epochs" in trials.columns and len(trials):
        ours = pd.to_numeric(trials["epochs"], errors="coerce").max()
    elif fixed and "epochs" in fixed:
        ours = fixed["epochs"]
    else:
        return False
    try:
        return float(ours) < float(paper)
    except (TypeError, ValueError):
        return False


def study_flags(overrides: Sequence[str], smoke: bool) -> list[str]:
    """Flags that hold for every verdict of a study: a smoke run, the run's overrides."""
    out = []
    if smoke:
        out.append("smoke run (tiny data, one epoch)")
    if overrides:
        out.append("run with --set " + ", ".join(overrides))
    return out


def row_flags(
    rows: pd.DataFrame,
    *,
    recipe: Mapping[str, Any] | None,
    fixed: Mapping[str, Any] | None,
    study: Sequence[str] = (),
) -> str:
    """All flags of one verdict: left-out trials among `rows` (every status), recipe differences
    among its finished rows, then the study-wide `study` flags."""
    done = rows[rows["status"] == FINISHED] if "status" in rows.columns else rows
    parts = [left_out_flag(rows)] + [f"recipe: {d}" for d in recipe_differences(recipe, done, fixed)] + list(study)
    return "; ".join(p for p in parts if p)
