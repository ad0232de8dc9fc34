"""scripts/slurm/study.sbatch's signal handling, with everything it starts simulated (fast tier).

`srun`, `scontrol`, `ray` and `study` are stand-ins on PATH: `ray start` and `study run` wait until
they get SIGTERM. USR1 (what SLURM sends before the time limit, `--signal=B:USR1@300`) stops the
study and requeues the job; TERM (scancel, preemption) stops it without a requeue; either way the
Ray steps are stopped before the script exits with the study's status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.deploy.test_slurm import SCONTROL, SCRIPT, SRUN

RAY = """#!/bin/bash
# ray stand-in: a cluster that answers at once; `start` runs until SIGTERM
case "$1" in
  health-check) exit 0 ;;
  status) printf 'Node status\\nActive:\\n 1 node_a\\n 1 node_b\\nPending:\\n (no pending nodes)\\n' ;;
  start) echo $$ >> "$SIM_DIR/ray-pids"; trap 'exit 0' TERM; while :; do sleep 0.1; done ;;
esac
"""
STUDY = """#!/bin/bash
# study stand-in: `study run` runs until SIGTERM, then exits 143 as the real one does
echo "study $*" >> "$SIM_SRUN_LOG"
trap 'echo "study got TERM" >> "$SIM_SRUN_LOG"; exit 143' TERM
touch "$SIM_DIR/study-running"
while :; do sleep 0.1; done
"""


@pytest.fixture
def job(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("ray", RAY), ("study", STUDY)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_", "STUDY_"))}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="99", SLURM_JOB_NODELIST="n1,n2",
               SLURM_CPUS_PER_TASK="2", SLURM_SUBMIT_DIR=str(REPO), SHARED=str(tmp_path / "shared"),
               RAY_HEAD_IP="127.0.0.1", SIM_DIR=str(tmp_path), SIM_SRUN_LOG=str(tmp_path / "calls.log"))  # fmt: skip
    proc = subprocess.Popen(["bash", str(SCRIPT), "search_spaces/quickstart.yaml", "--smoke"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "study-running").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "slow"
            time.sleep(0.05)
        yield proc, tmp_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _ended(proc: subprocess.Popen, tmp_path: Path) -> tuple[int, str, list[str]]:
    out, _ = proc.communicate(timeout=20)
    calls = (tmp_path / "calls.log").read_text().splitlines()
    for pid in map(int, (tmp_path / "ray-pids").read_text().split()):  # every Ray step was stopped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    return proc.returncode, out, calls


def test_the_time_limit_stops_the_study_and_requeues_the_job(job) -> None:
    proc, tmp_path = job
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls[0].startswith("n1 ray start --head --node-ip-address=127.0.0.1 --port=6379 --num-cpus=2")
    assert calls[1].startswith("n2 ray start --address=127.0.0.1:6379 --num-cpus=2")
    assert calls[2] == (f"study run search_spaces/quickstart.yaml --address auto --storage {tmp_path}/shared/studies "
                        "--smoke")  # fmt: skip
    os.kill(proc.pid, signal.SIGUSR1)
    rc, out, calls = _ended(proc, tmp_path)
    assert rc == 143, out
    assert calls[-2:] == ["study got TERM", "requeue 99"], calls
    assert "time limit near: requeueing job 99" in out


def test_scancel_stops_the_study_without_a_requeue(job) -> None:
    proc, tmp_path = job
    os.kill(proc.pid, signal.SIGTERM)
    rc, out, calls = _ended(proc, tmp_path)
    assert rc == 143, out
    assert calls[-1] == "study got TERM" and not any(c.startswith("requeue") for c in calls), calls


def test_outside_a_job_or_without_storage_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "STUDY_", "SHARED"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    proc = subprocess.run(["bash", str(SCRIPT), "search_spaces/quickstart.yaml"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "[slurm] error: set SHARED to a directory on the shared filesystem (studies go to $SHARED/studies)"
    proc = subprocess.run(["bash", str(SCRIPT), "no/such.yaml"], env={**env, "SHARED": str(tmp_path)}, cwd=REPO,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2 and "no/such.yaml: no such search-space file" in proc.stderr
