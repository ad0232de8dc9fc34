"""Checkpoints by time (``checkpoint_every_s``): tiny trials save at most every N seconds and at
their last epoch, report every epoch, and after ``kill -9`` lose at most that window."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, epochs_of, restart_points, result_rows, study_cmd, write_spec
from tests.trainables.test_shapes import FakeTune, pack_config
from trainables import common, get_family
from trainables.packing import run_pack_trial

FAMILY = get_family("digit_pairs")
TINY = {"arch": "ConvNet", "n_train": 100, "n_test": 100, "batch_size": 50, "epochs": 4, "lr": 0.01}


@pytest.fixture(scope="module")
def data():
    return FAMILY.load_data("mnist-5k", None)


class Clock:
    """time.monotonic for the trainables: `step` seconds per call."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def checkpointed_epochs(fake: FakeTune) -> list[int]:
    return [r["epoch"] for r, c in zip(fake.reports, fake.with_checkpoint) if c]


@pytest.fixture
def fake(monkeypatch):
    f = FakeTune(monkeypatch)
    f.with_checkpoint = []
    report = f.report

    def recording(metrics, checkpoint=None):
        f.with_checkpoint.append(checkpoint is not None)
        report(metrics, checkpoint)

    from ray import tune

    monkeypatch.setattr(tune, "report", recording)
    return f


def test_every_epoch_by_default(fake, data) -> None:
    common.run_trial({**TINY, "seed": 1}, data, family=FAMILY)
    assert [r["epoch"] for r in fake.reports] == [1, 2, 3, 4] and all(fake.with_checkpoint)


def test_a_long_window_saves_only_the_last_epoch(fake, data) -> None:
    common.run_trial({**TINY, "seed": 1, "checkpoint_every_s": 3600.0}, data, family=FAMILY)
    assert [r["epoch"] for r in fake.reports] == [1, 2, 3, 4]  # every epoch still reported
    assert checkpointed_epochs(fake) == [4]


def test_a_window_saves_when_it_has_passed(fake, data, monkeypatch) -> None:
    monkeypatch.setattr(common.time, "monotonic", Clock(1.0))  # each call one second later
    common.run_trial({**TINY, "seed": 1, "epochs": 6, "checkpoint_every_s": 2.5}, data, family=FAMILY)
    saved = checkpointed_epochs(fake)
    assert saved[-1] == 6 and 1 < len(saved) < 6, saved


def test_resume_from_a_windowed_checkpoint_matches_the_straight_run(monkeypatch, data) -> None:
    straight = FakeTune(monkeypatch)
    common.run_trial({**TINY, "seed": 2}, data, family=FAMILY)
    first = FakeTune(monkeypatch)
    common.run_trial({**TINY, "seed": 2, "epochs": 2, "checkpoint_every_s": 3600.0}, data, family=FAMILY)
    assert len(first.checkpoints) == 1  # the last epoch's
    resumed = FakeTune(monkeypatch, resume_from=first.checkpoints[-1])
    common.run_trial({**TINY, "seed": 2, "checkpoint_every_s": 3600.0}, data, family=FAMILY)
    assert [r["epoch"] for r in resumed.reports] == [3, 4]
    assert resumed.reports[-1]["train_loss"] == straight.reports[-1]["train_loss"]


def test_packs_follow_the_same_window(fake, data) -> None:
    shared = {**TINY, "checkpoint_every_s": 3600.0}
    run_pack_trial(pack_config(shared, [{"seed": 0, "lr": 0.01}, {"seed": 1, "lr": 0.05}]), data, family=FAMILY)
    assert [r["epoch"] for r in fake.reports] == [1, 2, 3, 4] and checkpointed_epochs(fake) == [4]


WINDOW_S = 2.0
EPOCHS = 40


def checkpoint_epochs(study_dir: Path) -> list[int]:
    """Epochs of the checkpoints on disk (the trial writes them itself; result.json lags behind)."""
    import torch

    out = []
    for d in study_dir.glob("trial_*/checkpoint_*"):
        try:
            out.append(int(torch.load(d / common.CHECKPOINT_FILE, weights_only=True)["epoch"]))
        except Exception:  # noqa: BLE001 - one being written at this moment
            continue
    return sorted(out)


@pytest.mark.fault
def test_kill_9_loses_at_most_the_window(tmp_path: Path) -> None:
    """One trial of short epochs checkpointing every 2 s; `study run` and its Ray killed with
    SIGKILL mid-window; the rerun resumes right after the newest checkpoint (at most the window
    before the kill), not from an older one and not from scratch; every epoch is in the tables once."""
    spec = write_spec(
        tmp_path / "cadence.yaml", name="cadence",
        data={"source": "mnist-5k", "n_train": 500, "n_test": 100},
        fixed={"epochs": EPOCHS, "batch_size": 10, "lr": 0.01, "checkpoint_every_s": WINDOW_S},
        space={"arch": {"grid": ["ConvNet"]}}, repeats=1,
    )  # fmt: skip
    storage = tmp_path / "studies"
    study_dir = storage / "cadence"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    cmd = study_cmd("run", str(spec), "--storage", str(storage), "--no-report")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if len(checkpoint_epochs(study_dir)) >= 2:
                time.sleep(WINDOW_S * 0.75)  # mid-window: the epochs since the newest checkpoint are lost
                at_kill = checkpoint_epochs(study_dir)
                newest_age = time.time() - max(d.stat().st_mtime for d in study_dir.glob("trial_*/checkpoint_*"))
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("the trial did not write two checkpoints in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert at_kill[-1] < EPOCHS, "killed too late: the trial had finished"
    assert len(at_kill) < at_kill[-1], f"a checkpoint every epoch, not by time: {at_kill}"
    assert newest_age <= WINDOW_S * 2, newest_age  # what the kill loses: at most about the window
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, start_new_session=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    epochs = pd.read_parquet(study_dir / "results" / "epochs.parquet")
    assert sorted(epochs["epoch"]) == list(range(1, EPOCHS + 1))  # each epoch once in the tables
    ((_, rows),) = result_rows(study_dir).items()
    starts = restart_points(rows)
    assert starts, "the rerun did not resume the trial"
    resumed_after = rows[starts[-1]]["epoch"] - 1
    # the newest checkpoint, or the one before when the saved experiment state had not yet recorded it
    assert resumed_after in at_kill[-2:], (resumed_after, at_kill)
    assert epochs_of(rows)[-1] == EPOCHS
