"""Fault injection on real local runs (`study run` subprocesses, each with its own local Ray): a
second run of a running study, SIGTERM and what resuming after it does with a corrupt experiment
state and corrupt or crafted checkpoints, and a full disk.

One study is run once and stopped with SIGTERM while two of its trials have saved >= 2 checkpoints
(module fixture); the other tests copy it and break the copy before resuming it. Asserts are on
what a user sees: exit status, the one line, trial counts and epochs in the Parquet tables.
Measured on 2 cores shared with other developers (load average 6-12; `--durations`): the SIGTERM
fixture 63 s, the resume with bad checkpoints 169 s, the resume from the backup state 95 s, the
refused resume 10 s, the disk-full test 165 s (the stop and the resume); whole file 8.4 min (about
15 min at load 30). Every subprocess has a timeout. The disk-full test needs root (a 48 MB tmpfs)
and is skipped elsewhere.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

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

pytestmark = [pytest.mark.e2e, pytest.mark.fault]
EPOCHS = 8  # 250 steps of batch 5 per epoch: 0.5-2 s, so the signal lands mid-trial


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def slow_spec(path: Path) -> Path:
    return write_spec(
        path,
        name="slow",
        data={"source": "mnist-5k", "n_train": 1250, "n_test": 500},
        fixed={"epochs": EPOCHS, "batch_size": 5},
        space={"arch": {"grid": ["ConvNet", "Siamese"]}},
        repeats=2,
    )


ENV = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}


@pytest.fixture(scope="module")
def terminated(tmp_path_factory) -> SimpleNamespace:
    """The slow study, stopped by SIGTERM once two trials have >= 2 checkpoints on disk; a second
    `study run` of it is tried while it runs."""
    base = tmp_path_factory.mktemp("term")
    spec = slow_spec(base / "slow.yaml")
    storage = base / "studies"
    study = storage / "slow"
    cmd = study_cmd("run", str(spec), "--storage", str(storage), "--no-report")
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    second, second_s = None, None
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            assert proc.poll() is None, proc.communicate()
            if second is None and (study / ".study.lock").exists():
                t0 = time.time()
                second = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180)
                second_s = time.time() - t0
            ckpts = [checkpoints_on_disk(d) for d in study.glob("trial_*")]
            if second is not None and sum(n >= 2 for n in ckpts) >= 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the study did not reach 2 checkpoints in two trials in time")
        time.sleep(1.5)  # the saved state (every 1 s) records those checkpoints
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        kill_group(proc)
    return SimpleNamespace(base=base, spec=spec, storage=storage, study=study, code=proc.returncode, out=out,
                           err=err, pid=proc.pid, second=second, second_s=second_s)  # fmt: skip


def copy_of(t: SimpleNamespace, tmp_path: Path) -> tuple[Path, list[str]]:
    storage = tmp_path / "studies"
    shutil.copytree(t.storage, storage)
    return storage / "slow", study_cmd("run", str(t.spec), "--storage", str(storage), "--no-report")


def assert_complete(study: Path) -> pd.DataFrame:
    """All 4 trials finished with every epoch, none started twice under a new id."""
    trials = pd.read_parquet(study / "results" / "trials.parquet")
    epochs = pd.read_parquet(study / "results" / "epochs.parquet")
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all(), trials[["trial_id", "status", "error"]]
    assert (trials["epochs_done"] == EPOCHS).all()
    per_trial = epochs.groupby("trial_id")["epoch"].apply(sorted)
    assert all(e == list(range(1, EPOCHS + 1)) for e in per_trial), per_trial
    assert len(list(study.glob("trial_*"))) == 4
    return trials


# --- case 2 ----------------------------------------------------------------------------------------


def test_second_run_of_a_running_study_is_refused(terminated: SimpleNamespace) -> None:
    second = terminated.second
    assert second is not None and second.returncode == 2, (second.stdout, second.stderr)
    assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    assert (f"study slow is being run by another `study run` (host {socket.gethostname()}, "
            f"pid {terminated.pid}") in second.stderr  # fmt: skip
    assert "[study]" not in second.stdout  # it started nothing
    assert terminated.second_s < 60


# --- case 5 ----------------------------------------------------------------------------------------


def test_sigterm_stops_like_ctrl_c_with_exit_143(terminated: SimpleNamespace) -> None:
    assert terminated.code == 143, terminated.out[-3000:] + terminated.err[-3000:]
    assert terminated.err.strip().splitlines() == [
        "study: terminated (SIGTERM); run the same command again to resume"
    ], terminated.err
    assert "run the same command again to resume: study run " in terminated.out
    assert f"--storage {terminated.storage}" in terminated.out
    trials = pd.read_parquet(terminated.study / "results" / "trials.parquet")
    assert len(trials) == 4 and trials["status"].isin(["RUNNING", "PENDING", "TERMINATED"]).all()
    assert (trials["status"] != "TERMINATED").sum() >= 2  # stopped mid-study
    assert not (terminated.study / ".study.lock").exists()  # released


# --- cases 3, 4 (and 5's resume): crafted and corrupt checkpoints -----------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def resumed_with_bad_checkpoints(terminated: SimpleNamespace, tmp_path_factory) -> SimpleNamespace:
    """The SIGTERMed study, copied; trial A's checkpoints all truncated but its first, trial B's all
    replaced by a pickle that runs a shell command; then resumed."""
    tmp = tmp_path_factory.mktemp("badckpt")
    study, cmd = copy_of(terminated, tmp)
    saved = saved_checkpoint_epochs(study)  # {trial dir: epoch of its checkpoint in the saved state}
    ranked = sorted(saved, key=saved.get, reverse=True)
    assert len(ranked) >= 2 and saved[ranked[0]] >= 2, saved
    a, b = ranked[0], ranked[1]
    for ck in sorted((study / a).glob("checkpoint_*"))[1:]:
        (ck / "state.pt").write_bytes((ck / "state.pt").read_bytes()[:1000])
    marker = tmp / "code-ran"
    for ck in (study / b).glob("checkpoint_*"):
        with (ck / "state.pt").open("wb") as f:
            pickle.dump({"model": _Evil(marker)}, f)
    before = result_rows(study)
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    return SimpleNamespace(study=study, proc=proc, a=a, b=b, saved=saved, marker=marker, before=before)


def test_crafted_checkpoint_runs_no_code(resumed_with_bad_checkpoints: SimpleNamespace) -> None:
    r = resumed_with_bad_checkpoints
    assert r.proc.returncode == 0, r.proc.stdout[-3000:] + r.proc.stderr[-3000:]
    assert not r.marker.exists()  # torch.load(weights_only=True): the pickle's os.system never ran
    b_id = r.b.removeprefix("trial_")
    assert (f"[study] trial {b_id}: checkpoint checkpoint_" in r.proc.stdout
            and "no other is readable; restarted from epoch 1" in r.proc.stdout), r.proc.stdout  # fmt: skip
    trials = assert_complete(r.study).set_index("trial_id")
    assert trials.loc[b_id, "num_failures"] == 0  # not retried on the same bad file until ERROR


def test_corrupt_checkpoint_falls_back_to_the_newest_readable(resumed_with_bad_checkpoints: SimpleNamespace) -> None:
    r = resumed_with_bad_checkpoints
    assert r.proc.returncode == 0, r.proc.stdout[-3000:] + r.proc.stderr[-3000:]
    a_id = r.a.removeprefix("trial_")
    line = [ln for ln in r.proc.stdout.splitlines() if ln.startswith(f"[study] trial {a_id}: ")]
    assert len(line) == 1 and "cannot be read; resumed from checkpoint_000000 (epoch 1)" in line[0], r.proc.stdout
    trials = assert_complete(r.study).set_index("trial_id")
    assert trials.loc[a_id, "num_failures"] == 0 and trials.loc[a_id, "error"] is None
    rows = result_rows(r.study)[r.a]
    resumed = [rows[i]["epoch"] for i in restart_points(rows)]
    assert resumed and resumed[-1] == 2, epochs_of(rows)  # continued after epoch 1, its readable checkpoint
    # the other unfinished trials continued from their saved checkpoints (case 5's resume)
    for name, epoch in r.saved.items():
        if name in (r.a, r.b):
            continue
        rows = result_rows(r.study)[name]
        assert [rows[i]["epoch"] for i in restart_points(rows)][-1] == epoch + 1, (name, epoch, epochs_of(rows))


# --- case 1: a corrupt experiment state ------------------------------------------------------------


def test_corrupt_experiment_state_resumes_from_the_backup(terminated: SimpleNamespace, tmp_path: Path) -> None:
    study, cmd = copy_of(terminated, tmp_path)
    state = sorted(study.glob("experiment_state-*.json"))[-1]
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # as a full disk leaves it
    params = {d.name: (d / "params.json").read_text() for d in study.glob("trial_*") if (d / "params.json").exists()}
    status = subprocess.run(study_cmd("status", "slow", "--storage", str(study.parent)), cwd=REPO,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    first = status.stdout.splitlines()[0] if status.stdout else ""
    assert status.returncode == 0 and sum(int(w) for w in first.split() if w.isdigit()) == 4, status.stdout
    original = {p.name: p.read_bytes() for p in (terminated.study / ".state-backup").iterdir()}
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{state.name} is corrupt" in proc.stdout and "resuming from the backup copy" in proc.stdout
    # the copy keeps its backups in its own directory, never in the study it was copied from
    assert {p.name: p.read_bytes() for p in (terminated.study / ".state-backup").iterdir()} == original
    assert list((study / ".state-backup").glob("experiment_state-*.json"))
    assert_complete(study)
    assert {d: (study / d / "params.json").read_text() for d in params} == params  # none overwritten
    assert (study / f"{state.name}.corrupt").exists()


def test_corrupt_experiment_state_without_a_good_copy_is_refused(terminated: SimpleNamespace, tmp_path: Path) -> None:
    study, cmd = copy_of(terminated, tmp_path)
    state = sorted(study.glob("experiment_state-*.json"))[-1]
    state.write_bytes(state.read_bytes()[:500])
    shutil.rmtree(study / ".state-backup")
    rows_before = result_rows(study)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"{state}: not valid JSON" in proc.stderr and "no earlier good copy" in proc.stderr, proc.stderr
    assert result_rows(study) == rows_before and len(list(study.glob("trial_*"))) == 4  # nothing ran
    assert time.time() - t0 < 120 and "resuming" not in proc.stdout


# --- case 6: a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 48 MB tmpfs (needs root and mount; skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("needs root and mount to make a small file system")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path) -> None:
    """Write zeros until the file system is full (unbuffered: nothing left to flush on close)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        for size in (1 << 20, 1 << 12, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError:
                    break
    finally:
        os.close(fd)


def test_disk_full_stops_with_one_line_and_resumes(small_disk: Path, tmp_path: Path) -> None:
    spec = slow_spec(tmp_path / "slow.yaml")
    storage = small_disk / "studies"
    study = storage / "slow"
    cmd = study_cmd("run", str(spec), "--storage", str(storage), "--no-report")
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    filler = small_disk / "filler"
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            assert proc.poll() is None, proc.communicate()
            if max([checkpoints_on_disk(d) for d in study.glob("trial_*")] or [0]) >= 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoints in time")
        fill(filler)
        out, err = proc.communicate(timeout=400)
    finally:
        kill_group(proc)
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"--storage {storage}: no space left on device" in err and "run the same command again" in err
    assert "failed for good" not in out

    filler.unlink()
    rerun = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    trials = assert_complete(study)
    assert (trials["num_failures"] == 0).all() or "failed for good" not in rerun.stdout
