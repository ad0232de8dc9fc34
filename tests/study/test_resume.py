"""A study interrupted mid-run (kill -9 of `study run` and its local Ray, as on machine loss; or
Ctrl-C) resumes when run again: every trial exactly once, checkpointed trials not restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

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

pytestmark = pytest.mark.e2e
# 250 steps of batch 5 per epoch: 0.5-0.9 s with two trials on 2 cores, so a kill lands mid-trial
EPOCHS = 8


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started: a lost machine
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.parametrize("how", ["kill-9", "ctrl-c"])
def test_interrupted_study_resumes_every_trial_exactly_once(tmp_path: Path, how: str) -> None:
    spec = write_spec(
        tmp_path / "resume.yaml",
        name="resume",
        data={"source": "mnist-5k", "n_train": 1250, "n_test": 500},
        fixed={"epochs": EPOCHS, "batch_size": 5},
        space={"arch": {"grid": ["ConvNet", "Siamese"]}},
        repeats=2,
    )
    storage = tmp_path / "studies"
    study_dir = storage / "resume"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    cmd = study_cmd("run", str(spec), "--storage", str(storage), "--no-report")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 240
    at_kill: dict[str, list[int]] = {}
    try:
        while time.time() < deadline:
            # progress by checkpoints on disk (result.json lags): some trial has 2, none more than 4
            done = [checkpoints_on_disk(d) for d in study_dir.glob("trial_*")]
            if done and max(done) >= 2:
                assert max(done) <= 4, f"the poll came too late to interrupt mid-trial: {done}"
                time.sleep(1.2)  # let the experiment state (saved every 1 s) record checkpoints
                at_kill = {name: epochs_of(rows) for name, rows in result_rows(study_dir).items()}
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("study did not reach epoch 2 in time")
        if how == "ctrl-c":  # Ctrl-C: the driver stops gracefully, says how to resume, exits 130
            os.kill(proc.pid, signal.SIGINT)
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 130, out.decode()[-3000:]
            assert "run the same command again to resume" in out.decode()
    finally:
        kill_group(proc)
    assert sum(len(e) == EPOCHS for e in at_kill.values()) < 4, "killed too late: the study had finished"
    saved = saved_checkpoint_epochs(study_dir)  # the driver is gone: what the rerun must continue from
    assert saved, "the saved state recorded no checkpoint before the interruption"

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, start_new_session=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resuming" in rerun.stdout

    trials = pd.read_parquet(study_dir / "results" / "trials.parquet")
    epochs = pd.read_parquet(study_dir / "results" / "epochs.parquet")
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert (trials["status"] == "TERMINATED").all(), trials[["trial_id", "status", "error"]]
    assert len(list(study_dir.glob("trial_*"))) == 4  # no trial was started a second time under a new id
    per_trial = epochs.groupby("trial_id")["epoch"].apply(sorted)
    assert all(e == list(range(1, EPOCHS + 1)) for e in per_trial), per_trial
    # trials the saved state had checkpoints for continued right after them instead of starting over
    rows = result_rows(study_dir)
    for name, epoch in saved.items():
        after = epochs_of(rows[name])
        assert after.count(1) == 1, (name, epoch, after)
        resumed = [rows[name][i]["epoch"] for i in restart_points(rows[name])]
        assert resumed and resumed[0] == epoch + 1, (name, epoch, after)
