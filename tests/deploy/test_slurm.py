"""scripts/slurm/study.sbatch on a simulated two-node SLURM allocation, requeued once.

No SLURM here: `srun` and `scontrol` are small stand-ins on PATH (`srun -w NODE CMD` runs CMD on
this machine and logs the node it was meant for; `scontrol show hostnames` splits the node list),
and the job's variables (SLURM_JOB_ID, SLURM_JOB_NODELIST, ...) are set as sbatch sets them. The
Ray head and the worker are real `ray start --block` processes on 127.0.0.1, each with its own
temp dir, ports and RAY_TMPDIR (cleaned up by process group and by that RAY_TMPDIR, never with
`ray stop`, which would stop every Ray on the machine).

The job is killed (SIGKILL of everything: a lost allocation) after the first of two trials has
finished; its lock is rewritten as a lost node's (another host, a fresh heartbeat); the requeued
job (SLURM_RESTART_COUNT=1, other nodes) takes the lock over, resumes, and finishes the second
trial without running the first again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.cluster.conftest import CLUSTER_ENV, _free_port, _pids_with_env
from tests.conftest import REPO, result_rows

pytestmark = pytest.mark.cluster

SCRIPT = REPO / "scripts" / "slurm" / "study.sbatch"
JOB_ID = "4242"
EPOCHS = 12
# 2 trials (weight_sharing true/false), one at a time, each long enough (1,250 pairs x 12 epochs) that the
# saved state records the first finished while the second still trains
OVERRIDES = [
    "repeats=1", f"fixed.epochs={EPOCHS}", "data.n_train=1250", "data.n_test=200", "space.aux_loss.grid=[true]",
    "search.max_concurrent=1", "paper={}",  # the paper rows name arms this 2-trial variant leaves out
]  # fmt: skip
RUN_TIMEOUT_S = 600  # one whole job: cluster start, imports, both trials (loaded 2-core machine)

SRUN = """#!/bin/bash
# srun stand-in: runs the command here, as if on the node given with -w
node=""
while [ $# -gt 0 ]; do
  case "$1" in
    -w|--nodelist) node=$2; shift 2 ;;
    --nodelist=*) node=${1#*=}; shift ;;
    -N|-n) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
echo "$node $*" >> "$SIM_SRUN_LOG"
export SLURMD_NODENAME=$node
exec "$@"
"""
SCONTROL = """#!/bin/bash
# scontrol stand-in: `show hostnames LIST` (comma-separated) and `requeue ID` (logged)
case "$1" in
  show) echo "$3" | tr ',' '\\n' ;;
  requeue) echo "requeue $2" >> "$SIM_SRUN_LOG" ;;
  *) echo "scontrol stub: unsupported: $*" >&2; exit 1 ;;
esac
"""


def _stubs(where: Path) -> Path:
    bin_dir = where / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _job_env(tmp: Path, bin_dir: Path, shared: Path, nodes: str, restart: int) -> dict[str, str]:
    """The environment sbatch gives the script, for a job on `nodes` (its own Ray temp dir and ports)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's unix sockets live below it
    (ray_tmp / "w").mkdir()
    common = f"--object-store-memory={100 * 1024 * 1024} --dashboard-agent-listen-port=0"
    env = {**os.environ, **CLUSTER_ENV}
    for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "STUDY_STORAGE"):
        env.pop(var, None)
    env.update(
        PATH=f"{bin_dir}:{Path(sys.executable).parent}:{env.get('PATH', '')}",
        SLURM_JOB_ID=JOB_ID, SLURM_JOB_NODELIST=nodes, SLURM_JOB_NUM_NODES=str(len(nodes.split(","))),
        SLURM_CPUS_PER_TASK="1", SLURM_RESTART_COUNT=str(restart), SLURM_SUBMIT_DIR=str(REPO),
        SHARED=str(shared), SIM_SRUN_LOG=str(tmp / f"srun-{restart}.log"),
        RAY_TMPDIR=str(ray_tmp), RAY_HEAD_IP="127.0.0.1", RAY_PORT=str(_free_port()), RAY_START_TIMEOUT_S="240",
        RAY_HEAD_ARGS=f"--temp-dir={ray_tmp} --include-dashboard=false --ray-client-server-port={_free_port()} {common}",
        RAY_WORKER_ARGS=f"--node-ip-address=127.0.0.1 --temp-dir={ray_tmp}/w {common}",
        RAY_raylet_start_wait_time_s="120",  # a raylet registering on a loaded 2-core machine (Ray's default: 30 s)
        STUDY_LOCK_STALE_S="600",  # a lost node's lock is not stale by age here: only the job id lets it go
    )  # fmt: skip
    return env


def _start_job(env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = ["bash", str(SCRIPT), "search_spaces/quickstart.yaml", "--name", "slurm-requeue", "--no-report"]
    cmd += [a for o in OVERRIDES for a in ("--set", o)]
    return subprocess.Popen(cmd, env=env, cwd="/", stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def _kill_job(proc: subprocess.Popen, env: dict[str, str]) -> None:
    """SIGKILL the job's process group and every process carrying its RAY_TMPDIR (Ray's daemons and
    the trial workers, which live in process groups of their own), all at once: a lost allocation."""
    for pid in _pids_with_env("RAY_TMPDIR", env["RAY_TMPDIR"]):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = _pids_with_env("RAY_TMPDIR", env["RAY_TMPDIR"])
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    subprocess.run(["rm", "-rf", env["RAY_TMPDIR"]], check=False)


def _saved_terminated(study_dir: Path) -> int:
    """Trials the newest saved experiment state records as finished (what a resumed run keeps)."""
    states = sorted(study_dir.glob("experiment_state-*.json"))
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"] if states else []
    except (OSError, ValueError, KeyError):  # being written
        return 0
    return sum(json.loads(trial)["status"] == "TERMINATED" for trial, _ in trial_data)


def _finished_trials(study_dir: Path) -> dict[str, int]:
    """trial dir -> epochs reported, for trials that reported their last epoch."""
    rows = result_rows(study_dir)
    return {k: len(v) for k, v in rows.items() if v and v[-1].get("epoch") == EPOCHS}


def _wait(condition, proc: subprocess.Popen, log: Path, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"the job exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}:\n{log.read_text()[-3000:]}")


def test_requeued_job_resumes_the_study(tmp_path: Path) -> None:
    bin_dir = _stubs(tmp_path)
    shared = tmp_path / "shared"
    study_dir = shared / "studies" / "slurm-requeue"
    jobs: list[tuple[subprocess.Popen, dict[str, str]]] = []
    try:
        # --- the first run of the job: killed after the first trial finished ---
        env1 = _job_env(tmp_path, bin_dir, shared, "simnode1,simnode2", restart=0)
        log1 = tmp_path / "job-0.out"
        first = _start_job(env1, log1)
        jobs.append((first, env1))
        # killed as soon as one trial's results hold every epoch (whether or not Tune's saved state says so yet:
        # the requeued job adopts a trial whose results are complete)
        _wait(lambda: len(_finished_trials(study_dir)) >= 1, first, log1, "the first trial to finish", RUN_TIMEOUT_S)
        _kill_job(first, env1)
        done_before = _finished_trials(study_dir)
        out1 = log1.read_text()
        assert first.returncode == -signal.SIGKILL, f"the job ended before it was killed:\n{out1[-3000:]}"
        assert len(done_before) == 1, f"not one trial finished at the kill ({done_before}): timing\n{out1[-3000:]}"
        assert "Ray head up on simnode1" in out1 and "Ray cluster: 2 node(s)" in out1, out1
        calls = (tmp_path / "srun-0.log").read_text().splitlines()
        assert calls[0].startswith("simnode1 ray start --head --node-ip-address=127.0.0.1"), calls
        assert any(c.startswith("simnode2 ray start --address=127.0.0.1:") for c in calls), calls

        # what a lost node leaves: a lock of this job (restart 0) from a host that is gone, heartbeat fresh
        lock_file = study_dir / ".study.lock"
        holder = json.loads(lock_file.read_text())
        assert holder["slurm_job"] == JOB_ID and holder["slurm_restart"] == 0, holder
        lock_file.write_text(json.dumps({**holder, "host": "simnode1-lost", "heartbeat": time.time()}))

        # --- the requeued job, on other nodes ---
        env2 = _job_env(tmp_path, bin_dir, shared, "simnode3,simnode4", restart=1)
        log2 = tmp_path / "job-1.out"
        second = _start_job(env2, log2)
        jobs.append((second, env2))
        try:
            rc = second.wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the requeued job did not finish within {RUN_TIMEOUT_S}s:\n{log2.read_text()[-3000:]}")
        out2 = log2.read_text()
        assert rc == 0, out2
        assert "taking over the lock of a run that died" in out2 and "before its requeue" in out2, out2
        assert "resuming" in out2, out2
        assert (tmp_path / "srun-1.log").read_text().startswith("simnode3 ray start --head")

        trials = pd.read_parquet(study_dir / "results" / "trials.parquet")
        assert len(trials) == 2 and set(trials["status"]) == {"TERMINATED"}, trials[["trial_id", "status"]]
        after = result_rows(study_dir)
        for trial, n in done_before.items():  # a finished trial was not run again
            assert len(after[trial]) == n, (trial, n, len(after[trial]))
        assert all(rows[-1]["epoch"] == EPOCHS for rows in after.values())
        assert not lock_file.exists()  # released at the end
    finally:
        for proc, env in jobs:
            _kill_job(proc, env)
