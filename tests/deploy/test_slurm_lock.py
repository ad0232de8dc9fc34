"""The study lock across a SLURM requeue: the lock of an earlier run of the same job is taken over at
once, whatever host it names; any other live-looking lock still refuses the run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.errors import UserError
from study.lock import StudyLock
from study.storage import Store


def _foreign_lock(store: Store, name: str, **fields) -> Path:
    """A lock as a run on a host that is gone leaves it: fresh heartbeat, so not stale by age."""
    path = Path(store.study_path(name)) / ".study.lock"
    path.parent.mkdir(parents=True)
    holder = {"host": "node-that-is-gone", "pid": 4321, "pid_start": "1", "started": "earlier",
              "heartbeat": time.time(), **fields}  # fmt: skip
    path.write_text(json.dumps(holder))
    return path


def _slurm(monkeypatch: pytest.MonkeyPatch, job: str, restart: str | None) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", job)
    if restart is None:
        monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    else:
        monkeypatch.setenv("SLURM_RESTART_COUNT", restart)


def test_a_requeued_job_takes_over_its_earlier_runs_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.open(tmp_path)
    path = _foreign_lock(store, "s", slurm_job="77", slurm_restart=0)
    _slurm(monkeypatch, "77", "1")
    lock = StudyLock(store, "s").acquire()
    try:
        assert lock.note and "SLURM job 77" in lock.note and "before its requeue" in lock.note
        holder = json.loads(path.read_text())
        assert holder["slurm_job"] == "77" and holder["slurm_restart"] == 1 and holder["pid"] == lock.me["pid"]
    finally:
        lock.release()
    assert not path.exists()


@pytest.mark.parametrize(
    ("held_by", "job", "restart"),
    [
        ({"slurm_job": "77", "slurm_restart": 1}, "77", "1"),  # the same run of the job: two `study run`s in it
        ({"slurm_job": "77", "slurm_restart": 2}, "77", "1"),  # a later run (clocks or counts odd): not ours
        ({"slurm_job": "78", "slurm_restart": 0}, "77", "1"),  # another job
        ({}, "77", "1"),  # a run outside SLURM
    ],
)
def test_other_live_locks_still_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held_by: dict, job: str, restart: str
) -> None:
    store = Store.open(tmp_path)
    _foreign_lock(store, "s", **held_by)
    _slurm(monkeypatch, job, restart)
    with pytest.raises(UserError, match="is being run by another `study run` \\(host node-that-is-gone"):
        StudyLock(store, "s").acquire()


def test_outside_slurm_the_lock_names_no_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    lock = StudyLock(Store.open(tmp_path), "s")
    assert "slurm_job" not in lock.me
    _slurm(monkeypatch, "9", None)  # sbatch's first run sets no SLURM_RESTART_COUNT
    assert StudyLock(Store.open(tmp_path), "s").me["slurm_restart"] == 0
