"""End to end: real tiny studies on a real local Ray, read back from both Parquet files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from study.errors import UserError
from study.runner import run_study
from tests.conftest import REPO, write_spec

pytestmark = pytest.mark.e2e


def test_tiny_study_writes_both_tables(ray_local, tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path / "tiny.yaml",
        fixed={"epochs": 2, "batch_size": 50},
        space={"arch": {"grid": ["ConvNet", "Siamese"]}, "lr": {"grid": [0.01, 0.05]}},
    )
    outcome = run_study(spec, storage=tmp_path / "studies", report=False)
    assert outcome.counts == {"TERMINATED": 8} and not outcome.failed

    results = tmp_path / "studies" / "tiny" / "results"
    trials = pd.read_parquet(results / "trials.parquet")
    epochs = pd.read_parquet(results / "epochs.parquet")
    assert len(trials) == 8 and trials["trial_id"].is_unique
    for col in ["trial_id", "status", "arch", "lr", "epochs", "batch_size", "n_train", "seed", "final_test_acc",
                "best_test_acc", "final_train_loss", "best_train_loss", "params", "wall_time_s", "error"]:  # fmt: skip
        assert col in trials.columns, col
    assert sorted(trials["seed"].unique()) == [0, 1]
    assert set(trials["arch"]) == {"ConvNet", "Siamese"} and set(trials["lr"]) == {0.01, 0.05}
    assert (trials["best_test_acc"] >= trials["final_test_acc"]).all()
    assert (trials["best_train_loss"] <= trials["final_train_loss"]).all()
    assert set(trials.loc[trials["arch"] == "Siamese", "params"]) == {34964}
    assert trials["error"].isna().all() and (trials["epochs_done"] == 2).all()

    assert len(epochs) == 16 and set(epochs["epoch"]) == {1, 2}
    # the platform's cost metrics, for every trial and epoch; the data source in every table
    assert (epochs["step_time_s"] > 0).all() and (epochs["peak_mem_mb"] > 10).all()
    assert (trials["final_step_time_s"] > 0).all() and set(trials["data_source"]) == {"mnist-5k"}
    assert set(epochs["data_source"]) == {"mnist-5k"}
    assert epochs.groupby("trial_id")["epoch"].apply(list).map(lambda e: e == [1, 2]).all()
    last = epochs[epochs["epoch"] == 2].set_index("trial_id")["test_acc"]
    assert (trials.set_index("trial_id")["final_test_acc"] == last.loc[trials["trial_id"]].values).all()

    for trial_dir in (tmp_path / "studies" / "tiny").glob("trial_*"):  # finished: only the last checkpoint kept
        assert [c.name for c in trial_dir.glob("checkpoint_*")] == ["checkpoint_000001"], trial_dir

    meta = json.loads(pq.read_schema(results / "trials.parquet").metadata[b"study"])
    assert meta["metric"] == "test_acc" and meta["searched"] == ["arch", "lr"] and meta["trainable"] == "digit_pairs"

    # the same config and seed give the same numbers: seed 0 and seed 1 differ, a rerun elsewhere agrees
    again = run_study(spec, name="tiny-again", storage=tmp_path / "studies", report=False)
    assert again.counts == {"TERMINATED": 8}
    t2 = pd.read_parquet(tmp_path / "studies" / "tiny-again" / "results" / "trials.parquet")
    key = ["arch", "lr", "seed"]
    a = trials.set_index(key)["final_train_loss"].sort_index()
    b = t2.set_index(key)["final_train_loss"].sort_index()
    assert (a.values == b.values).all()


def test_rerun_of_finished_study_adds_nothing(ray_local, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "tiny.yaml", repeats=1, fixed={"epochs": 1, "batch_size": 50})
    out = io.StringIO()
    first = run_study(spec, storage=tmp_path, report=False, out=out)
    progress = [ln for ln in out.getvalue().splitlines() if " done, " in ln]
    assert progress[-1].startswith("[study] 2/2 done, 0 running, 0 failed | best test_acc="), progress
    ids = set(pd.read_parquet(tmp_path / "tiny" / "results" / "trials.parquet")["trial_id"])
    out = io.StringIO()
    second = run_study(spec, storage=tmp_path, report=False, out=out)
    assert "[study] tiny: already complete (2 terminated)" in out.getvalue(), out.getvalue()
    assert "resuming" not in out.getvalue()
    assert first.counts == second.counts == {"TERMINATED": 2}
    assert set(pd.read_parquet(tmp_path / "tiny" / "results" / "trials.parquet")["trial_id"]) == ids


def test_rerun_with_a_different_spec_is_refused(ray_local, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "tiny.yaml", repeats=1, fixed={"epochs": 1})
    run_study(spec, storage=tmp_path, report=False)
    with pytest.raises(UserError, match=r"started with a different spec \(fixed.epochs was 1, now 2\); use --name"):
        run_study(spec, storage=tmp_path, overrides=["fixed.epochs=2"], report=False)
    # the paper's numbers and the description may change: they are saved, no trial reruns
    paper = "paper.results=[{label: row, where: {arch: Siamese}, metric: test_acc, value: 0.9, dataset: mnist}]"
    again = run_study(spec, storage=tmp_path, overrides=[paper, "description=new"], report=False)
    assert again.counts == {"TERMINATED": 2}
    saved = yaml.safe_load((tmp_path / "tiny" / "spec.yaml").read_text())
    assert saved["description"] == "new" and saved["paper"]["results"][0]["value"] == 0.9


def test_diverging_trial_is_recorded_and_study_goes_on(ray_local, tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path / "div.yaml",
        name="div",
        fixed={"epochs": 3, "batch_size": 50, "arch": "ConvNet"},
        space={"lr": {"grid": [0.01, 1.0e12]}},
        repeats=1,
    )
    outcome = run_study(spec, storage=tmp_path, report=False)
    trials = pd.read_parquet(tmp_path / "div" / "results" / "trials.parquet").set_index("lr")
    assert outcome.counts == {"TERMINATED": 1, "DIVERGED": 1} and not outcome.failed
    assert trials.loc[1.0e12, "status"] == "DIVERGED"
    assert "non-finite" in trials.loc[1.0e12, "error"]
    assert trials.loc[0.01, "status"] == "TERMINATED" and trials.loc[0.01, "epochs_done"] == 3
    assert trials.loc[1.0e12, "epochs_done"] == 0  # diverged in its first epoch: no epoch finished
    epochs = pd.read_parquet(tmp_path / "div" / "results" / "epochs.parquet")
    diverged_id = trials.loc[1.0e12, "trial_id"]
    assert epochs.loc[epochs["trial_id"] == diverged_id, "diverged"].tolist() == [1]


def test_smoke_form_of_every_shipped_space(ray_local, tmp_path: Path) -> None:
    for path in sorted((REPO / "search_spaces").glob("*.yaml")):
        outcome = run_study(path, smoke=True, storage=tmp_path, report=False)
        assert outcome.counts.get("TERMINATED", 0) >= 1 and not outcome.failed, (path.name, outcome.counts)
        trials = pd.read_parquet(outcome.study_dir / "results" / "trials.parquet")
        assert (trials["epochs_done"] == 1).all() and trials["seed"].nunique() == 1


def test_study_on_uri_storage(ray_local, tmp_path: Path, monkeypatch, capsys) -> None:
    """Shared storage by URI (file:// here; s3:// on a cluster) goes through the same pyarrow.fs path."""
    import study.storage
    from study.cli import main

    monkeypatch.setattr(study.storage, "CACHE", tmp_path / "cache")
    uri = f"file://{tmp_path}/shared"
    spec = write_spec(tmp_path / "uri.yaml", name="uri", repeats=1, fixed={"epochs": 1, "batch_size": 50})
    outcome = run_study(spec, storage=uri, report=False)
    assert outcome.counts == {"TERMINATED": 2}
    remote = tmp_path / "shared" / "uri"
    assert (remote / "spec.yaml").exists() and len(list(remote.glob("trial_*"))) == 2
    trials = pd.read_parquet(remote / "results" / "trials.parquet")
    assert len(trials) == 2 and set(trials["status"]) == {"TERMINATED"}
    assert not list((tmp_path / "cache").rglob("checkpoint_*"))  # the local mirror leaves checkpoints out

    capsys.readouterr()
    assert main(["ls", "--storage", uri]) == 0
    assert capsys.readouterr().out.split() == ["uri", "2", "terminated"]
    (remote / "results" / "report.html").unlink(missing_ok=True)
    assert main(["report", "uri", "--storage", uri]) == 0
    assert (remote / "results" / "report.html").stat().st_size > 100_000


def test_optuna_search_with_repeats_and_asha(ray_local, tmp_path: Path) -> None:
    """Optuna TPE through Ray's OptunaSearch; each suggested config runs once per seed (Repeater)."""
    spec = write_spec(
        tmp_path / "optuna.yaml",
        name="optuna",
        fixed={"epochs": 2, "arch": "ConvNet"},
        space={"lr": {"loguniform": [0.001, 0.1]}, "batch_size": {"choice": [25, 50]}},
        repeats=2,
        search={"algorithm": "optuna", "num_samples": 3, "seed": 1},
        scheduler={"type": "asha", "grace_period": 1},
    )
    outcome = run_study(spec, storage=tmp_path, report=False)
    trials = pd.read_parquet(outcome.study_dir / "results" / "trials.parquet")
    assert len(trials) == 6 and set(trials["status"]) <= {"TERMINATED", "STOPPED"}
    stopped = trials[trials["status"] == "STOPPED"]
    assert (stopped["epochs_done"] < 2).all()  # ASHA stopped them early; left out of means
    assert sorted(trials["seed"]) == [0, 0, 0, 1, 1, 1]
    groups = trials.groupby(["lr", "batch_size"])["seed"].apply(sorted)
    assert len(groups) == 3 and all(g == [0, 1] for g in groups)  # 3 configs x 2 seeds
    assert trials["lr"].between(0.001, 0.1).all() and set(trials["batch_size"]) <= {25, 50}
    assert "__trial_index__" not in trials.columns


def test_random_search_repeats_each_sampled_config_per_seed(ray_local, tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path / "random.yaml",
        name="random",
        fixed={"epochs": 1, "arch": "ConvNet", "batch_size": 50},
        space={"lr": {"loguniform": [0.001, 0.1]}},
        repeats=2,
        search={"algorithm": "random", "num_samples": 2, "seed": 3},
    )
    outcome = run_study(spec, storage=tmp_path, report=False)
    trials = pd.read_parquet(outcome.study_dir / "results" / "trials.parquet")
    assert len(trials) == 4
    by_lr = trials.groupby("lr")["seed"].apply(sorted)
    assert len(by_lr) == 2 and all(s == [0, 1] for s in by_lr)


def test_failed_start_does_not_lock_the_study(ray_local, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "big.yaml", name="big", repeats=1, fixed={"epochs": 1})
    with pytest.raises(UserError, match="n_train: 5000 pairs need 10000 distinct images"):
        run_study(spec, storage=tmp_path, overrides=["data.n_train=5000"], report=False)
    assert not (tmp_path / "big" / "spec.yaml").exists()
    assert run_study(spec, storage=tmp_path, report=False).counts == {"TERMINATED": 2}
    with pytest.raises(UserError, match="--name 'a/b': must be 1-100 letters"):
        run_study(spec, storage=tmp_path, name="a/b", report=False)
