"""The scorecard of two small real studies (run on a local Ray) opens in a real browser, offline.

Like `test_analysis_browser.py`: Debian's ``chromium`` and ``chromium-driver``; skipped only when
Chromium is absent and ``CI`` is not set.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from study.runner import run_study
from tests.analysis.test_analysis_browser import CHROMIUM, assert_clean, browser  # noqa: F401 (fixture)
from tests.conftest import write_spec

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not os.environ.get("CI"),
        reason="headless Chromium not installed (apt-get install chromium chromium-driver)",
    ),
]

CLAIMS = [
    {"label": "Siamese beats ConvNet", "quote": "the Siamese network could achieve the best performance",
     "metric": "test_acc", "a": {"arch": "Siamese"}, "b": {"arch": "ConvNet"}, "direction": "greater"},
]  # fmt: skip
PAPER = {
    "citation": "Deng & Li (EPFL), Table 1",
    "results": [
        {"label": "Siamese", "where": {"arch": "Siamese"}, "metric": "test_acc", "value": 0.9114, "dataset": "mnist"},
        {"label": "ConvNet", "where": {"arch": "ConvNet"}, "metric": "test_acc", "value": 0.8087, "dataset": "mnist-5k"},
    ],
    "claims": CLAIMS,
}


def test_scorecard_of_two_real_studies(ray_local, browser, tmp_path: Path) -> None:  # noqa: F811
    storage = tmp_path / "studies"
    for name in ("card-a", "card-b"):
        spec = write_spec(tmp_path / f"{name}.yaml", name=name, paper=PAPER)
        outcome = run_study(spec, storage=storage)  # ends with the report, which refreshes the scorecard
        assert not outcome.failed
    page = storage / "scorecard.html"
    table = pd.read_parquet(storage / "scorecard.parquet")
    assert sorted(table["study"].unique()) == ["card-a", "card-b"]
    numbers = table[table["kind"] == "number"].set_index(["study", "label"])
    # Siamese's number is full MNIST's: reference only on the sample; ConvNet's row states the sample
    assert numbers.loc[("card-a", "Siamese"), "verdict"] == "reference only"
    assert numbers.loc[("card-a", "ConvNet"), "dataset"] == "mnist-5k"
    assert numbers.loc[("card-a", "ConvNet"), "verdict"] != "reference only"
    claims = table[table["kind"] == "claim"]
    assert len(claims) == 2 and set(claims["data_source"]) == {"mnist-5k"} and (claims["n_a"] == 2).all()

    browser.get(page.resolve().as_uri())
    assert browser.title == "Scorecard"
    assert_clean(browser)
    pills = [e.text for e in browser.find_elements("css selector", "td .verdict")]
    assert pills.count("reference only") == 2 and len(pills) == 6  # 2 claims + 4 numbers
    # each row links to its study's report, which links back to the scorecard
    link = browser.find_element("link text", "card-a")
    link.click()
    assert browser.title.startswith("card-a")
    assert_clean(browser)
    browser.find_element("link text", "Scorecard (all studies)").click()
    assert browser.title == "Scorecard"
