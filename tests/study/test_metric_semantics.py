"""``best_*`` columns follow the direction the family declares for each metric (`core.metrics`), not
a guess from the name; the tables' metadata carries each metric's semantics for the analysis."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from core.layout import PARQUET_STUDY_KEY, trials_path
from core.metrics import semantics_from_json
from study.results.tables import collect, write_results
from study.spec.load import load_spec

ERRORS = [40.0, 12.5, 20.0]  # test_err_pct per epoch: the lowest is the best
ACC = [0.6, 0.875, 0.8]


def image_study(root: Path) -> Path:
    """A finished one-trial wsms (image family) study ranked by test_acc (mode max), whose trial also
    reports test_err_pct (declared min, percent) and a metric no family declares."""
    d = root / "img"
    d.mkdir(parents=True)
    spec = {"name": "img", "trainable": "wsms", "data": {"source": "mnist-5k"},
            "fixed": {"epochs": 3, "stages": 1}, "metric": "test_acc", "mode": "max"}  # fmt: skip
    (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    rows = [{"epoch": e + 1, "test_acc": ACC[e], "test_err_pct": ERRORS[e], "undeclared_score": float(e),
             "train_loss": 1.0 / (e + 1), "params": 100, "diverged": 0, "time_total_s": float(e + 1)}
            for e in range(3)]  # fmt: skip
    (d / "trial_a").mkdir()
    (d / "trial_a" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trial = {"trial_id": "a", "status": "TERMINATED", "config": {"epochs": 3, "stages": 1, "seed": 0}}
    state = {"trial_data": [[json.dumps({**trial, "relative_logdir": "trial_a"}), json.dumps({"last_result": rows[-1]})]]}
    (d / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    return d


def test_best_test_err_pct_is_the_lowest_epoch_error(tmp_path: Path) -> None:
    d = image_study(tmp_path)
    spec = load_spec(d / "spec.yaml")
    trials, _ = collect(d, spec)
    row = trials.iloc[0]
    assert row["best_test_err_pct"] == min(ERRORS) and row["final_test_err_pct"] == ERRORS[-1]
    assert row["best_test_acc"] == max(ACC)  # the spec's metric, declared max as well
    assert row["best_train_loss"] == 1.0 / 3
    assert "final_undeclared_score" in trials.columns and "best_undeclared_score" not in trials.columns


def test_trials_parquet_carries_metric_semantics(tmp_path: Path) -> None:
    d = image_study(tmp_path)
    spec = load_spec(d / "spec.yaml")
    write_results(d, spec, *collect(d, spec))
    meta = json.loads(pq.read_schema(trials_path(d)).metadata[PARQUET_STUDY_KEY])
    semantics = semantics_from_json(meta["metric_semantics"])
    assert semantics["test_err_pct"].direction == "min" and semantics["test_err_pct"].unit == "percent"
    assert semantics["test_acc"].direction == "max" and semantics["test_acc"].unit == "fraction"
    assert semantics["params"].deterministic
    assert "undeclared_score" not in semantics  # never guessed


def test_undeclared_ranking_metric_takes_the_spec_mode(tmp_path: Path) -> None:
    """A metric the family does not declare has a best only as the spec's ranking metric."""
    from study.results.tables import directions
    from study.spec.model import Spec

    spec = load_spec(image_study(tmp_path) / "spec.yaml")
    assert directions(spec, ["test_err_pct", "undeclared_score"]) == {"test_err_pct": "min"}
    ranked = Spec.model_validate({**spec.model_dump(), "metric": "undeclared_score", "mode": "min"})
    assert directions(ranked, ["undeclared_score"]) == {"undeclared_score": "min"}
