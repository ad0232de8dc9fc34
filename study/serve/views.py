"""What the explorer's pages show, as JSON-ready dicts, built by the functions `study report`,
`study compare` and `study scorecard` use (`analysis.tables.study_tables`,
`analysis.plots.study_figures`, `analysis.html.study_report_html`, `analysis.html.comparison_report_html`,
`analysis.scorecard`): one code path. The report HTML is cut into its header and sections (the
page replaces each in place); figures travel as Plotly JSON, drawn in the page with
``Plotly.react``. Every string from a study is escaped by those functions; nothing here adds
unescaped text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import pandas as pd

from analysis.html import SECTIONS

FIGURE_SECTIONS = ("effects", "heatmaps", "curves", "parallel", "importance")
TABLES = ("trials", "epochs", "summary", "best", "comparisons", "paper", "claims", "importance", "curves")
_SECTION = re.compile(r'<section id="(?P<id>[\w-]+)"><h2>(?P<title>.*?)</h2>(?P<body>.*?)</section>', re.S)
_SCRIPT = re.compile(r"<script\b.*?</script>", re.S | re.I)
_HEADER = re.compile(r"<header>(?P<body>.*?)</header>", re.S)


def study_url(name: str) -> str:
    return "/study/" + quote(name, safe="")


def body_of(page: str) -> str:
    """The ``<body>`` of a page the analysis wrote, without its scripts (the explorer's strict
    Content-Security-Policy runs no inline script; figures are drawn by the explorer's own JS)."""
    start, end = page.find("<body>"), page.rfind("</body>")
    body = page[start + len("<body>") : end] if start >= 0 and end > start else page
    return _SCRIPT.sub("", body)


def figure_json(item: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A `FigureItem` as {section, key, caption, figure: {data, layout}} (layout keeps zoom across
    updates: ``uirevision`` is the figure's key)."""
    fig = item.figure.to_plotly_json()
    fig["layout"]["uirevision"] = item.key
    return {"section": item.section, "key": item.key, "caption": item.caption, "figure": fig, **(extra or {})}


def _figure_targets(results: Any, tables: Mapping[str, pd.DataFrame], figures: Sequence[Any]) -> dict[str, dict]:
    """Per figure key, which hyperparameters a click or a brush on it selects."""
    from analysis.plots import heatmap_axes

    meta = results.meta
    trials = tables["trials"]
    out: dict[str, dict[str, Any]] = {f"effect-{x}": {"x": x} for x in meta.searched}
    if any(f.section == "heatmaps" for f in figures):
        panel, pairs = heatmap_axes(results, trials)
        for x, y in pairs:
            out[f"heatmap-{x}-{y}"] = {"x": x, "y": y, "panel": panel}
    out["parallel"] = {"dims": [d for d in meta.searched if d in trials.columns] + [meta.metric_col]}
    return out


def study_report(results: Any, name: str) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """The study page's report part and the tables it was built from."""
    from analysis.html import study_report_html
    from analysis.report import study_report_parts

    tables, figures, shown = study_report_parts(results)
    meta = results.meta
    page = study_report_html(
        meta, tables, [], report_comparisons=shown, epochs_rows=len(results.epochs), scorecard="/scorecard"
    )
    body = body_of(page)
    header = _HEADER.search(body)
    sections = {m["id"]: {"title": m["title"], "html": m["body"]} for m in _SECTION.finditer(body)}
    targets = _figure_targets(results, tables, figures)
    payload = {
        "name": name,
        "header": header["body"] if header else "",
        "order": [s for s, _ in SECTIONS],
        "sections": sections,
        "figure_sections": list(FIGURE_SECTIONS),
        "figures": [figure_json(f, {"targets": targets.get(f.key, {})}) for f in figures],
        "searched": [s for s in meta.searched if s in tables["trials"].columns],
        "metric": meta.metric,
        "metric_col": meta.metric_col,
        "mode": meta.mode,
    }
    return payload, tables


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts (NaN and infinities as null, numpy scalars as Python ones)."""
    return json.loads(frame.to_json(orient="records", double_precision=10, default_handler=str)) if len(frame) else []


def compare_page(loaded: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The comparison of several studies (`study compare`): its HTML and its figures."""
    from analysis.html import comparison_report_html
    from analysis.plots import FigureItem, best_comparison_figure
    from analysis.tables import study_tables

    studies = [(name, r.meta, study_tables(r)) for name, r in loaded]
    by_metric: dict[str, dict[str, pd.DataFrame]] = {}
    for name, meta, tables in studies:
        by_metric.setdefault(meta.metric_col, {})[name] = tables["best"]
    figures = [
        FigureItem("best", f"best-{col}", best_comparison_figure(best, metric_col=col)) for col, best in by_metric.items()
    ]
    return {
        "names": [n for n, _ in loaded],
        "html": body_of(comparison_report_html(studies, [])),
        "figures": [figure_json(f) for f in figures],
    }


def scorecard_page(loaded: Sequence[tuple[str, Any]], skipped: Sequence[str], storage: str) -> tuple[dict, pd.DataFrame]:
    """The scorecard over the storage's studies (`study scorecard`): its HTML and its table."""
    from analysis.scorecard import scorecard_html, scorecard_table, study_scorecard

    parts = [study_scorecard(name, r, f"study/{name}") for name, r in loaded]  # relative to /scorecard
    table = scorecard_table(parts)
    return {"html": body_of(scorecard_html(table, storage=storage, skipped=skipped))}, table


def trial_page(live: Any, snapshot: Any, trial_id: str, checkpoints: list[dict]) -> dict[str, Any] | None:
    """One trial: its row of the trials table, config, per-epoch rows, error text, checkpoints."""
    if trial_id not in {r["trial_id"] for r in snapshot.rows}:
        return None
    row = json.loads(live.row_json(trial_id, ()))
    summary = live.summary(trial_id)
    epochs: dict[str, Any] = {"epoch": list(summary.epochs) if summary else []}
    if summary:
        epochs["time_total_s"] = _floats(summary.times)
        epochs |= {m: _floats(v) for m, v in summary.metrics.items()}
    config = live.config(trial_id)
    return {"trial": row, "config": _plain(config), "epochs": epochs, "checkpoints": checkpoints}


def _floats(values: Any) -> list[float | None]:
    return [float(v) if math.isfinite(float(v)) else None for v in values]


def _plain(value: Any) -> Any:
    """A config as JSON (what JSON cannot hold becomes its text)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
