"""`study run` on a multi-node Ray cluster on this machine: spread, lost worker, lost driver, bad input.

Cluster shape (tests/cluster/conftest.py): a head with 0 CPUs (runs no trials, like cluster.yaml)
and 2 worker nodes of 1 CPU each, every node one `ray start --block` process group; trials ask
for cpu 1, so each worker runs one trial at a time and the head none. The driver is always a
`study run SPEC --address <GCS ip:port> --storage <tmp> --no-report` subprocess with the
cluster's environment: never `ray.init` in pytest, never `--address auto`.

Which node ran a trial: result.json rows carry `node_ip`, the same for every node here, and
`pid`; the GCS actor table (read with a GcsClient, no `ray.init`) gives the pid and node id of
every trial actor, dead ones included. The product reports nothing extra.

Measured here (2 cores shared with another study, load average 4-23; seconds, `--durations`):
- cluster start (head + 2 workers) 12-17, shut-down 2-10; fake_multinode head 7-11.
- spread, 4 trials x 3 epochs: 19-25 (with `study status`); trials ran on both workers, none on
  the head; `study status` prints "spread: 4 terminated".
- fixed cluster, `--set resources.gpu=1`: exit 2 with one line after 5-7.
- driver kill -9, 4 trials x 10 epochs (250 steps each, 0.5-0.9 s): killed with [1..4]/[1..2],
  [1..4]/[1..3] in result.json, the saved state had checkpoints at 4/2, 4/3: resumed at 5/3, 5/4
  (result.json can be ahead of the state snapshot: those epochs run twice, epochs.parquet keeps them
  once). No trial with a saved checkpoint restarted from epoch 1. Rerun 21-33.
- worker kill, 4 trials x 10 epochs: victim chosen by its checkpoints on disk (2-4 written; result.json,
  written by the driver, showed only [1] or [1, 2] then). It had num_failures 1 (the other 3: 0) and
  continued on the surviving worker from its last registered checkpoint: first epoch after the
  restore 5 or 6, epoch 1 reported once; all done 23-30 after the kill. Both kill tests: 94-127.
  (An earlier version picked the victim from result.json: that trial had already finished and its
  reused actor was running the next trial when the node died; CI caught it.)
- unreachable `--address 127.0.0.1:1`: exit 2 with one line after 5-7 (most of it importing
  torch and plotly); the test allows 30 (a hang would be ~14 min).
- autoscaling cluster, gpu 1: "waiting for the autoscaler" after 4-6; the autoscaler added the
  fake GPU node and the 1-trial study finished after 17-20.
Whole file: 3 min 0 s (twice, load 4-6), 3 min 17 s at load up to 23.
"""

from __future__ import annotations

import asyncio
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

pytestmark = pytest.mark.cluster

# Fault studies: 250 steps of batch 5 per epoch, 0.6-0.9 s on an idle worker (100 steps took 0.25 s:
# too fast for a kill to land mid-trial reliably), slower under load.
FAULT_EPOCHS = 10
FAULT_DATA = {"source": "mnist-5k", "n_train": 1250, "n_test": 500}
FAULT_FIXED = {"epochs": FAULT_EPOCHS, "batch_size": 5}
SPACE = {"arch": {"grid": ["ConvNet", "Siamese"]}}  # x 2 repeats = 4 trials


@pytest.fixture(scope="module")
def shared_cluster(module_cluster_factory):
    """One head (0 CPUs) + 2 workers (1 CPU) shared by the tests of this module: one cluster
    at a time keeps a loaded machine's GCS answering (two at once timed a worker out in CI)."""
    return module_cluster_factory(num_workers=2, cpus_per_worker=1)


@pytest.fixture
def cluster(shared_cluster):
    """The shared cluster with its 2 workers alive (a worker killed by an earlier test is replaced)."""
    missing = 2 - len(shared_cluster.worker_nodes)
    if missing > 0:
        shared_cluster.add_workers(missing, num_cpus=1)
    return shared_cluster


# --- helpers -------------------------------------------------------------------------


def driver_env(cluster) -> dict[str, str]:
    # snapshot the experiment state every second, so a killed driver loses at most ~1 epoch
    return {**cluster.env, "TUNE_GLOBAL_CHECKPOINT_S": "1"}


def run_cmd(cluster, spec: Path, storage: Path, *extra: str) -> list[str]:
    return study_cmd("run", str(spec), "--address", cluster.address, "--storage", str(storage), "--no-report", *extra)


def start_driver(cluster, cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:  # a file, not a pipe: nobody has to drain it while we poll
        return subprocess.Popen(cmd, cwd=REPO, env=driver_env(cluster), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    """Wait for the driver; kill it (only it) on timeout. Returns its output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        pytest.fail(f"study run did not finish within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
    return log.read_text()


def actor_nodes(cluster) -> dict[int, str]:
    """{pid: node id} of every actor the cluster ever ran (the GCS keeps dead actors)."""
    from ray._raylet import GcsClient

    gcs = GcsClient(address=cluster.address)

    async def fetch():
        return await gcs.async_get_all_actor_info(timeout=10)

    return {a.pid: a.address.node_id.hex() for a in asyncio.run(fetch()).values() if a.pid}


def node_info(cluster, node_id: str):
    """The GCS's GcsNodeInfo of a node (alive or dead): is_head_node, resources_total, ..."""
    from ray._raylet import GcsClient

    infos = GcsClient(address=cluster.address).get_all_node_info(timeout=10)
    return next(info for nid, info in infos.items() if nid.hex() == node_id)


def read_results(study_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    results = study_dir / "results"
    return pd.read_parquet(results / "trials.parquet"), pd.read_parquet(results / "epochs.parquet")


def assert_complete(study_dir: Path, n_trials: int, n_epochs: int) -> pd.DataFrame:
    """Every trial exactly once, TERMINATED, with every epoch 1..n_epochs exactly once."""
    trials, epochs = read_results(study_dir)
    assert len(trials) == n_trials and trials["trial_id"].is_unique, trials
    assert (trials["status"] == "TERMINATED").all(), trials[["trial_id", "status", "error"]]
    assert len(list(study_dir.glob("trial_*"))) == n_trials  # no trial started again under a new id
    assert sorted(epochs["trial_id"].unique()) == sorted(trials["trial_id"])
    per_trial = epochs.groupby("trial_id")["epoch"].apply(list)
    assert all(e == list(range(1, n_epochs + 1)) for e in per_trial), per_trial
    return trials


def wait_for(condition, proc: subprocess.Popen, log: Path, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"study run exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)
    proc.kill()
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{log.read_text()[-3000:]}")


# --- a healthy cluster ----------------------------------------------------------------


def test_trials_spread_over_both_workers_and_the_study_finishes(cluster, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spread.yaml", name="spread", fixed={"epochs": 3, "batch_size": 50}, space=SPACE)
    storage = tmp_path / "studies"
    run = subprocess.run(run_cmd(cluster, spec, storage), cwd=REPO, env=driver_env(cluster), capture_output=True,
                         text=True, timeout=180, start_new_session=True)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    study_dir = storage / "spread"
    assert_complete(study_dir, n_trials=4, n_epochs=3)

    nodes = actor_nodes(cluster)
    ran_on = {name: {nodes[r["pid"]] for r in rows} for name, rows in result_rows(study_dir).items()}
    used = set().union(*ran_on.values())
    assert used == {w.node_id for w in cluster.worker_nodes}, (ran_on, cluster.head.node_id)

    status = subprocess.run(study_cmd("status", "spread", "--storage", str(storage)), cwd=REPO, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0] == "spread: 4 terminated", status.stdout


def test_gpu_study_on_a_fixed_cluster_without_gpus_fails_fast(cluster, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "gpu.yaml", name="gpu")
    t0 = time.monotonic()
    run = subprocess.run(run_cmd(cluster, spec, tmp_path / "studies", "--set", "resources.gpu=1"), cwd=REPO,
                         env=driver_env(cluster), capture_output=True, text=True, timeout=60)  # fmt: skip
    elapsed = time.monotonic() - t0
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert "no node of this fixed-size cluster" in run.stderr
    assert [ln for ln in run.stderr.splitlines() if ln.strip()] == [run.stderr.strip()]  # one line
    assert elapsed < 30, elapsed
    assert not (tmp_path / "studies" / "gpu" / "spec.yaml").exists()  # nothing recorded for a study that never ran


# --- faults -------------------------------------------------------------------------


def test_driver_killed_mid_study_resumes_without_loss_or_duplicates(cluster, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "driver.yaml", name="driver", data=FAULT_DATA,
                      fixed=FAULT_FIXED, space=SPACE)  # fmt: skip
    storage = tmp_path / "studies"
    study_dir = storage / "driver"
    cmd = run_cmd(cluster, spec, storage)
    proc = start_driver(cluster, cmd, tmp_path / "run1.log")

    def mid_study():
        epochs = {name: epochs_of(rows) for name, rows in result_rows(study_dir).items()}
        return epochs if any(len(e) >= 2 for e in epochs.values()) else None

    try:
        wait_for(mid_study, proc, tmp_path / "run1.log", "a trial's epoch 2", timeout=150)
        time.sleep(1.5)  # let the experiment state (snapshot every 1 s) record the checkpoints
        at_kill = {name: epochs_of(rows) for name, rows in result_rows(study_dir).items()}
    finally:
        proc.kill()  # SIGKILL to the driver only (not its session): the cluster and its nodes stay
        proc.wait(30)
    assert sum(len(e) == FAULT_EPOCHS for e in at_kill.values()) < 4, "killed too late: the study had finished"
    saved = saved_checkpoint_epochs(study_dir)  # the driver is dead: this is what the rerun starts from

    t0 = time.monotonic()
    rerun = subprocess.run(cmd, cwd=REPO, env=driver_env(cluster), capture_output=True, text=True, timeout=240,
                           start_new_session=True)  # fmt: skip
    rerun_s = time.monotonic() - t0
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resuming" in rerun.stdout
    assert_complete(study_dir, n_trials=4, n_epochs=FAULT_EPOCHS)

    rows = result_rows(study_dir)
    after = {name: epochs_of(rs) for name, rs in rows.items()}
    resumed_at = {name: [rs[i]["epoch"] for i in restart_points(rs)] for name, rs in rows.items()}
    # Every trial the saved state had a checkpoint for continued right after it: not redone from epoch 1,
    # nothing skipped. (result.json may be a little ahead of the state: those epochs may run twice.)
    assert saved, "the saved state recorded no checkpoint before the kill"
    for name, epoch in saved.items():
        assert after[name].count(1) == 1, (name, epoch, after[name])
        assert resumed_at[name] and resumed_at[name][0] == epoch + 1, (name, epoch, after[name])
    print(f"\n[driver kill] epochs at kill {at_kill}; saved checkpoints {saved}; resumed at {resumed_at}; "
          f"rerun {rerun_s:.0f} s")  # fmt: skip


def test_worker_killed_mid_study_retries_its_trials_from_checkpoints(cluster, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "node.yaml", name="node", data=FAULT_DATA,
                      fixed=FAULT_FIXED, space=SPACE)  # fmt: skip
    storage = tmp_path / "studies"
    study_dir = storage / "node"
    log = tmp_path / "run.log"
    proc = start_driver(cluster, run_cmd(cluster, spec, storage), log)

    def victim():
        """(worker index, trial) of a trial that is running now with 2 to 4 checkpoints, so at least 6
        epochs (~4 s) to go. Judged by its checkpoints on disk, not by result.json: that lags, so a
        trial seen there mid-way may have finished and its reused actor be running the next one."""
        workers = {w.node_id: i for i, w in enumerate(cluster.worker_nodes)}
        for name, rows in result_rows(study_dir).items():
            if rows and 2 <= checkpoints_on_disk(study_dir / name) <= FAULT_EPOCHS - 6:
                node = actor_nodes(cluster).get(rows[-1]["pid"])
                if node in workers:
                    return workers[node], name
        return None

    try:
        index, name = wait_for(victim, proc, log, "a trial's epoch 2", timeout=150)
        at_kill = {n: epochs_of(rows) for n, rows in result_rows(study_dir).items()}
        dead = cluster.kill_worker(index)
        t_kill = time.monotonic()
        out = finish(proc, log, timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    after_kill_s = time.monotonic() - t_kill
    assert proc.returncode == 0, out[-3000:]
    trials = assert_complete(study_dir, n_trials=4, n_epochs=FAULT_EPOCHS)

    nodes = actor_nodes(cluster)
    rows = result_rows(study_dir)
    on_dead = {n for n, rs in rows.items() if any(nodes.get(r["pid"]) == dead for r in rs)}
    assert name in on_dead
    failures = dict(zip(trials["trial_id"], trials["num_failures"]))
    # the victim was running there when the node died; another trial may have finished there before
    assert failures[rows[name][-1]["trial_id"]] >= 1, (name, failures)
    for n, rs in rows.items():
        if n in on_dead:
            continue
        assert failures[rs[-1]["trial_id"]] == 0, (n, failures)

    # the driver said so in one line per failed attempt, no traceback
    assert "from its last checkpoint" in out and "retry 1 of 3" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]

    # the killed trial continued from its last checkpoint, on the surviving worker
    epochs = epochs_of(rows[name])
    assert epochs.count(1) == 1, epochs
    restarts = restart_points(rows[name])
    assert restarts, epochs
    last_before, first_after = rows[name][restarts[0] - 1]["epoch"], rows[name][restarts[0]]["epoch"]
    assert 1 < first_after <= last_before + 1, epochs  # no epoch skipped, none redone from 0
    assert nodes[rows[name][restarts[0]]["pid"]] != dead
    print(f"\n[node kill] victim {name} epochs at kill {at_kill[name]}, resumed at {first_after}, after {epochs}; "
          f"num_failures {failures}; finished {after_kill_s:.0f} s after the kill")  # fmt: skip


# --- bad input ------------------------------------------------------------------------


def test_unreachable_address_fails_in_seconds(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    t0 = time.monotonic()
    run = subprocess.run(study_cmd("run", str(spec), "--address", "127.0.0.1:1", "--storage", str(tmp_path / "st")),
                         cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    elapsed = time.monotonic() - t0
    assert run.returncode == 2, run.stdout + run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("study: error: --address 127.0.0.1:1"), run.stderr
    assert elapsed < 30, elapsed  # seconds, not the ~14 min ray.init would retry for


def test_gpu_study_on_an_autoscaling_cluster_waits_for_a_gpu_node(autoscaling_cluster, tmp_path: Path) -> None:
    cluster = autoscaling_cluster
    spec = write_spec(tmp_path / "gpu.yaml", name="gpu", fixed={"epochs": 1, "batch_size": 50},
                      space={"arch": {"grid": ["Siamese"]}}, repeats=1, resources={"cpu": 1, "gpu": 1})  # fmt: skip
    log = tmp_path / "run.log"
    t0 = time.monotonic()
    proc = start_driver(cluster, run_cmd(cluster, spec, tmp_path / "studies"), log)
    try:
        wait_for(lambda: "waiting for the autoscaler" in log.read_text(), proc, log, "the waiting line", timeout=60)
        waited_s = time.monotonic() - t0
        out = finish(proc, log, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, out[-3000:]
    study_dir = tmp_path / "studies" / "gpu"
    trials, _ = read_results(study_dir)
    assert list(trials["status"]) == ["TERMINATED"]
    (rows,) = result_rows(study_dir).values()
    node = node_info(cluster, actor_nodes(cluster)[rows[-1]["pid"]])  # ran on the GPU node the autoscaler added
    assert not node.is_head_node and node.resources_total.get("GPU") == 1, node
    print(f"\n[autoscaling] waiting line after {waited_s:.0f} s, study done after {time.monotonic() - t0:.0f} s")
