"""Multi-node Ray clusters on one machine, for fault tests (see NOTES.md).

Every node is one `ray start --block` process in its own process group, so killing a
node is `killpg(SIGKILL)` (what a reclaimed spot instance looks like to Ray), and
clean-up kills exactly the groups this harness started, plus any process carrying this
cluster's private RAY_TMPDIR: never `ray stop`, which stops every Ray on the machine.
Each cluster has its own temp dir (via RAY_TMPDIR, so not even
/tmp/ray/ray_current_cluster is shared), picks free ports, binds its dashboard to
127.0.0.1, and sets RAY_AUTH_MODE explicitly (off unless auth_token is given).

Fixtures:
    multinode_cluster: head (0 CPUs, like cluster.yaml) + 2 workers with 1 CPU each.
    local_cluster_factory / module_cluster_factory: start(num_workers=.., dashboard=..,
        auth_token=..) -> LocalRayCluster, shut down after the test / the module.
    autoscaling_cluster: head started with fake_multinode.yaml (workers from zero).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

RAY_BIN = str(Path(sys.executable).parent / "ray")
FAKE_MULTINODE_YAML = Path(__file__).with_name("fake_multinode.yaml")

# Seconds to wait for a node to start / join / be declared dead before failing the test.
START_TIMEOUT_S = 90.0
# Whole-cluster start attempts (head + workers) before a fixture fails.
START_ATTEMPTS = 2
# Seconds to wait for a killed node's `ray start` process to be reaped.
STOP_GRACE_S = 10.0
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # per node; Ray's minimum is ~75 MiB

# Environment of every process of the cluster (and what a subprocess driver needs).
CLUSTER_ENV = {
    # Explicit: with RAY_AUTH_MODE unset, `ray start --head` turns token auth on
    # whenever ~/.ray/auth_token exists (any earlier ray.init() on the machine creates it).
    "RAY_AUTH_MODE": "disabled",
    # SIGTERM to `ray start --block` otherwise drains the node for 30 s before exiting.
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    # GCS declares a killed node dead after ~2 s instead of ~15 s (defaults 3 s x 5).
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "4",
    "RAY_USAGE_STATS_ENABLED": "0",
}


@dataclass
class Node:
    """One `ray start --block` process group. `node_id` is Ray's hex node id."""

    name: str
    proc: subprocess.Popen
    log: Path
    node_id: str = ""

    @property
    def pgid(self) -> int:
        return self.proc.pid


@dataclass
class LocalRayCluster:
    """A Ray cluster of local nodes. Connect with ray.init(address=cluster.address)
    in-process, or run a driver subprocess with env=cluster.env."""

    temp_dir: Path
    auth_token: str | None = None  # None: token auth off; else RAY_AUTH_MODE=token with this token
    address: str = ""  # "ip:port" of the GCS
    dashboard_url: str | None = None  # "http://127.0.0.1:port" (Jobs API) if started with dashboard=True
    head: Node | None = None
    worker_nodes: list[Node] = field(default_factory=list)
    _all: list[Node] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, **CLUSTER_ENV, "RAY_TMPDIR": str(self.temp_dir), "RAY_ADDRESS": self.address}
        for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):  # never the machine's ~/.ray token settings
            env.pop(var, None)
        if self.auth_token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.auth_token)
        return env

    # --- starting -------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Node:
        log = self.temp_dir / f"{name}.log"
        env = {**self.env, **(extra_env or {})}
        if not self.address:
            env.pop("RAY_ADDRESS")
        proc = subprocess.Popen(
            [RAY_BIN, "start", "--block", "--disable-usage-stats", *args],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the unit we kill
        )
        node = Node(name, proc, log)
        self._all.append(node)
        return node

    def start_head(
        self,
        *,
        num_cpus: int = 0,
        dashboard: bool = False,
        autoscaling_config: Path | None = None,
        gcs_port: int = 0,
    ) -> None:
        """Start the head node; gcs_port 0 lets the GCS pick a free port."""
        args = [
            "--head",
            f"--port={gcs_port}",
            f"--num-cpus={num_cpus}",
            f"--temp-dir={self.temp_dir}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--ray-client-server-port={_free_port()}",
            "--dashboard-agent-listen-port=0",
            f"--include-dashboard={str(dashboard).lower()}",
        ]
        port = _free_port() if dashboard else None
        if dashboard:
            args += ["--dashboard-host=127.0.0.1", f"--dashboard-port={port}"]
        extra_env = {}
        if autoscaling_config is not None:
            args.append(f"--autoscaling-config={autoscaling_config}")
            extra_env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        self.head = self._spawn("head", args, extra_env)
        address_file = self.temp_dir / "ray_current_cluster"  # written once the head is up
        _wait_for(lambda: address_file.exists() and address_file.read_text().strip(), self.head, "head to start")
        self.address = address_file.read_text().strip()
        if not self.auth_token:  # (this process's GCS client has no token: its auth mode is fixed at import)
            self.head.node_id = _wait_for(lambda: self._alive_node_id(None), self.head, "head to register")
        if dashboard:
            self.dashboard_url = f"http://127.0.0.1:{port}"
            url = f"{self.dashboard_url}/api/version"
            _wait_for(lambda: _http_ok(url, self.auth_token), self.head, "dashboard")

    def add_workers(
        self, n: int, *, num_cpus: int = 1, num_gpus: int = 0, resources: dict[str, float] | None = None
    ) -> list[Node]:
        """Start n worker nodes at once and wait until the GCS lists all of them alive."""
        if self.auth_token and n:
            raise NotImplementedError("worker nodes are tracked through the GCS, which needs the token: auth off")

        def spawn(name: str) -> Node:
            node_temp = self.temp_dir / name
            node_temp.mkdir()
            args = [
                f"--address={self.address}",
                f"--node-name={name}",  # how we find its node id in the GCS
                # Own temp dir: nodes started at once in one dir race for the same socket
                # and log names (raylet.1, ...) and one raylet dies with "Address already in use".
                f"--temp-dir={node_temp}",
                f"--num-cpus={num_cpus}",
                f"--num-gpus={num_gpus}",
                f"--object-store-memory={OBJECT_STORE_BYTES}",
                "--dashboard-agent-listen-port=0",
            ]
            if resources:
                args.append(f"--resources={json.dumps(resources)}")
            return self._spawn(name, args)

        def joined(name: str) -> str | None:
            if self.head is not None and self.head.proc.poll() is not None:
                raise _HeadDied(f"head exited with {self.head.proc.returncode}:\n{self._head_logs()}")
            return self._alive_node_id(name)

        first = sum(node.name.startswith("worker") for node in self._all)
        new = [spawn(f"worker{first + k}") for k in range(n)]
        for k, node in enumerate(new):
            try:
                node.node_id = _wait_for(lambda n=node.name: joined(n), node, f"{node.name} to join")
            except RuntimeError as err:
                if isinstance(err, _HeadDied) or not self._gcs_answers():
                    raise RuntimeError(f"{err}\nhead's GCS does not answer:\n{self._head_logs()}") from err
                # `ray start` gives a raylet 30 s (hard-coded) to register, which a loaded
                # machine can miss. Retry that node once, then give up.
                _kill_group(node, signal.SIGKILL)
                node = new[k] = spawn(f"{node.name}-retry")
                node.node_id = _wait_for(lambda n=node.name: joined(n), node, f"{node.name} to join")
        self.worker_nodes.extend(new)
        return new

    def add_worker(self, **kwargs) -> Node:
        """Start one worker node (e.g. to replace a killed one); kwargs as add_workers."""
        return self.add_workers(1, **kwargs)[0]

    # --- faults ---------------------------------------------------------------
    def kill_worker(self, i: int) -> str:
        """SIGKILL every process of worker node i (raylet, its trial workers, agents) and
        wait until the GCS declares it dead. Returns the dead node's id."""
        node = self.worker_nodes.pop(i)
        _kill_group(node, signal.SIGKILL)
        _wait_for(lambda: node.node_id not in self.alive_node_ids(), None, f"{node.name} to be declared dead")
        return node.node_id

    # --- state ----------------------------------------------------------------
    def alive_node_ids(self) -> set[str]:
        return {nid for nid, info in self._node_infos().items() if info.state == 0}  # 0 = ALIVE

    def _node_infos(self) -> dict:
        from ray._raylet import GcsClient

        infos = GcsClient(address=self.address).get_all_node_info(timeout=5)
        return {nid.hex(): info for nid, info in infos.items()}

    def _gcs_answers(self) -> bool:
        try:
            self._node_infos()
            return True
        except Exception:  # noqa: BLE001 (any RPC error: it does not answer)
            return False

    def _head_logs(self) -> str:
        """Tails of the head's `ray start` output and of its GCS server log, for error messages."""
        parts = [f"--- {self.head.log.name}\n{_tail(self.head.log, 15)}"] if self.head is not None else []
        for gcs_log in sorted(self.temp_dir.glob("session_*/logs/gcs_server.*"))[-2:]:
            parts.append(f"--- {gcs_log.name}\n{_tail(gcs_log, 15)}")
        return "\n".join(parts)

    def _alive_node_id(self, name: str | None) -> str | None:
        """Hex id of the alive node with this --node-name (None: the head)."""
        for node_id, info in self._node_infos().items():
            if info.state == 0 and (info.is_head_node if name is None else info.node_name == name):
                return node_id
        return None

    # --- clean-up -------------------------------------------------------------
    def shutdown(self) -> None:
        """Kill every process this cluster started (and nothing else); remove temp_dir."""
        _disconnect_driver_from(self.address)
        # SIGKILL, not SIGTERM: `ray start --block` sometimes hangs in its SIGTERM handler
        # (seen on worker nodes whose GCS went away), and the cluster keeps no state worth
        # a graceful stop: the GCS is in memory and temp_dir is removed below.
        for node in self._all:
            _kill_group(node, signal.SIGKILL)
        # Anything that left its node's process group but still carries this cluster's
        # private RAY_TMPDIR was started by this cluster (or by a driver given self.env).
        for pid in _pids_with_env("RAY_TMPDIR", str(self.temp_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class _HeadDied(RuntimeError):
    """The head's `ray start` process exited while workers were joining."""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_ok(url: str, token: str | None = None) -> bool:
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _wait_for(condition: Callable[[], object], node: Node | None, what: str, timeout: float = START_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node is not None and node.proc.poll() is not None:
            raise RuntimeError(f"{node.name} exited with {node.proc.returncode} waiting for {what}:\n{_tail(node.log)}")
        try:
            value = condition()
        except _HeadDied:
            raise
        except Exception:  # noqa: BLE001 (the GCS is not up yet: any RPC error means "not yet")
            value = None
        if value:
            return value
        time.sleep(0.1)
    log = f":\n{_tail(node.log)}" if node is not None else ""
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{log}")


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _pids_with_env(name: str, value: str) -> list[int]:
    """Processes (other than this one) whose environment has name=value, via /proc."""
    needle = f"{name}={value}".encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # exited meanwhile, or not ours to read
            continue
    return pids


def _kill_group(node: Node, sig: signal.Signals) -> None:
    """Send sig to the node's process group; for SIGKILL, wait (bounded) until it is empty."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pgid, sig)
    if sig != signal.SIGKILL:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        node.proc.wait(STOP_GRACE_S)  # reap our direct child
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:  # its children are reaped by init
        try:
            os.killpg(node.pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def _disconnect_driver_from(address: str) -> None:
    # A driver still connected when its GCS disappears exits the whole process after
    # gcs_rpc_server_reconnect_timeout_s: disconnect this (pytest) process first, but
    # only from this cluster (a session-wide local Ray of another fixture stays).
    import ray

    if address and ray.is_initialized() and ray.get_runtime_context().gcs_address == address:
        ray.shutdown()


def _new_cluster(auth_token: str | None = None) -> LocalRayCluster:
    # Short path under /tmp: Ray's unix sockets live below it (108-byte limit).
    return LocalRayCluster(temp_dir=Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")), auth_token=auth_token)


@contextlib.contextmanager
def _cluster_factory() -> Iterator[Callable[..., LocalRayCluster]]:
    clusters: list[LocalRayCluster] = []

    def start(
        *,
        num_workers: int = 2,
        cpus_per_worker: int = 1,
        gpus_per_worker: int = 0,
        worker_resources: dict[str, float] | None = None,
        dashboard: bool = False,
        auth_token: str | None = None,
    ) -> LocalRayCluster:
        # A node that cannot reach its GCS on a loaded machine (seen in CI: a worker's `ray start`
        # timing out on the head's GCS twice in a row) is retried once with a whole new cluster:
        # new temp dir, new head, new ports.
        for attempt in range(1, START_ATTEMPTS + 1):
            cluster = _new_cluster(auth_token)
            clusters.append(cluster)
            try:
                cluster.start_head(dashboard=dashboard)
                cluster.add_workers(num_workers, num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                    resources=worker_resources)  # fmt: skip
                return cluster
            except (RuntimeError, TimeoutError) as err:
                if attempt == START_ATTEMPTS:
                    raise
                print(f"\n[cluster] start attempt {attempt} failed, starting a new cluster: {err}", file=sys.stderr)
                cluster.shutdown()
        raise AssertionError("unreachable")

    try:
        yield start
    finally:
        for cluster in clusters:
            cluster.shutdown()


@pytest.fixture
def local_cluster_factory() -> Iterator[Callable[..., LocalRayCluster]]:
    """start(num_workers=2, cpus_per_worker=1, gpus_per_worker=0, worker_resources=None, dashboard=False,
    auth_token=None) -> a started LocalRayCluster; all are shut down after the test."""
    with _cluster_factory() as start:
        yield start


@pytest.fixture(scope="module")
def module_cluster_factory() -> Iterator[Callable[..., LocalRayCluster]]:
    """As local_cluster_factory, but clusters live until the test module ends (share one head)."""
    with _cluster_factory() as start:
        yield start


@pytest.fixture
def multinode_cluster(local_cluster_factory) -> LocalRayCluster:
    """Head with 0 CPUs (runs no trials, like cluster.yaml) + 2 workers with 1 CPU each."""
    return local_cluster_factory(num_workers=2, cpus_per_worker=1)


@pytest.fixture
def autoscaling_cluster() -> Iterator[LocalRayCluster]:
    """Head (0 CPUs) whose autoscaler adds fake_multinode.yaml workers from zero.
    `worker_nodes` stays empty: the autoscaler owns the workers (same process group)."""
    cluster = _new_cluster()
    config = yaml.safe_load(FAKE_MULTINODE_YAML.read_text())
    try:
        # The fake provider connects its nodes to <ip>:6379 unless told the GCS address;
        # the head is not up yet, so give the GCS a fixed free port.
        from ray._private.services import get_node_ip_address

        port = _free_port()
        config["provider"]["gcs_address"] = f"{get_node_ip_address()}:{port}"
        config_path = cluster.temp_dir / "fake_multinode.yaml"
        config_path.write_text(yaml.safe_dump(config))
        cluster.start_head(autoscaling_config=config_path, gcs_port=port)
        yield cluster
    finally:
        cluster.shutdown()
