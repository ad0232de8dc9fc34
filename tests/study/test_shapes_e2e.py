"""Trial shapes end to end on a real local Ray: a packed study is its members in every
table; a 2-worker DDP study (gloo) reports each epoch once, matches the 1-worker study at the same
global batch, and resumes after kill -9 from its last checkpoint."""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from study.results import study_counts
from study.runner import run_study
from tests.conftest import (
    REPO,
    checkpoints_on_disk,
    epochs_of,
    restart_points,
    result_rows,
    saved_checkpoint_epochs,
    study_cmd,
    write_spec,
)
from tests.study.test_resume import kill_group

pytestmark = pytest.mark.e2e
DDP_TOL = 1e-4  # |2 workers - 1 worker| of losses (Siamese: no BatchNorm, so only the all-reduce's rounding)


def test_packed_study_is_its_members(ray_local, tmp_path: Path) -> None:
    space = {"arch": {"grid": ["ConvNet", "Siamese"]}, "lr": {"grid": [0.01, 0.05]}}
    fixed = {"epochs": 2, "batch_size": 50}
    packed = write_spec(tmp_path / "packed.yaml", name="packed", space=space, fixed=fixed, pack=4)
    plain = write_spec(tmp_path / "plain.yaml", name="plain", space=space, fixed=fixed)
    out = io.StringIO()
    got = run_study(packed, storage=tmp_path, report=False, out=out)
    assert got.counts == {"TERMINATED": 8}, out.getvalue()
    assert "8/8 done, 0 running, 0 failed" in out.getvalue()  # progress counts members
    assert len(list((tmp_path / "packed").glob("trial_*"))) == 2  # two packs of 4 (2 lr x 2 seeds per net)
    assert run_study(plain, storage=tmp_path, report=False).counts == {"TERMINATED": 8}

    trials = pd.read_parquet(tmp_path / "packed" / "results" / "trials.parquet")
    epochs = pd.read_parquet(tmp_path / "packed" / "results" / "epochs.parquet")
    assert len(trials) == 8 and trials["trial_id"].is_unique and trials["trial_id"].str.contains("-m").all()
    assert sorted(trials.groupby(["arch", "lr"])["seed"].apply(sorted).tolist()) == [[0, 1]] * 4
    assert len(epochs) == 16 and (epochs.groupby("trial_id")["epoch"].apply(list).map(lambda e: e == [1, 2])).all()
    ref = pd.read_parquet(tmp_path / "plain" / "results" / "trials.parquet").set_index(["arch", "lr", "seed"])
    mine = trials.set_index(["arch", "lr", "seed"]).loc[ref.index]
    # the same arithmetic up to float32 operation order: all but one member agree to 1e-5, and SGD at
    # lr 0.05 may amplify the rounding of one member's stacked (vmap) matmuls to 1e-3 of its loss
    loss_diff = abs(mine["final_train_loss"] - ref["final_train_loss"])
    assert (loss_diff < 1e-5).sum() >= len(loss_diff) - 1, loss_diff
    assert (loss_diff < 1e-3 * ref["final_train_loss"].abs()).all(), loss_diff
    assert (abs(mine["final_test_acc"] - ref["final_test_acc"]) <= 0.011).all()  # 200 test pairs: 2 at most
    assert (mine["params"] == ref["params"]).all()
    assert study_counts(tmp_path / "packed") == {"TERMINATED": 8}
    again = io.StringIO()
    run_study(packed, storage=tmp_path, report=False, out=again)  # complete: nothing rerun
    assert "already complete (8 terminated)" in again.getvalue()


def ddp_spec(tmp_path: Path, name: str, workers: int, **fixed) -> Path:
    return write_spec(
        tmp_path / f"{name}.yaml",
        name=name,
        data={"source": "mnist-5k", "n_train": 200, "n_test": 200},
        fixed={"epochs": 2, "batch_size": 50, "lr": 0.1, **fixed},
        space={"arch": {"grid": ["Siamese"]}},
        repeats=1,
        resources={"cpu": 1, "workers": workers},
    )


def test_two_worker_trial_matches_one_worker(ray_local, tmp_path: Path) -> None:
    assert run_study(ddp_spec(tmp_path, "ddp2", 2), storage=tmp_path, report=False).counts == {"TERMINATED": 1}
    assert run_study(ddp_spec(tmp_path, "ddp1", 1), storage=tmp_path, report=False).counts == {"TERMINATED": 1}
    rows = next(iter(result_rows(tmp_path / "ddp2").values()))
    assert epochs_of(rows) == [1, 2]  # each epoch reported once
    (trial_dir,) = (tmp_path / "ddp2").glob("trial_*")
    assert [c.name for c in trial_dir.glob("checkpoint_*")] == ["checkpoint_000001"]  # Tune's, as one worker
    assert not list(trial_dir.glob("ddp-*"))  # Train keeps no second copy
    two = pd.read_parquet(tmp_path / "ddp2" / "results" / "epochs.parquet").set_index("epoch")
    one = pd.read_parquet(tmp_path / "ddp1" / "results" / "epochs.parquet").set_index("epoch")
    for k in ("train_loss", "test_loss"):
        assert (abs(two[k] - one[k]) < DDP_TOL).all(), (k, two[k].tolist(), one[k].tolist())
    assert (abs(two["train_acc"] - one["train_acc"]) <= 0.01).all()
    assert one.loc[2, "train_loss"] < one.loc[1, "train_loss"]  # it learns: the comparison means something


def test_two_worker_study_resumes_after_kill(tmp_path: Path) -> None:
    epochs = 6
    spec = write_spec(
        tmp_path / "ddpkill.yaml",
        name="ddpkill",
        data={"source": "mnist-5k", "n_train": 1000, "n_test": 200},
        fixed={"epochs": epochs, "batch_size": 4},
        space={"arch": {"grid": ["Siamese"]}},
        repeats=1,
        resources={"cpu": 1, "workers": 2},
    )
    storage = tmp_path / "studies"
    study_dir = storage / "ddpkill"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    cmd = study_cmd("run", str(spec), "--storage", str(storage), "--no-report")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            done = [checkpoints_on_disk(d) for d in study_dir.glob("trial_*")]
            if done and max(done) >= 2:
                assert max(done) < epochs, f"the poll came too late to interrupt mid-trial: {done}"
                time.sleep(1.5)  # let the experiment state (saved every 1 s) record the checkpoints
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            time.sleep(0.3)
        else:
            pytest.fail("the DDP study did not reach epoch 2 in time")
    finally:
        kill_group(proc)
    saved = saved_checkpoint_epochs(study_dir)
    assert saved, "the saved state recorded no checkpoint before the kill"

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, start_new_session=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resuming" in rerun.stdout
    trials = pd.read_parquet(study_dir / "results" / "trials.parquet")
    assert len(trials) == 1 and (trials["status"] == "TERMINATED").all(), trials[["status", "error"]]
    got = pd.read_parquet(study_dir / "results" / "epochs.parquet")
    assert sorted(got["epoch"]) == list(range(1, epochs + 1))
    rows = result_rows(study_dir)
    for name, epoch in saved.items():
        reported = epochs_of(rows[name])
        assert reported.count(1) == 1, reported  # not restarted from scratch
        resumed = [rows[name][i]["epoch"] for i in restart_points(rows[name])]
        assert resumed and resumed[0] == epoch + 1, (epoch, reported)
