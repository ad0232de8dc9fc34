"""The Ray a study runs on: local Ray by default, or a cluster (``--address``), checked in seconds."""

from __future__ import annotations

import logging
import os

from core.errors import UserError
from study.spec.model import Spec


def init_ray(address: str | None) -> None:
    """Local Ray in-process by default; `address` ("auto", "host:port", "ray://...") joins a cluster."""
    import ray

    if ray.is_initialized():
        return
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    if address is None:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
        return
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--address {address}: cannot connect to a Ray cluster ({first})") from None


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


def check_resources(spec: Spec) -> None:
    """Fail fast when a fixed-size cluster can never give one trial what the spec asks for."""
    import ray

    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
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
