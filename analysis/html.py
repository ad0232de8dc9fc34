"""The report as one HTML string: pure functions from tables and figures to text (no file I/O).

Every piece of text from the spec or the results goes through `esc` (``html.escape``). Plotly's
JavaScript is inlined once in ``<head>``; figures are ``to_html(include_plotlyjs=False)`` divs,
so the file opens offline with no CDN and no server.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.offline

from analysis.assemble import headline
from analysis.format import config_label, esc, fmt_ci, fmt_diff, fmt_duration, fmt_metric, fmt_p, missing
from analysis.importance import importance_note
from analysis.load import StudyMeta
from analysis.plots import FigureItem
from core.layout import SCORECARD_FILE
from core.status import STATUSES, UNFINISHED

__all__ = ["esc", "fmt_ci", "fmt_diff", "fmt_duration", "fmt_metric", "fmt_p"]  # re-exported: analysis.format

SCORECARD_LINK = f"../../{SCORECARD_FILE}"  # from STORAGE/NAME/results/report.html to STORAGE/scorecard.html
MAX_FAILURE_ROWS = 200  # failed/diverged trials listed in the report (all are in trials.parquet)
MAX_ERROR_CHARS = 600  # characters of an error message shown (the full text is in trials.parquet)
MAX_COMPANIONS = 8  # companion metrics (<metric>_<suffix>) shown beside the metric in the best table
FIGURE_CONFIG = {"displaylogo": False, "responsive": True}

SECTIONS = (  # (id, title) in report order
    ("paper", "Paper vs reproduced"),
    ("claims", "Claims"),
    ("best", "Best configurations"),
    ("comparisons", "Paired comparisons"),
    ("effects", "Effect of each searched hyperparameter"),
    ("heatmaps", "Heat maps of grid axes"),
    ("curves", "Learning curves"),
    ("parallel", "All trials"),
    ("importance", "Hyperparameter importance"),
    ("failures", "Failed and diverged trials"),
)

CSS = """
:root { --fg:#1d232b; --muted:#5b6572; --line:#dfe3e8; --bg:#f7f8fa; --ok:#1f7a3d; --warn:#8a5a00; --bad:#a12622; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0; background: #fff; }
header { background: var(--bg); border-bottom: 1px solid var(--line); padding: 18px 28px 10px; }
main { padding: 4px 28px 40px; max-width: 1500px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; padding-top: 6px;
     border-top: 1px solid var(--line); } h3 { font-size: 15px; margin: 14px 0 6px; }
.desc { color: var(--muted); margin: 0 0 10px; max-width: 900px; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 8px 0; }
.facts dt { color: var(--muted); } .facts dd { margin: 0; }
.banner { padding: 8px 12px; border-radius: 6px; margin: 8px 0; border: 1px solid; }
.banner.ok { color: var(--ok); background: #eef8f1; border-color: #b8e0c4; }
.banner.warn { color: var(--warn); background: #fff7e6; border-color: #f0d39b; }
.banner.bad { color: var(--bad); background: #fdeeee; border-color: #f0b9b7; }
.pill { display: inline-block; padding: 1px 8px; border-radius: 10px; background: #e9edf2; margin-right: 6px; }
.pill.TERMINATED { background: #dff2e5; } .pill.DIVERGED { background: #fde7c7; }
.pill.ERROR { background: #f9d3d1; } .pill.RUNNING, .pill.PAUSED, .pill.PENDING { background: #dde8fb; }
nav { margin-top: 8px; } nav a { margin-right: 12px; color: #2457a6; text-decoration: none; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:hover td { background: #fafbfc; }
.yes { color: var(--ok); font-weight: 600; } .no { color: var(--bad); font-weight: 600; }
.note, .caption { color: var(--muted); font-size: 12.5px; }
code.err { white-space: pre-wrap; word-break: break-word; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 10px 18px; }
@media (max-width: 1100px) { .grid { grid-template-columns: minmax(0, 1fr); } }
.fig { min-width: 0; border: 1px solid var(--line); border-radius: 6px; padding: 4px; }
.side { display: flex; gap: 18px; overflow-x: auto; align-items: flex-start; }
.side > div { flex: 1 0 460px; min-width: 460px; }
.scroll { overflow-x: auto; }
footer { color: var(--muted); font-size: 12px; padding: 0 28px 24px; }
.verdict { display: inline-block; padding: 1px 8px; border-radius: 10px; white-space: nowrap; font-weight: 600; }
.verdict.good { color: var(--ok); background: #dff2e5; } .verdict.bad { color: var(--bad); background: #f9d3d1; }
.verdict.open { color: var(--warn); background: #fff0d6; } .verdict.ref { color: var(--muted); background: #e9edf2; }
.quote { font-style: italic; color: var(--muted); }
.flag { color: var(--warn); font-size: 12px; }
.headline { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; margin: 8px 0; }
.headline ul { margin: 4px 0 2px; padding-left: 20px; }
.scroll { max-width: 100%; }
"""


# Figures are drawn while the page is parsed, before a grid knows all its items: resize once laid out.
RESIZE_JS = (
    "window.addEventListener('load', function () {"
    " document.querySelectorAll('.js-plotly-plot').forEach(function (d) { Plotly.Plots.resize(d); }); });"
)


def unit_of(meta: StudyMeta, metric: str) -> str | None:
    """The declared unit of a study's metric, None when undeclared (shown raw)."""
    m = meta.semantics.get(metric)
    return m.unit if m is not None else None


def _u(r: Mapping[str, Any]) -> str | None:
    """The unit column of a paper / claim row (None when undeclared)."""
    u = r.get("unit")
    return None if missing(u) or not u else str(u)


Column = tuple[str, Callable[[Mapping[str, Any]], str], bool]  # (header, cell text already escaped, numeric)


def table_html(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], *, css: str = "") -> str:
    """A ``<table>``; each column's function returns already-escaped cell HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h, _, _ in columns)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if num else ''}>{fn(r)}</td>" for _, fn, num in columns) + "</tr>"
        for r in rows
    )
    return f'<div class="scroll"><table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def figure_html(item: FigureItem) -> str:
    """A figure as a div (no plotly.js), with its caption."""
    div_id = "fig-" + re.sub(r"[^A-Za-z0-9_-]", "_", item.key)
    div = item.figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=FIGURE_CONFIG)
    caption = f'<div class="caption">{esc(item.caption)}</div>' if item.caption else ""
    return f'<div class="fig">{div}{caption}</div>'


def page(title: str, body: str) -> str:
    """The whole document: plotly.js inlined once, then `body`."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'
        f"</head><body>{body}<script>{RESIZE_JS}</script></body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# sections of a study report


def status_counts(trials: pd.DataFrame) -> dict[str, int]:
    """Trials per status, known statuses first (zeros left out)."""
    counts = trials["status"].astype(str).value_counts()
    known = {s: int(counts.get(s, 0)) for s in STATUSES if counts.get(s, 0)}
    return known | {str(s): int(n) for s, n in counts.items() if s not in STATUSES}


def state_banner(counts: Mapping[str, int], *, link: bool = True) -> str:
    """Says whether the study is complete, still running or partly failed."""
    total = sum(counts.values())
    done = counts.get("TERMINATED", 0)
    running = sum(counts.get(s, 0) for s in UNFINISHED)
    failed = counts.get("ERROR", 0) + counts.get("DIVERGED", 0)
    if total == 0:
        return '<div class="banner warn"><b>No trial has reported yet</b>: this report is empty for now.</div>'
    parts = []
    if running:
        parts.append(
            f'<div class="banner warn"><b>Study still running</b>: {done} of {total} trials finished, '
            f"{_unfinished_text(counts)}. This report covers what is "
            "there (finished trials only); run <code>study report</code> again for the rest.</div>"
        )
    if failed:
        parts.append(
            f'<div class="banner bad"><b>Partly failed</b>: {counts.get("ERROR", 0)} trial(s) errored and '
            f"{counts.get('DIVERGED', 0)} diverged; "
            + ('they are listed under <a href="#failures">Failed and diverged trials</a> and ' if link else "")
            + "left out of means.</div>"
        )
    if counts.get("STOPPED", 0):
        parts.append(
            f'<div class="banner warn"><b>{counts["STOPPED"]} trial(s) stopped early</b> by the scheduler '
            "(ASHA): left out of means, shown in the parallel-coordinates plot.</div>"
        )
    if counts.get("MISSING", 0):
        parts.append(
            f'<div class="banner bad"><b>{counts["MISSING"]} trial(s) with missing data</b>: they finished but '
            "their results are gone (trial directory or result.json deleted); left out of means.</div>"
        )
    if not running and not failed and not counts.get("MISSING", 0):
        parts.insert(0, f'<div class="banner ok"><b>Complete</b>: all {total} trials finished.</div>')
    return "".join(parts)


def _unfinished_text(counts: Mapping[str, int]) -> str:
    """``3 running, 1 pending`` (statuses with zero trials left out, except running)."""
    parts = [f"{counts.get('RUNNING', 0)} running"]
    parts += [f"{counts[s]} {s.lower()}" for s in ("PAUSED", "PENDING") if counts.get(s)]
    return ", ".join(parts)


def header_html(
    meta: StudyMeta, trials: pd.DataFrame, epochs_rows: int, sections: Sequence[str], headline: Sequence[str] = ()
) -> str:
    """Study name and description, the headline, facts, trial counts by status, compute time,
    section links."""
    counts = status_counts(trials)
    wall = pd.to_numeric(trials.get("wall_time_s", pd.Series(dtype=float)), errors="coerce")
    facts = [
        ("Spec file", esc(meta.spec_file) or "—"),
        ("Trainable", esc(meta.trainable) or "—"),
        ("Data source", esc(meta.data_source) or "—"),
        ("Ranked by", f"final {esc(meta.metric)} ({'higher' if meta.mode == 'max' else 'lower'} is better)"),
        (
            "Declared metrics",
            esc(", ".join(f"{k} ({m.unit}, {m.direction})" for k, m in meta.semantics.items()))
            or "none: every metric is shown raw, without verdicts that need a unit",
        ),
        ("Searched", esc(", ".join(meta.searched)) or "—"),
        ("Trials", " ".join(f'<span class="pill {esc(s)}">{esc(s)} {n}</span>' for s, n in counts.items())),
        (
            "Compute time",
            (
                f"{fmt_duration(wall.sum())} in total; per trial mean {fmt_duration(wall.mean())}, "
                f"median {fmt_duration(wall.median())}, max {fmt_duration(wall.max())} "
                f"({epochs_rows} epochs reported)"
            ),
        ),
    ]
    if meta.paper and meta.paper.get("citation"):
        facts.append(("Paper", esc(meta.paper["citation"])))
    if meta.overrides:
        facts.append(("Overrides", esc(", ".join(meta.overrides))))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    titles = dict(SECTIONS)
    nav = "".join(f'<a href="#{s}">{esc(titles[s])}</a>' for s in sections)
    desc = f'<p class="desc">{esc(meta.description)}</p>' if meta.description else ""
    smoke = (
        '<div class="banner warn"><b>Smoke run</b>: tiny data and one epoch, to check that the study runs; '
        "its numbers say nothing about the paper.</div>"
        if meta.smoke
        else ""
    )
    found = "".join(f"<li>{esc(line)}</li>" for line in headline)
    found = f'<div class="headline"><b>What this study found</b><ul>{found}</ul></div>' if found else ""
    return (
        f"<header><h1>Study report: {esc(meta.name)}</h1>{desc}{smoke}{found}{state_banner(counts)}"
        f'<dl class="facts">{dl}</dl><nav>{nav}</nav></header>'
    )


VERDICT_CLASS = {
    "supported": "good",
    "reproduced within tolerance": "good",
    "contradicted": "bad",
    "not reproduced": "bad",
    "inconclusive": "open",
    "CI too wide to tell": "open",
    "reference only": "ref",
    "no trials": "ref",
    "not judged": "ref",
    "mixed": "bad",
}


def verdict_html(verdict: Any, title: str = "") -> str:
    """A verdict as a coloured pill (`title`: hover text)."""
    v = "" if verdict is None or (isinstance(verdict, float) and math.isnan(verdict)) else str(verdict)
    if not v:
        return "—"
    hover = f' title="{esc(title)}"' if title else ""
    return f'<span class="verdict {VERDICT_CLASS.get(v, "open")}"{hover}>{esc(v)}</span>'


def _paper_verdict(r: Mapping[str, Any]) -> str:
    """The verdict of a paper row, with its tolerance rule and flags beside it."""
    verdict = r.get("verdict")
    if missing(verdict):
        return "—"
    rule = "" if missing(r.get("rule")) else str(r.get("rule") or "")
    band = ""
    if rule and not missing(r.get("band_lo")):
        band = f"{fmt_metric(r['band_lo'], _u(r))} to {fmt_metric(r['band_hi'], _u(r))}"
    shown = f'<br><span class="note">{esc(rule)}{": " + band if band else ""}</span>' if rule else ""
    flags = (
        "" if missing(r.get("flags")) or not r.get("flags") else f'<br><span class="flag">⚑ {esc(r["flags"])}</span>'
    )
    hover = "reproduced: the whole 95% CI within the band; not reproduced: wholly outside; else too wide"
    return verdict_html(verdict, hover) + shown + flags


def paper_html(paper: pd.DataFrame, *, compact: bool = False) -> str:
    """Paper vs reproduced table (`compact`: result, paper, mean, CI, in CI only)."""
    if paper.empty:
        return '<p class="note">The spec has no <code>paper:</code> block.</p>'

    def in_ci(r: Mapping[str, Any]) -> str:
        if r["in_ci"] is None or pd.isna(r["in_ci"]):
            return "—"
        return '<span class="yes">yes</span>' if r["in_ci"] else '<span class="no">no</span>'

    def paper_value(r: Mapping[str, Any]) -> str:
        std = "" if missing(r["paper_std"]) else f" ± {fmt_metric(r['paper_std'], _u(r))}"
        printed = r.get("paper_printed")
        shown = esc(printed) if isinstance(printed, str) and printed else fmt_metric(r["paper_value"], _u(r))
        return shown + std

    columns: list[Column] = [
        ("Result", lambda r: esc(r["label"]), False),
        ("Where", lambda r: esc(r["where"]), False),
        ("Metric", lambda r: esc(r["metric"]), False),
        ("Paper", paper_value, True),
        ("Reproduced mean", lambda r: fmt_metric(r["mean"], _u(r)), True),
        ("± std", lambda r: fmt_metric(r["std"], _u(r)), True),
        ("95% CI", lambda r: fmt_ci(r["ci_lo"], r["ci_hi"], _u(r)), True),
        ("n (seeds)", lambda r: esc(r["n"]), True),
        ("Reproduced − paper", lambda r: fmt_diff(r["diff"], _u(r)), True),
        ("Paper in CI", in_ci, False),
        ("Verdict", _paper_verdict, False),
        ("Measured on", lambda r: esc(r.get("dataset", "")) or "—", False),
        ("Note", lambda r: esc(r["note"]), False),
    ]
    if compact:
        columns = [c for c in columns if c[0] in ("Result", "Paper", "Reproduced mean", "95% CI", "Verdict")]
    matched = paper["n"].fillna(0) > 0
    html = table_html(paper[matched].to_dict("records"), columns) if matched.any() else ""
    if not matched.all():  # numbers of configurations this study did not run: out of the way, not hidden
        rest = table_html(paper[~matched].to_dict("records"), columns)
        html += (
            f"<details><summary>{int((~matched).sum())} paper number(s) with no finished trial "
            f"in this study</summary>{rest}</details>"
        )
    if compact:
        return html
    reference = paper[paper["verdict"] == "reference only"] if "verdict" in paper.columns else paper.iloc[0:0]
    if len(reference):
        sources = ", ".join(sorted({str(d) for d in reference["dataset"]}))
        html += (
            f'<p class="note"><b>Reference only</b>: {len(reference)} number(s) were measured on {esc(sources)}, '
            "not on this study's data source (a stand-in), so they get no reproduced verdict (and no paper-in-CI "
            "mark); the distance to the paper is shown. A number only reproduces on the data it was measured on.</p>"
        )
    return html + (
        '<p class="note">Verdict: <i>reproduced within tolerance</i> when the whole 95% CI over seeds lies in '
        "the band the row's tolerance rule gives (shown under each verdict: the row's <code>tolerance</code>, "
        "else the default rule of the metric's unit); <i>not reproduced</i> when it lies wholly outside; "
        "<i>CI too wide to tell</i> otherwise (more seeds would tell). Deterministic metrics (counts) are "
        "judged on their single value. CIs are clipped to the unit's bounds only. ⚑ flags: trials left out, "
        "overrides, recipe differences.</p>"
    )


def claims_html(claims: pd.DataFrame, *, scorecard: str | None = None) -> str:
    """The study's claims: one row per claim (its verdict over levels), levels in a fold below."""
    from analysis.claims import claim_summary

    if claims.empty:
        return (
            '<p class="note">The spec has no <code>paper.claims</code>: add the paper\'s directional claims '
            "(group <code>a</code> vs group <code>b</code> on a metric) to test them here.</p>"
        )
    summary = claim_summary(claims)
    columns = claim_columns()
    html = table_html(summary.to_dict("records"), columns)
    multi = claims[claims.groupby("claim")["claim"].transform("size") > 1]
    if len(multi):
        level_columns = [c for c in columns if c[0] not in ("Claim", "Levels")] + paired_columns()
        level_columns.insert(0, ("Claim / level", lambda r: f"{esc(r['label'])}<br><b>{esc(r['level'])}</b>", False))
        html += (
            f"<details><summary>Every level of the claims tested within levels ({len(multi)} tests)</summary>"
            f"{table_html(multi.to_dict('records'), level_columns)}</details>"
        )
    single = claims[claims.groupby("claim")["claim"].transform("size") == 1]
    if len(single) and single["n_paired"].fillna(0).ge(2).any():
        cols = [("Claim", lambda r: esc(r["label"]), False)] + paired_columns()
        html += (
            "<details><summary>Paired t-tests where the seeds match across groups (not the verdict)</summary>"
            f"{table_html(single.to_dict('records'), cols)}</details>"
        )
    link = f' Every study in this storage: <a href="{esc(scorecard)}">scorecard</a>.' if scorecard else ""
    return html + (
        '<p class="note">Each claim compares group a with group b on the final metric over seeds (per seed, '
        "the mean over the group's configurations): difference a − b with its unadjusted 95% Welch CI and "
        f"its Holm-adjusted CI (at the level shown, so that it excludes 0 exactly when the verdict is "
        f"significant), Hedges' g with its 95% CI, Welch's p and Holm's correction over the {len(claims)} "
        "test(s) of this study (family-wise α = 0.05; a directional verdict has an effective one-sided level "
        "of 0.025). <i>supported</i>: significant after correction in the claimed direction; "
        "<i>contradicted</i>: in the other; <i>mixed</i>: levels disagree; <i>inconclusive</i> otherwise (the "
        "note says why, and how many seeds per group would detect the observed difference at 80% power). "
        "Equivalence claims use TOST at their margin. Every seed giving the same value in both groups (3 or "
        f"more seeds each) is an exact difference, judged by its sign.{link}</p>"
    )


def _signed_ci(lo: Any, hi: Any, r: Mapping[str, Any]) -> str:
    return fmt_ci(lo, hi, _u(r), diff=True)


def claim_columns() -> list[Column]:
    """Columns of a claims table (summary rows of `analysis.claims.claim_summary`, or test rows)."""

    def claim(r: Mapping[str, Any]) -> str:
        quote = f'<div class="quote">“{esc(r["quote"])}”</div>' if r.get("quote") else ""
        return f"<b>{esc(r['label'])}</b>{quote}"

    def groups(r: Mapping[str, Any]) -> str:
        if r.get("kind") == "equivalence":
            sign = f"≈ (±{esc(r['margin'])})"
        else:
            sign = "&gt;" if r["direction"] == "greater" else "&lt;"
        where = f"<br>where {esc(r['where'])}" if r.get("where") else ""
        within = f"<br>within each {esc(r['within'])}" if r.get("within") else ""
        return f"{esc(r['a'])} {sign} {esc(r['b'])}{where}{within}"

    def adjusted(r: Mapping[str, Any]) -> str:
        if missing(r.get("adj_ci_lo")):
            return "—"
        return f"{_signed_ci(r['adj_ci_lo'], r['adj_ci_hi'], r)}<br><span class='note'>at {100 * r['ci_level']:.1f}%</span>"

    def g(r: Mapping[str, Any]) -> str:
        if missing(r.get("effect_size")):
            return "—"
        ci = "" if missing(r.get("g_lo")) else f"<br><span class='note'>[{r['g_lo']:+.2f}, {r['g_hi']:+.2f}]</span>"
        return f"{float(r['effect_size']):+.2f}{ci}"

    def verdict(r: Mapping[str, Any]) -> str:
        flags = r.get("flags")
        flag = f'<br><span class="flag">⚑ {esc(flags)}</span>' if isinstance(flags, str) and flags else ""
        return verdict_html(r["verdict"]) + flag

    return [
        ("Claim", claim, False),
        ("Metric", lambda r: esc(r["metric"]), False),
        ("a vs b", groups, False),
        ("Levels", lambda r: esc(r.get("levels", 1)), True),
        ("n a/b", lambda r: f"{int(r['n_a'])}/{int(r['n_b'])}", True),
        ("a − b", lambda r: f"<b>{fmt_diff(r['diff'], _u(r))}</b>", True),
        ("95% CI", lambda r: _signed_ci(r["ci_lo"], r["ci_hi"], r), True),
        ("Holm-adjusted CI", adjusted, True),
        ("Hedges' g [95% CI]", g, True),
        ("p", lambda r: fmt_p(r["p_value"]), True),
        ("p (Holm)", lambda r: fmt_p(r["p_holm"]), True),
        ("Verdict", verdict, False),
        ("Note", lambda r: esc(r["note"]), False),
    ]


def paired_columns() -> list[Column]:
    """Extra columns of the per-level table: the paired test over matched seeds."""
    return [
        ("paired seeds", lambda r: esc(r.get("n_paired", 0)), True),
        ("paired a − b [95% CI]", lambda r: "—" if missing(r.get("paired_p")) else
         f"{fmt_diff(r['paired_diff'], _u(r))} {_signed_ci(r['paired_ci_lo'], r['paired_ci_hi'], r)}", True),
        ("paired p", lambda r: fmt_p(r.get("paired_p")), True),
    ]  # fmt: skip


def best_html(best: pd.DataFrame, meta: StudyMeta, keys: Sequence[str], *, compact: bool = False) -> str:
    """Best configuration per group: hyperparameters, parameter count, repeats, mean, std, CI
    (`compact`: hyperparameters, repeats, mean and CI only)."""
    if best.empty:
        return '<p class="note">No finished trial yet.</p>'
    m, col = meta.metric, meta.metric_col
    u = unit_of(meta, m)
    columns: list[Column] = [(k, lambda r, k=k: esc(r[k]), False) for k in keys]
    if "params" in best.columns:
        columns.append(("params", lambda r: "—" if pd.isna(r["params"]) else f"{int(r['params']):,}", True))
    columns += [
        ("repeats", lambda r: f"{int(r['n_finished'])}/{int(r['n_trials'])}", True),
        (f"final {m} mean", lambda r: f"<b>{fmt_metric(r[f'{col}_mean'], u)}</b>", True),
        ("± std", lambda r: fmt_metric(r[f"{col}_std"], u), True),
        ("95% CI", lambda r: fmt_ci(r[f"{col}_ci_lo"], r[f"{col}_ci_hi"], u), True),
    ]
    if f"best_{m}_mean" in best.columns:
        columns.append((f"best-epoch {m}", lambda r: fmt_metric(r[f"best_{m}_mean"], u), True))
    columns.append(("diverged/errors", lambda r: f"{int(r['n_diverged'])}/{int(r['n_error'])}", True))
    if compact:
        columns = columns[: len(keys)] + [
            c for c in columns[len(keys) :] if c[0] in ("repeats", "95% CI") or "mean" in c[0]
        ]
    else:  # the metrics named after the study's metric, each as mean and CI over the same repeats
        companions = companion_metrics(best, m)
        units = {name: unit_of(meta, name) for name in companions}
        columns += [
            (f"{name} mean [95% CI]", lambda r, c=f"final_{name}", n=name: _mean_ci(r, c, units[n]), True)
            for name in companions
        ]
    if "rank" in best.columns and best["rank"].max() > 1:
        columns.insert(0, ("rank", lambda r: esc(r["rank"]), True))
    return table_html(best.to_dict("records"), columns)


def companion_metrics(table: pd.DataFrame, metric: str, limit: int = MAX_COMPANIONS) -> list[str]:
    """Metrics named ``<metric>_<suffix>`` with a mean in a summary-like table (e.g. for test_acc: an
    ensemble's test_acc_member1, a multi-head net's test_acc_head1, test_acc_top5), at most `limit`."""
    prefix, names = f"final_{metric}_", []
    for col in table.columns:
        if col.startswith(prefix) and col.endswith("_mean") and col != f"final_{metric}_mean":
            if table[col].notna().any():
                names.append(col[len("final_") : -len("_mean")])
    return names[:limit]


def _mean_ci(r: Mapping[str, Any], col: str, unit: str | None) -> str:
    ci = fmt_ci(r.get(f"{col}_ci_lo"), r.get(f"{col}_ci_hi"), unit)
    return fmt_metric(r.get(f"{col}_mean"), unit) + ("" if ci == "—" else f" {ci}")


def comparisons_html(comparisons: pd.DataFrame, unit: str | None, total: int) -> str:
    """Unadjusted pairwise Welch comparisons of a − b (already filtered for the report); `total` =
    rows in comparisons.parquet."""
    if comparisons.empty:
        return (
            '<p class="note">No comparison: a categorical searched hyperparameter needs at least two levels '
            "with two or more finished repeats each in the same context.</p>"
        )
    columns: list[Column] = [
        ("Factor", lambda r: esc(r["factor"]), False),
        ("Other hyperparameters held at", lambda r: esc(r["context"]), False),
        ("a", lambda r: esc(r["level_a"]), False),
        ("b", lambda r: esc(r["level_b"]), False),
        ("n a/b", lambda r: f"{int(r['n_a'])}/{int(r['n_b'])}", True),
        ("mean a", lambda r: fmt_metric(r["mean_a"], unit), True),
        ("mean b", lambda r: fmt_metric(r["mean_b"], unit), True),
        ("a − b", lambda r: f"<b>{fmt_diff(r['diff'], unit)}</b>", True),
        ("95% CI of a − b", lambda r: fmt_ci(r["diff_ci_lo"], r["diff_ci_hi"], unit, diff=True), True),
        ("Welch p (unadjusted)", lambda r: fmt_p(r["p_value"]), True),
    ]
    note = (
        f'<p class="note">Showing {len(comparisons)} of {total} comparisons (all in '
        "<code>results/comparisons.parquet</code>).</p>"
        if total > len(comparisons)
        else ""
    )
    caution = (
        '<p class="note">Unadjusted pairwise Welch tests over seeds (a − b, the sign claims use), one per pair '
        "of levels: they describe the grid and are not corrected for the many comparisons, so a small p here "
        "is not a verdict (claims are Holm-corrected).</p>"
    )
    return table_html(comparisons.to_dict("records"), columns) + note + caution


def failures_html(trials: pd.DataFrame, keys: Sequence[str]) -> str:
    """Failed (ERROR) and diverged trials with their configuration and error text."""
    bad = trials[trials["status"].isin(["ERROR", "DIVERGED", "MISSING"])]
    if bad.empty:
        return '<p class="note">None.</p>'
    shown = bad.head(MAX_FAILURE_ROWS)

    def error(r: Mapping[str, Any]) -> str:
        e = r.get("error")
        if e is None or (isinstance(e, float) and math.isnan(e)):
            return "—"
        e = str(e)
        cut = e[:MAX_ERROR_CHARS] + (" …" if len(e) > MAX_ERROR_CHARS else "")
        return f'<code class="err">{esc(cut)}</code>'

    columns: list[Column] = [
        ("Trial", lambda r: esc(r["trial_id"]), False),
        ("Status", lambda r: f'<span class="pill {esc(r["status"])}">{esc(r["status"])}</span>', False),
        ("Configuration", lambda r: esc(config_label(r, keys)), False),
        ("Seed", lambda r: esc(r.get("seed", "—")), True),
        ("Epochs done", lambda r: esc(r.get("epochs_done", "—")), True),
        ("Error", error, False),
    ]
    more = (
        f'<p class="note">Showing {len(shown)} of {len(bad)}; all are in <code>results/trials.parquet</code>.</p>'
        if len(bad) > len(shown)
        else ""
    )
    return table_html(shown.to_dict("records"), columns) + more


def study_report_html(
    meta: StudyMeta,
    tables: Mapping[str, pd.DataFrame],
    figures: Sequence[FigureItem],
    *,
    report_comparisons: pd.DataFrame,
    epochs_rows: int,
    generated: _dt.datetime | None = None,
    scorecard: str | None = SCORECARD_LINK,
) -> str:
    """The whole study report (`scorecard`: relative link to the storage's scorecard page)."""
    trials = tables["trials"]
    by_section: dict[str, list[FigureItem]] = {}
    for item in figures:
        by_section.setdefault(item.section, []).append(item)
    groups_first = _best_keys(tables["best"], meta)
    empty = '<p class="note">No data for this plot yet (no finished trial).</p>'
    bodies = {
        "paper": paper_html(tables["paper"]),
        "claims": claims_html(tables.get("claims", pd.DataFrame()), scorecard=scorecard),
        "best": best_html(tables["best"], meta, groups_first)
        + '<p class="note">Ranked by the mean over repeats of the final '
        f"{esc(meta.metric)}; one row per level of the categorical searched hyperparameters.</p>",
        "comparisons": comparisons_html(report_comparisons, unit_of(meta, meta.metric), len(tables["comparisons"])),
        "failures": failures_html(trials, list(meta.searched) or list(meta.hyperparameters)),
    }
    for section in ("effects", "heatmaps", "curves", "parallel", "importance"):
        items = by_section.get(section, [])
        wrap = "grid" if section == "effects" and len(items) > 1 else ""
        bodies[section] = f'<div class="{wrap}">' + "".join(map(figure_html, items)) + "</div>" if items else empty
    if "importance" not in by_section:
        why = importance_note(trials, meta.searched, metric_col=meta.metric_col)
        bodies["importance"] = f'<p class="note">Not shown: {esc(why)}.</p>' if why else bodies["importance"]
    if "heatmaps" not in by_section and len(meta.grid_axes) < 2:
        bodies["heatmaps"] = '<p class="note">Fewer than two grid axes: no heat map.</p>'
    order = [s for s, _ in SECTIONS]
    main = "".join(f'<section id="{s}"><h2>{esc(dict(SECTIONS)[s])}</h2>{bodies[s]}</section>' for s in order)
    stamp = (generated or _dt.datetime.now()).strftime("%Y-%m-%d %H:%M")
    footer = (
        f"<footer>Generated {stamp} from results/trials.parquet ({len(trials)} trials) and "
        f"results/epochs.parquet ({epochs_rows} rows). Tables: results/summary.parquet and friends.</footer>"
    )
    header = header_html(meta, trials, epochs_rows, order, headline(meta, tables))
    if scorecard:  # the nav line ends with the link to the scorecard of every study in the storage
        header = header.replace(
            "</nav></header>", f'<a href="{esc(scorecard)}">Scorecard (all studies)</a></nav></header>'
        )
    return page(f"{meta.name} — study report", header + f"<main>{main}</main>" + footer)


def _best_keys(best: pd.DataFrame, meta: StudyMeta) -> list[str]:
    """Columns of the best table: searched hyperparameters (group ones first), then fixed ones
    that still vary."""
    keys = [k for k in meta.searched if k in best.columns]
    return keys or [k for k in meta.hyperparameters if k in best.columns]


# ---------------------------------------------------------------------------------------------
# comparison report


def comparison_report_html(
    studies: Sequence[tuple[str, StudyMeta, Mapping[str, pd.DataFrame]]],
    figures: Sequence[FigureItem],
    *,
    generated: _dt.datetime | None = None,
) -> str:
    """Several studies side by side: an overview row per study, a merged paper table, and each
    study's best configurations and paper table in its own column."""
    overview_rows = []
    for name, meta, tables in studies:
        counts = status_counts(tables["trials"])
        overview_rows.append(
            {
                "name": name,
                "meta": meta,
                "counts": counts,
                "wall": pd.to_numeric(tables["trials"].get("wall_time_s"), errors="coerce").sum(),
            }
        )
    overview = table_html(
        overview_rows,
        [
            ("Study", lambda r: f"<b>{esc(r['name'])}</b>", False),
            ("Trainable", lambda r: esc(r["meta"].trainable), False),
            ("Data", lambda r: esc(r["meta"].data_source), False),
            ("Spec file", lambda r: esc(r["meta"].spec_file), False),
            ("Ranked by", lambda r: f"{esc(r['meta'].metric)} ({esc(r['meta'].mode)})", False),
            (
                "Trials",
                lambda r: " ".join(f'<span class="pill {esc(s)}">{esc(s)} {n}</span>' for s, n in r["counts"].items()),
                False,
            ),
            ("Compute", lambda r: fmt_duration(r["wall"]), True),
        ],
    )
    merged = merged_paper_html(studies)
    columns = "".join(
        f"<div><h3>{esc(name)}</h3>{state_banner(status_counts(tables['trials']), link=False)}"
        f"<h3>Best configurations</h3>{best_html(tables['best'], meta, _best_keys(tables['best'], meta), compact=True)}"
        f"<h3>Paper vs reproduced</h3>{paper_html(tables['paper'], compact=True)}</div>"
        for name, meta, tables in studies
    )
    figs = "".join(map(figure_html, figures))
    names = ", ".join(name for name, _, _ in studies)
    stamp = (generated or _dt.datetime.now()).strftime("%Y-%m-%d %H:%M")
    body = (
        f"<header><h1>Study comparison: {esc(names)}</h1>{overview}</header><main>"
        f'<section id="best"><h2>Best configurations</h2>{figs}</section>'
        f'<section id="paper"><h2>Paper vs reproduced, all studies</h2>{merged}</section>'
        f'<section id="side"><h2>Side by side</h2><div class="side">{columns}</div></section>'
        f"</main><footer>Generated {stamp}.</footer>"
    )
    return page(f"Comparison — {names}", body)


def merged_paper_html(studies: Sequence[tuple[str, StudyMeta, Mapping[str, pd.DataFrame]]]) -> str:
    """One row per paper result label, one column group per study (mean, CI, paper in CI)."""
    labels: dict[tuple[str, str], dict[str, Any]] = {}
    for name, _, tables in studies:
        for r in tables["paper"].to_dict("records"):
            key = (r["label"], r["metric"])
            row = labels.setdefault(key, {"label": r["label"], "metric": r["metric"], "studies": {}})
            row.setdefault("paper", r["paper_value"])
            row.setdefault("unit", r.get("unit"))
            row["studies"][name] = r
    if not labels:
        return '<p class="note">No study has a <code>paper:</code> block.</p>'

    def cell(name: str) -> Callable[[Mapping[str, Any]], str]:
        def fn(row: Mapping[str, Any]) -> str:
            r = row["studies"].get(name)
            if r is None:
                return "—"
            mark = (
                ""
                if r["in_ci"] is None
                else (" <span class=yes>✓</span>" if r["in_ci"] else " <span class=no>✗</span>")
            )
            verdict = f"<br>{verdict_html(r['verdict'])}" if r.get("verdict") else ""
            return f"{fmt_metric(r['mean'], _u(r))} {fmt_ci(r['ci_lo'], r['ci_hi'], _u(r))}{mark}{verdict}"

        return fn

    columns: list[Column] = [
        ("Result", lambda r: esc(r["label"]), False),
        ("Metric", lambda r: esc(r["metric"]), False),
        ("Paper", lambda r: fmt_metric(r["paper"], _u(r)), True),
    ] + [(f"{name}: mean [95% CI]", cell(name), True) for name, _, _ in studies]
    return table_html(list(labels.values()), columns) + (
        '<p class="note">✓: the paper\'s value lies in the reproduced 95% CI; ✗: it does not.</p>'
    )
