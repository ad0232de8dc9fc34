"""The report files: what is written, atomically, self-contained, escaped, honest about state."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pandas as pd
import plotly.offline
import pyarrow.parquet as pq
import pytest
import yaml

from analysis import report as R
from analysis.html import SECTIONS
from analysis.synthetic import digit_pairs_study
from core.atomic import atomic_write
from core.errors import UserError

EVIL_NAME = '<script>window.__pwned = 1</script>"digits"'
EVIL_DESC = '<img src=x onerror="window.__pwned = 1"> & co'


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def assert_self_contained(page: str) -> None:
    """plotly.js inlined exactly once; no external script, style sheet or URL-loaded resource."""
    assert page.count(plotly.offline.get_plotlyjs()[:500]) == 1
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.IGNORECASE)
    assert not re.search(r"<link\b", page, re.IGNORECASE)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", page, re.IGNORECASE)
    assert not re.search(r"<(img|iframe|audio|video|source)\b[^>]*\bsrc\s*=\s*['\"]?(https?:)?//", page, re.IGNORECASE)


def test_write_study_outputs_writes_tables_and_report(digit_dir):
    path = R.write_study_outputs(digit_dir)
    results = digit_dir / "results"
    assert path == results / "report.html"
    expected = {f"{t}.parquet" for t in R.TABLES} | {"report.html", "trials.parquet", "epochs.parquet"}
    assert _files(results) == expected  # nothing else: no temporary file left behind
    summary = pd.read_parquet(results / "summary.parquet")
    assert len(summary) == 80 and "final_test_acc_ci_hi" in summary.columns
    assert b"study" in pq.read_schema(results / "summary.parquet").metadata
    best = pd.read_parquet(results / "best.parquet")
    assert list(best["arch"]) == ["FconnNet", "ConvNet", "parallelConv", "Siamese"]
    paper = pd.read_parquet(results / "paper.parquet")
    assert list(paper["label"]) == ["FconnNet best", "ConvNet best", "parallelConv best", "Siamese best"]
    assert len(pd.read_parquet(results / "importance.parquet")) == 3


def test_report_is_self_contained_and_has_every_section(digit_dir):
    page = R.write_study_outputs(digit_dir).read_text()
    assert_self_contained(page)
    for sid, title in SECTIONS:
        assert f'<section id="{sid}"><h2>{title}</h2>' in page
    assert page.count('class="plotly-graph-div"') == 7  # 3 effects, 1 heat map, curves, parallel, importance
    assert "digit_pairs" in page and "search_spaces/digit_pairs.yaml" in page and "synthetic" in page


def test_header_says_running_and_partly_failed(tmp_path, write_study):
    study = digit_pairs_study(repeats=2, epochs=3, n_running=5)
    page = R.write_study_outputs(write_study(tmp_path / "s", study)).read_text()
    counts = study.trials["status"].value_counts()
    assert "Study still running" in page and "Partly failed" in page
    assert f"{counts['TERMINATED']} of {len(study.trials)} trials finished" in page
    assert f"{counts['ERROR']} trial(s) errored and {counts['DIVERGED']} diverged" in page
    assert 'class="pill DIVERGED">DIVERGED' in page and "CUDA out of memory &lt;simulated&gt;" in page


def test_header_says_complete(tmp_path, write_study, size_study):
    page = R.write_study_outputs(write_study(tmp_path / "s", size_study)).read_text()
    assert "<b>Complete</b>: all 108 trials finished." in page
    assert "Study still running" not in page and "Partly failed" not in page


def test_spec_and_result_text_is_escaped(tmp_path, write_study):
    study = digit_pairs_study(archs=("Siamese", "<b>Net</b>"), lrs=(0.01, 0.1), batch_sizes=(50,), repeats=2, epochs=2)
    spec = study.spec | {"name": EVIL_NAME, "description": EVIL_DESC}
    spec["paper"] = {"citation": "<a href='http://x'>paper</a>", "results": [
        {"label": "<i>row</i>", "where": {"arch": "Siamese"}, "metric": "test_acc", "value": 0.9}]}  # fmt: skip
    trials = study.trials.copy()
    trials.loc[0, ["status", "error"]] = ["ERROR", "</code><script>alert(1)</script>"]
    study = dataclasses.replace(study, trials=trials, spec=spec, metadata=study.metadata | {"name": EVIL_NAME})
    page = R.write_study_outputs(write_study(tmp_path / "s", study)).read_text()
    assert_self_contained(page)
    for raw in (EVIL_NAME, EVIL_DESC, "<b>Net</b>", "<i>row</i>", "<a href='http://x'>", "<script>alert(1)"):
        assert raw not in page
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;&quot;digits&quot;" in page
    assert "&lt;img src=x onerror=&quot;window.__pwned = 1&quot;&gt; &amp; co" in page
    assert page.count("<script") == page.count("</script>")  # only our own script tags
    assert "&lt;/code&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_failed_write_leaves_the_previous_files(digit_dir, monkeypatch):
    report = R.write_study_outputs(digit_dir)
    before = report.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    import pyarrow.parquet as pq

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        R.write_study_outputs(digit_dir)
    assert report.read_bytes() == before
    assert not [p for p in (digit_dir / "results").iterdir() if p.name.endswith(".tmp")]


def test_atomic_text_write_replaces_in_one_step(tmp_path):
    target = tmp_path / "out" / "a.html"
    R.write_text("one", target)
    with pytest.raises(RuntimeError):
        atomic_write(target, lambda tmp: (tmp.write_text("half"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert target.read_text() == "one" and _files(target.parent) == {"a.html"}
    R.write_text("two", target)
    assert target.read_text() == "two"


def test_report_on_a_study_without_finished_trials(tmp_path, write_study):
    study = digit_pairs_study(repeats=1, epochs=2)
    study = dataclasses.replace(study, trials=study.trials.assign(status="RUNNING"))
    page = R.write_study_outputs(write_study(tmp_path / "s", study)).read_text()
    assert "Study still running" in page and "0 of 80 trials finished" in page
    assert "No finished trial yet." in page and 'class="plotly-graph-div"' not in page


def test_loader_falls_back_without_metadata_epochs_or_spec(tmp_path, digit_study):
    results = tmp_path / "bare" / "results"
    results.mkdir(parents=True)
    digit_study.trials.to_parquet(results / "trials.parquet")  # no b"study" metadata, no epochs, no spec
    page = R.write_study_outputs(tmp_path / "bare").read_text()
    assert "Searched</dt><dd>arch, lr, batch_size</dd>" in page  # the columns that vary
    assert page.count('class="plotly-graph-div"') >= 5


def test_missing_trials_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="trials.parquet is missing"):
        R.write_study_outputs(tmp_path / "nothing")
    bad = tmp_path / "bad"
    (bad / "results").mkdir(parents=True)
    digit_pairs_study(repeats=1, epochs=1).trials.to_parquet(bad / "results" / "trials.parquet")
    (bad / "spec.yaml").write_text("- a list\n")
    with pytest.raises(UserError, match="spec.yaml: expected a mapping"):
        R.write_study_outputs(bad)


def test_write_comparison_side_by_side(tmp_path, write_study, digit_study, size_study):
    a = write_study(tmp_path / "a", digit_study)
    b = write_study(tmp_path / "b", size_study)
    out = R.write_comparison([a, b], tmp_path / "cmp" / "compare.html")
    page = out.read_text()
    assert_self_contained(page)
    assert "Study comparison: digit-pairs, share-split-size" in page
    assert "digit-pairs: mean [95% CI]" in page and "share-split-size: mean [95% CI]" in page
    for label in ("Siamese best", "Share K_h=16, 55K"):
        assert label in page
    assert page.count('class="plotly-graph-div"') == 1 and page.count('<div class="side">') == 1
    assert _files(out.parent) == {"compare.html"}


def test_comparison_names_duplicate_studies_by_directory(tmp_path, write_study, size_study):
    a = write_study(tmp_path / "run1", size_study)
    b = write_study(tmp_path / "run2", size_study)
    page = R.write_comparison([a, b], tmp_path / "c.html").read_text()
    assert "share-split-size (run1)" in page and "share-split-size (run2)" in page


def test_spec_yaml_is_read(tmp_path, write_study, size_study):
    d = write_study(tmp_path / "s", size_study)
    spec = yaml.safe_load((d / "spec.yaml").read_text())
    spec["description"] = "Training-set size sweep, one line per head."
    (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert "Training-set size sweep, one line per head." in R.write_study_outputs(d).read_text()


def test_banner_counts_paused_trials_as_unfinished():
    from analysis.html import state_banner

    text = state_banner({"TERMINATED": 5, "PAUSED": 2, "RUNNING": 1})
    assert "Study still running" in text and "5 of 8 trials finished, 1 running, 2 paused" in text
    assert "<b>Complete</b>" not in state_banner({"TERMINATED": 5, "PENDING": 1})


def test_report_on_an_empty_or_failed_study(tmp_path, digit_study):
    columns = [
        "trial_id",
        "status",
        "arch",
        "lr",
        "batch_size",
        "seed",
        "params",
        "epochs_done",
        "wall_time_s",
        "error",
    ]
    cases = {
        "empty": pd.DataFrame(columns=columns),
        "failed": digit_study.trials.head(4).assign(status="ERROR", error="boom"),
    }
    pages = {}
    for name, trials in cases.items():
        (tmp_path / name / "results").mkdir(parents=True)
        trials.to_parquet(tmp_path / name / "results" / "trials.parquet")
        pages[name] = R.write_study_outputs(tmp_path / name).read_text()
    assert "No trial has reported yet" in pages["empty"] and "<b>Complete</b>" not in pages["empty"]
    assert "Partly failed</b>: 4 trial(s) errored" in pages["failed"] and pages["failed"].count("boom") == 4


def test_number_formats():
    from analysis.html import fmt_ci, fmt_diff, fmt_duration, fmt_metric, fmt_p

    assert fmt_metric(0.9114, "fraction") == "91.14%" and fmt_metric(4.55, "percent") == "4.55%"
    assert fmt_metric(377826, "count") == "377,826" and fmt_metric(0.2345678, "loss") == "0.2346"
    assert fmt_metric(float("nan"), "fraction") == "—" and fmt_ci(float("nan"), 0.5, "fraction") == "—"
    assert fmt_diff(-0.0137, "fraction") == "-1.37 pp" and fmt_diff(0.01, "loss") == "+0.01"
    assert fmt_diff(-1.27, "percent") == "-1.27 pp"
    assert fmt_ci(0.8, 0.85, "fraction") == "[80.00%, 85.00%]"
    # undeclared metrics are shown raw whatever their name says
    assert fmt_metric(0.9114, None) == "0.9114" and fmt_diff(-0.0137, None) == "-0.0137"
    assert (fmt_duration(12.34), fmt_duration(250), fmt_duration(3 * 3600 + 300)) == (
        "12.3 s",
        "4 min 10 s",
        "3 h 05 min",
    )
    assert (fmt_p(0.0123), fmt_p(1e-7), fmt_p(None)) == ("0.012", "< 1e-4", "—")


def test_paper_rows_without_trials_are_folded_away() -> None:
    import pandas as pd

    from analysis.html import paper_html

    base = {"where": "arch=a", "metric": "test_acc", "paper_value": 0.9, "paper_std": None, "std": 0.01,
            "ci_lo": 0.8, "ci_hi": 0.95, "diff": -0.02, "in_ci": True, "note": ""}  # fmt: skip
    paper = pd.DataFrame([{**base, "label": "ran", "n": 3, "mean": 0.88},
                          {**base, "label": "not run", "n": 0, "mean": None, "in_ci": None}])  # fmt: skip
    html = paper_html(paper)
    assert html.index("ran") < html.index("<details>") < html.index("not run")
    assert "1 paper number(s) with no finished trial" in html
