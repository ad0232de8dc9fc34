"""The scorecard over a storage, the claims section of a report and `study scorecard`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis import report as R
from analysis.synthetic import ablation_study
from study.cli import main
from tests.analysis.test_claims import AUX, SHARING

TABLE2 = [  # the paper's Table 2, measured on full MNIST
    {"label": "sharing + aux", "where": {"weight_sharing": True, "aux_loss": True}, "metric": "test_acc",
     "value": 0.907, "std": 0.0162, "dataset": "mnist"},
    {"label": "neither", "where": {"weight_sharing": False, "aux_loss": False}, "metric": "test_acc",
     "value": 0.7941, "std": 0.0122, "dataset": "mnist"},
]  # fmt: skip


@pytest.fixture
def storage(tmp_path: Path, write_study) -> Path:
    """Two studies: one on the paper's data (numbers judged), one on the bundled sample (reference)."""
    on_mnist = ablation_study(
        effects={"weight_sharing": 0.03, "aux_loss": 0.08},
        base=0.80,
        claims=[SHARING, AUX],
        data_source="mnist",
        paper_results=TABLE2,
        name="ablation-mnist",
    )
    on_sample = ablation_study(
        effects={"weight_sharing": -0.03},
        claims=[SHARING],
        data_source="mnist-5k",
        paper_results=TABLE2,
        repeats=3,
        name="ablation-5k",
    )
    for study in (on_mnist, on_sample):
        write_study(tmp_path / study.spec["name"], study)
    return tmp_path


def test_reports_write_claims_and_link_the_storage_scorecard(storage: Path) -> None:
    report = R.write_study_outputs(storage / "ablation-mnist")
    html = report.read_text()
    assert '<section id="claims"><h2>Claims</h2>' in html and "weight sharing improves accuracy" in html
    assert 'href="../../scorecard.html"' in html
    assert (report.parent / "../../scorecard.html").resolve() == (storage / "scorecard.html").resolve()
    assert (storage / "scorecard.html").is_file() and (storage / "scorecard.parquet").is_file()
    claims = pd.read_parquet(storage / "ablation-mnist" / "results" / "claims.parquet")
    assert list(claims["verdict"]) == ["supported", "supported"]


def test_scorecard_rows(storage: Path) -> None:
    for name in ("ablation-mnist", "ablation-5k"):
        R.write_study_outputs(storage / name)
    table = pd.read_parquet(storage / "scorecard.parquet")
    claims = table[table["kind"] == "claim"].set_index(["study", "label"])
    assert claims.loc[("ablation-mnist", SHARING["label"]), "verdict"] == "supported"
    assert claims.loc[("ablation-mnist", AUX["label"]), "verdict"] == "supported"
    assert claims.loc[("ablation-5k", SHARING["label"]), "verdict"] == "contradicted"  # reversed effect
    assert claims.loc[("ablation-5k", SHARING["label"]), "dataset"] == "mnist-5k"  # claims: any source
    assert claims.loc[("ablation-mnist", AUX["label"]), "value"] == pytest.approx(0.08, abs=0.01)
    numbers = table[table["kind"] == "number"].set_index(["study", "label"])
    assert set(numbers.loc["ablation-5k", "verdict"]) == {"reference only"}
    assert set(numbers.loc["ablation-mnist", "verdict"]) == {"reproduced within tolerance"}
    assert (table["report"].str.endswith("results/report.html")).all()
    assert (storage / table.iloc[0]["report"]).is_file()
    html = (storage / "scorecard.html").read_text()
    assert "Scorecard: what holds up?" in html and "<script" not in html  # self-contained, no JS needed
    assert html.count('class="verdict bad"') >= 1 and "the study ran on other data" in html


def test_study_scorecard_cli(storage: Path, tmp_path: Path, capsys) -> None:
    (storage / "empty").mkdir()
    (storage / "empty" / "spec.yaml").write_text("name: empty\n")  # a study without results yet
    out = tmp_path / "card.html"
    assert main(["scorecard", "--storage", str(storage), "--out", str(out)]) == 0
    assert out.is_file() and (tmp_path / "scorecard.parquet").is_file()
    assert "3 studies" in capsys.readouterr().out
    assert "Left out (no results yet or unreadable): empty" in out.read_text()
    assert main(["scorecard", "--storage", str(storage)]) == 0 and (storage / "scorecard.html").is_file()
    assert main(["scorecard", "--storage", str(storage), "--out", str(tmp_path / "nope" / "x.html")]) == 2
    assert "--out" in capsys.readouterr().err
    # never into a study: neither over its files nor beside them (the scorecard's table goes next to it)
    spec_before = (storage / "empty" / "spec.yaml").read_bytes()
    for target in (
        storage / "empty" / "spec.yaml",
        storage / "empty" / "card.html",
        storage / "empty" / "results" / "x.html",
    ):
        (storage / "empty" / "results").mkdir(exist_ok=True)
        assert main(["scorecard", "--storage", str(storage), "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert f"--out {target}" in err and len(err.strip().splitlines()) == 1
    assert (storage / "empty" / "spec.yaml").read_bytes() == spec_before
    assert not list((storage / "empty").rglob("scorecard.parquet")) and not (storage / "empty" / "card.html").exists()
