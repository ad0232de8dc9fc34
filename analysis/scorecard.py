"""The scorecard: every paper's claims and numbers over all studies of a storage, with verdicts.

Pure functions (files are written by `analysis.report.write_scorecard`). Per study only the cheap
tables are computed (`analysis.assemble.paper_table`, `claims_table`), so the page stays quick
for many studies. One row per claim (its verdict over levels, `analysis.claims.claim_summary`)
and per paper number; grouped by paper (the trainable family, with the studies' citations).
Beside each verdict: its flags; over the whole page, a Benjamini-Hochberg adjusted p (``p_page``)
of the claims. Smoke runs are marked and, by default, left out. Links to reports are built only
from validated relative paths (`safe_link`).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import pandas as pd

from analysis.aggregate import with_config_id
from analysis.assemble import claims_table, paper_block, paper_table
from analysis.claims import claim_summary
from analysis.format import esc, fmt_ci, fmt_diff, fmt_metric, fmt_p, missing
from analysis.html import CSS, claim_columns, table_html, verdict_html
from analysis.load import StudyResults
from analysis.provenance import fewer_epochs
from analysis.stats import bh

_SEGMENT = re.compile(r"^[A-Za-z0-9._ ()+,=@~-]+$")


def safe_link(path: str) -> str:
    """A relative link to a report, or ``""`` when `path` is not a plain relative path.

    Every segment is percent-encoded and the link starts with ``./`` or ``../``, so a study
    directory named ``javascript:alert(1)`` becomes ``./javascript%3Aalert%281%29/...``, a relative
    path, never a scheme. Absolute paths, backslashes and control characters give no link.
    """
    if not path or path.startswith(("/", "\\")) or "\\" in path or re.search(r"[\x00-\x1f\x7f]", path):
        return ""
    parts = path.split("/")
    if any(p in ("", ".") for p in parts[:-1]) or not parts[-1]:
        return ""
    encoded = "/".join(p if p == ".." else quote(p, safe="") for p in parts)
    return encoded if encoded.startswith("../") else f"./{encoded}"


SCORECARD_COLUMNS = [
    "paper",  # the trainable family (one per paper)
    "citation",
    "study",
    "report",  # the study's report.html, relative to the scorecard
    "data_source",  # what the study ran on
    "kind",  # claim | number
    "label",
    "quote",
    "metric",
    "comparison",  # claims: "a > b"; numbers: the where filter
    "where",
    "within",
    "levels",
    "dataset",  # measured on: numbers, the paper's dataset; claims, the study's data source
    "unit",
    "paper_value",
    "paper_std",
    "tolerance",
    "n_a",  # numbers: n (trials); claims: seeds in group a
    "n_b",
    "value",  # numbers: our mean; claims: mean(a) - mean(b)
    "ci_lo",
    "ci_hi",
    "effect_size",
    "p_value",
    "p_holm",
    "p_page",  # claims: Benjamini-Hochberg over every claim test on the page
    "rule",  # numbers: the tolerance rule in words
    "verdict",
    "flags",
    "smoke",  # a --smoke run
    "fewer_epochs",  # trained fewer epochs than the paper's recipe
    "note",
]
GOOD = ("supported", "reproduced within tolerance")
BAD = ("contradicted", "not reproduced", "mixed")


def study_scorecard(name: str, results: StudyResults, report: str = "") -> pd.DataFrame:
    """A study's claim and number rows (`SCORECARD_COLUMNS`)."""
    meta = results.meta
    paper = paper_block(meta)
    trials = with_config_id(results.trials, meta.hyperparameters, meta.inert_keys)
    base = {
        "paper": meta.trainable or "unknown",
        "citation": str(paper.get("citation") or ""),
        "study": name,
        "report": report,
        "data_source": meta.data_source,
        "smoke": meta.smoke,
        "fewer_epochs": fewer_epochs(paper.get("recipe"), trials, meta.fixed),
    }
    rows = []
    tests = claims_table(trials, meta)
    for c in claim_summary(tests).to_dict("records"):
        sign = "≈" if c["kind"] == "equivalence" else (">" if c["direction"] == "greater" else "<")
        rows.append(
            base
            | {
                "kind": "claim",
                "label": c["label"],
                "quote": c["quote"],
                "metric": c["metric"],
                "unit": c["unit"],
                "comparison": f"{c['a']} {sign} {c['b']}",
                "where": c["where"],
                "within": c["within"],
                "levels": int(c["levels"]),
                "dataset": meta.data_source,
                "n_a": int(c["n_a"]),
                "n_b": int(c["n_b"]),
                "value": c["diff"],
                **{k: c[k] for k in ("ci_lo", "ci_hi", "effect_size", "p_value", "p_holm", "verdict", "flags", "note")},
            }
        )
    for r in paper_table(trials, meta).to_dict("records"):
        rows.append(
            base
            | {
                "kind": "number",
                "label": r["label"],
                "metric": r["metric"],
                "unit": r["unit"],
                "comparison": r["where"],
                "where": r["where"],
                "levels": 1,
                "dataset": r["dataset"],
                "paper_value": r["paper_value"],
                "paper_std": r["paper_std"],
                "tolerance": r["tolerance"],
                "n_a": int(r["n"]),
                "value": r["mean"],
                **{k: r[k] for k in ("ci_lo", "ci_hi", "rule", "verdict", "flags", "note")},
            }
        )
    out = pd.DataFrame(rows, columns=SCORECARD_COLUMNS)
    for c in ("quote", "within", "where", "comparison", "note", "citation", "report", "unit", "rule", "flags"):
        out[c] = [("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)) for v in out[c]]
    for c in ("levels", "n_a", "n_b"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("Int64")
    for c in ("paper_value", "paper_std", "tolerance", "value", "ci_lo", "ci_hi", "effect_size", "p_value", "p_holm",
              "p_page"):  # fmt: skip
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    for c in ("smoke", "fewer_epochs"):
        out[c] = out[c].astype(bool)
    return out


def scorecard_table(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """All studies' rows, ordered by paper, kind (claims first), study."""
    frames = [p for p in parts if len(p)]
    if not frames:
        return pd.DataFrame(columns=SCORECARD_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    out["p_page"] = bh(out["p_value"].where(out["kind"] == "claim").to_numpy(dtype=float))
    kind_order = out["kind"].map({"claim": 0, "number": 1})
    out = out.assign(_k=kind_order).sort_values(["paper", "_k", "study"], kind="stable").drop(columns="_k")
    return out.reset_index(drop=True)


def _counts(rows: pd.DataFrame) -> str:
    counts = rows["verdict"].value_counts()
    return " ".join(f"{verdict_html(v)} {int(n)}" for v, n in counts.items())


def _bar(r: Mapping[str, Any], scale: float) -> str:
    """An inline SVG of a claim's CI of a − b around 0 (green right of 0 when a > b is claimed)."""
    lo, hi, v = r.get("ci_lo"), r.get("ci_hi"), r.get("value")
    if any(x is None or pd.isna(x) for x in (lo, hi, v)) or not scale > 0:
        return ""
    if " ≈ " in str(r["comparison"]):
        return ""  # an equivalence claim has no claimed side
    sign = 1 if " > " in str(r["comparison"]) else -1  # claimed direction to the right

    def x(val: float) -> float:
        return 60 + 55 * max(-1.0, min(1.0, sign * val / scale))

    a, b = sorted((x(lo), x(hi)))
    return (
        '<svg width="120" height="14" role="img" aria-label="CI of a − b; right of the line is the claimed side">'
        '<line x1="60" y1="0" x2="60" y2="14" stroke="#8895a7" stroke-width="1"/>'
        f'<line x1="{a:.1f}" y1="7" x2="{b:.1f}" y2="7" stroke="#2457a6" stroke-width="3"/>'
        f'<circle cx="{x(v):.1f}" cy="7" r="3" fill="#1d232b"/></svg>'
    )


def scorecard_html(table: pd.DataFrame, *, storage: str = "", skipped: Sequence[str] = (), generated=None) -> str:
    """The scorecard page: totals, then per paper its claims and numbers (self-contained HTML)."""
    stamp = (generated or _dt.datetime.now()).strftime("%Y-%m-%d %H:%M")
    claims, numbers = table[table["kind"] == "claim"], table[table["kind"] == "number"]
    studies = table.drop_duplicates("study")
    totals = (
        f'<dl class="facts"><dt>Storage</dt><dd>{esc(storage) or "—"}</dd>'
        f"<dt>Studies</dt><dd>{studies['study'].nunique()}</dd>"
        f"<dt>Claims ({len(claims)})</dt><dd>{_counts(claims) or '—'}</dd>"
        f"<dt>Paper numbers ({len(numbers)})</dt><dd>{_counts(numbers) or '—'}</dd></dl>"
    )
    sections = []
    for paper, part in table.groupby("paper", sort=True):
        sections.append(_paper_section(str(paper), part))
    if not sections:
        sections.append('<p class="note">No study with results in this storage.</p>')
    skipped_html = (
        f'<p class="note">Left out (no results yet or unreadable): {esc(", ".join(skipped))}.</p>' if skipped else ""
    )
    body = (
        f"<header><h1>Scorecard: what holds up?</h1>"
        '<p class="desc">Every paper\'s claims and reported numbers, tested on every study in this storage. '
        "Claims are directions (group a vs group b) and are tested on any data source; numbers are only "
        "judged on the data the paper measured them on (otherwise: reference only).</p>"
        f"{totals}</header><main>{''.join(sections)}{skipped_html}{_legend()}</main>"
        f"<footer>Generated {stamp}. The same rows are in scorecard.parquet.</footer>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Scorecard</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def _study_link(r: Mapping[str, Any]) -> str:
    name = esc(r["study"])
    href = safe_link(str(r.get("report") or ""))
    link = f'<a href="{esc(href)}">{name}</a>' if href else name
    marks = (" <span class='flag'>smoke run</span>" if r.get("smoke") else "") + (
        " <span class='flag'>fewer epochs than the paper</span>" if r.get("fewer_epochs") else ""
    )
    return f"{link}{marks}<br><span class='note'>on {esc(r['data_source'])}</span>"


def _paper_section(paper: str, part: pd.DataFrame) -> str:
    citations = sorted({c for c in part["citation"] if c})
    cites = "".join(f'<p class="desc">{esc(c)}</p>' for c in citations)
    claims = part[part["kind"] == "claim"]
    numbers = part[part["kind"] == "number"]
    out = f'<section id="paper-{esc(paper)}"><h2>{esc(paper)}</h2>{cites}'
    if len(claims):
        scale = float(pd.concat([claims["ci_lo"].abs(), claims["ci_hi"].abs()]).max(skipna=True) or 0)
        scale = scale if math.isfinite(scale) else 0.0
        by_name = {c[0]: c for c in claim_columns()}
        rows = [
            {**r, "diff": r["value"], "direction": "greater" if " > " in r["comparison"] else "less",
             "kind": "direction", "margin": None}
            for r in claims.to_dict("records")
        ]  # fmt: skip
        columns = [
            by_name["Claim"],
            ("Study (data)", _study_link, False),
            ("a vs b", lambda r: esc(r["comparison"]) + (f"<br>where {esc(r['where'])}" if r["where"] else "")
             + (f"<br>within each {esc(r['within'])}" if r["within"] else ""), False),
            by_name["n a/b"],
            by_name["a − b"],
            by_name["95% CI"],
            ("CI vs 0", lambda r: _bar(r, scale), False),
            by_name["Hedges' g [95% CI]"],
            by_name["p (Holm)"],
            ("p (BH, page)", lambda r: fmt_p(r["p_page"]), True),
            by_name["Verdict"],
            by_name["Note"],
        ]  # fmt: skip
        out += f"<h3>Claims</h3>{table_html(rows, columns)}"
    if len(numbers):

        def unit(r: Mapping[str, Any]) -> str | None:
            return r["unit"] or None

        def paper_value(r: Mapping[str, Any]) -> str:
            std = "" if missing(r["paper_std"]) else f" ± {fmt_metric(r['paper_std'], unit(r))}"
            return fmt_metric(r["paper_value"], unit(r)) + std

        def verdict(r: Mapping[str, Any]) -> str:
            rule = f'<br><span class="note">{esc(r["rule"])}</span>' if r["rule"] else ""
            flags = f'<br><span class="flag">⚑ {esc(r["flags"])}</span>' if r["flags"] else ""
            return verdict_html(r["verdict"]) + rule + flags

        columns = [
            ("Number", lambda r: f"<b>{esc(r['label'])}</b><br><span class='note'>{esc(r['where'])}</span>", False),
            ("Study (data)", _study_link, False),
            ("Paper", paper_value, True),
            ("Measured on", lambda r: esc(r["dataset"]), False),
            ("Ours (mean)", lambda r: fmt_metric(r["value"], unit(r)), True),
            ("95% CI", lambda r: fmt_ci(r["ci_lo"], r["ci_hi"], unit(r)), True),
            ("n (seeds)", lambda r: esc(r["n_a"]), True),
            ("Ours − paper", lambda r: fmt_diff(r["value"] - r["paper_value"], unit(r)), True),
            ("Verdict", verdict, False),
            ("Note", lambda r: esc(r["note"]), False),
        ]
        out += f"<h3>Numbers</h3>{table_html(numbers.to_dict('records'), columns)}"
    return out + "</section>"


def _legend() -> str:
    return (
        '<section id="legend"><h2>How to read this</h2><p class="note">'
        f"{verdict_html('supported')} / {verdict_html('contradicted')}: the difference a − b is significant "
        "(Welch's t-test over seeds, Holm-corrected over the study's claims, α = 0.05; effective one-sided "
        f"level 0.025) in the claimed / the opposite direction; {verdict_html('mixed')}: levels disagree; "
        f"{verdict_html('inconclusive')}: not significant, too few seeds or no trials. p (BH, page): the "
        "Benjamini-Hochberg adjusted p over every claim on this page (false discovery rate). "
        f"{verdict_html('reproduced within tolerance')}: the whole 95% CI of our mean lies in the band of the "
        "row's tolerance rule (shown under the verdict); "
        f"{verdict_html('not reproduced')}: wholly outside; {verdict_html('CI too wide to tell')}: neither "
        f"(more seeds would tell); {verdict_html('reference only')}: the study ran on other data than the "
        f"paper's number (a stand-in); {verdict_html('not judged')}: no recorded data source, no dataset on "
        "the row, or no declared unit for the metric. ⚑: trials left out, overrides, recipe differences. "
        f"p-values: {fmt_p(0.00001)} means below 1e-4.</p></section>"
    )
