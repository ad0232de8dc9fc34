"""A study interrupted mid-run (kill -9 of `study run` and its local Ray, as on machine loss; or
Ctrl-C) resumes when run again: every trial exactly once, checkpointed trials not restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, study_cmd, write_spec

pytestmark = pytest.mark.e2e
EPOCHS = 6


def epochs_reported(study_dir: Path) -> dict[str, list[int]]:
    out = {}
    for f in study_dir.glob("trial_*/result.json"):
        rows = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip().endswith("}")]
        out[f.parent.name] = [r["epoch"] for r in rows if "epoch" in r]
    return out


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
        data={"source": "mnist-5k", "n_train": 1000, "n_test": 500},
        fixed={"epochs": EPOCHS, "batch_size": 25},
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
            at_kill = epochs_reported(study_dir)
            started = [e for e in at_kill.values() if len(e) >= 2]
            if started and sum(len(e) == EPOCHS for e in at_kill.values()) < 4:
                time.sleep(1.5)  # let the experiment state record the checkpoints
                at_kill = epochs_reported(study_dir)
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
    # trials that had checkpoints when killed continued from them instead of starting over
    after = epochs_reported(study_dir)
    for name, before in at_kill.items():
        if len(before) >= 2:
            assert after[name].count(1) == 1, (name, before, after[name])
