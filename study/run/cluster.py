"""The Ray a study runs on: local Ray by default (ending with the run: `study.run.reaper`), or a
cluster (``--address``), checked in seconds."""

from __future__ import annotations

import logging
import os
import sys

from core.errors import UserError
from study.spec.model import Spec


def init_ray(address: str | None) -> None:
    """Local Ray in-process by default; `address` ("auto", "host:port", "ray://...") joins a cluster."""
    import ray

    if ray.is_initialized():
        return
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    if address is None:
        _ray_in_its_own_process_group()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
        from study.run import reaper

        reaper.start()  # its Ray processes and trial workers end with this process, also after kill -9
        return
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--address {address}: cannot connect to a Ray cluster ({first})") from None


def _ray_in_its_own_process_group() -> None:
    """Start local Ray's head processes (GCS, raylet, monitors) in a process group of their own
    (Linux, Ray 2.60's ``ray._private.services.ConsolePopen``): a SIGTERM to the run's process
    group (``timeout``, ``kill -- -PGID``, a batch system) then reaches the driver only, which stops
    Tune gracefully, instead of killing the GCS under it (the run then hung on "Failed to connect to
    GCS" lines). They still end with the driver: Ray's own fate sharing (the parent-death signal)
    and `study.run.reaper`."""
    if not sys.platform.startswith("linux"):
        return
    try:
        from ray._private import services
    except ImportError:
        return
    base = getattr(services, "ConsolePopen", None)
    if base is None or getattr(base, "own_process_group", False):
        return

    class OwnProcessGroup(base):  # type: ignore[misc, valid-type]
        own_process_group = True

        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.setdefault("process_group", 0)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnProcessGroup


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not minutes, when an explicit host:port does not answer (ray.init retries ~14 min)."""
    import socket

    hostport = address.split("://", 1)[-1]
    if address == "auto" or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except ValueError:
        raise UserError(f"--address {address}: port must be a number (e.g. 10.0.0.5:6379 or auto)") from None
    except OSError as e:
        raise UserError(
            f"--address {address}: no Ray cluster answers there ({e.strerror or e}); "
            "on a cluster's head node use --address auto, from a laptop use `study submit`"
        ) from None


BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves the cluster's config on its head


def check_resources(spec: Spec) -> None:
    """Fail fast (one line) when the cluster can never give one trial what the spec asks for: a node
    for one worker's cpu/gpu on a fixed-size cluster, and all of a data-parallel trial's workers
    (``workers x cpu``, ``workers x gpu``) within what the cluster has, or, autoscaling, what it can
    grow to (`cluster_capacity`; not checked when that is unknown)."""
    import ray

    r = spec.resources
    if r.workers > 1:
        cap = cluster_capacity()
        for key, each in (("CPU", r.cpu), ("GPU", r.gpu)):
            have = cap.get(key, 0.0) if cap is not None else None
            if each > 0 and have is not None and r.workers * each > have + 1e-9:
                scope = "at most, with the autoscaler's largest size" if autoscaling_cluster() else "in all"
                raise UserError(
                    f"resources: a trial's {r.workers} workers x {key.lower()}={each:g} need {key}={r.workers * each:g}, "
                    f"but the cluster has {key}={have:g} ({scope}), so no trial could ever start; lower "
                    "resources.workers or resources.cpu/gpu with --set, or use a larger cluster"
                )
    need = {"CPU": r.cpu, "GPU": r.gpu}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(all(n.get(k, 0) >= v for k, v in need.items() if v > 0) for n in nodes):
        return
    if autoscaling_cluster():
        print(f"[study] no node has cpu={spec.resources.cpu:g}, gpu={spec.resources.gpu:g} yet: "
              "waiting for the autoscaler to add one", flush=True)  # fmt: skip
        return
    total = ray.cluster_resources()
    have = ", ".join(f"{k}={total.get(k, 0):g}" for k in need)
    raise UserError(
        f"resources: a trial asks for cpu={spec.resources.cpu:g}, gpu={spec.resources.gpu:g} but no node of this "
        f"fixed-size cluster has that (cluster total: {have}); lower resources.* with --set or use a cluster"
    )


def autoscaling_cluster() -> bool:
    """True when the cluster runs an autoscaler that can add nodes (then waiting is right).

    The autoscaler monitor of every head writes its report to the GCS key ``__autoscaling_status``
    (what ``ray status`` reads). Without an autoscaling config it runs read-only and names node
    types ``node_<id>``; a launcher cluster reports its configured types (tests/cluster/NOTES.md).
    """
    import json

    import ray

    try:
        from ray._raylet import GcsClient

        gcs = GcsClient(address=ray.get_runtime_context().gcs_address)
        raw = gcs.internal_kv_get(b"__autoscaling_status", None, timeout=5)
    except Exception:  # noqa: BLE001 - no report: treat as fixed-size
        return False
    if not raw:
        return False
    types = set((json.loads(raw).get("autoscaler_report") or {}).get("node_type_mapping", {}).values())
    return bool(types) and not all(t.startswith("node_") for t in types)


def cluster_capacity() -> dict[str, float] | None:
    """The most the cluster can hold ({"CPU", "GPU", "memory" (bytes)}): its resources now on a
    fixed-size cluster; on an autoscaling one, the largest size its config allows (the head's
    `BOOTSTRAP_CONFIG`: each node type's resources x max_workers), None when that is unknown."""
    import ray

    now = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
    if not autoscaling_cluster():
        return now
    return _autoscaler_max(now)


def _autoscaler_max(now: dict[str, float]) -> dict[str, float] | None:
    import yaml

    try:
        config = yaml.safe_load(open(os.path.expanduser(BOOTSTRAP_CONFIG), encoding="utf-8").read(1 << 20))
        types = config["available_node_types"]
        head = config.get("head_node_type")
        total: dict[str, float] = {}
        for name, node in types.items():
            count = int(node.get("max_workers", 0) or 0) + (1 if name == head else 0)
            resources = node.get("resources")
            if count and not isinstance(resources, dict):
                return None  # detected at start: unknown until the node is up
            for key in ("CPU", "GPU"):
                total[key] = total.get(key, 0.0) + count * float((resources or {}).get(key, 0))
        return {**total, **({"memory": now["memory"]} if "memory" in now else {})} if total else None
    except (OSError, KeyError, TypeError, ValueError, AttributeError, yaml.YAMLError):
        return None
