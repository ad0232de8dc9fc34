"""cluster.yaml passes the checks `ray up` runs before it contacts the cloud.

`ray up` (ray.autoscaler._private.commands._bootstrap_config) calls
`prepare_config` (merge the provider's defaults.yaml, merge setup commands, check
the docker section, fill per-node-type min/max workers), then the provider's
resource auto-detection (an AWS call, skipped here: our node types state their
resources), then `validate_config` (Ray's ray-schema.json, which forbids unknown
keys, plus the head/worker-count rules). We run the same two functions.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"

# Ports that must never be reachable from outside the cluster: dashboard and Jobs
# API, GCS, Ray Client.
PRIVATE_PORTS = {8265: "dashboard/Jobs API", 6379: "GCS", 10001: "Ray Client"}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def _validate(config: dict[str, Any]) -> None:
    validate_config(prepare_config(config))


def test_validates_like_ray_up(prepared: dict[str, Any]) -> None:
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize(
    "mutate, unexpected",
    [
        (lambda c: c.__setitem__("max_worker", c.pop("max_workers")), "max_worker"),
        (lambda c: c.__setitem__("idle_timeout_minute", 5), "idle_timeout_minute"),
        (lambda c: c["available_node_types"]["gpu_worker"].__setitem__("min_worker", 0), "min_worker"),
        (lambda c: c["docker"].__setitem__("imag", "x"), "imag"),
    ],
    ids=["top-level max_worker", "top-level idle_timeout_minute", "node-type min_worker", "docker imag"],
)
def test_typo_in_a_key_fails_validation(raw: dict[str, Any], mutate, unexpected: str) -> None:
    config = copy.deepcopy(raw)
    mutate(config)
    with pytest.raises(jsonschema.ValidationError, match=f"'{unexpected}' was unexpected"):
        _validate(config)


def test_head_runs_no_trials(prepared: dict[str, Any]) -> None:
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must advertise CPU: 0 so no trial lands on it"
    assert head.get("resources", {}).get("GPU", 0) == 0
    assert head["max_workers"] == 0


def test_workers_are_gpu_spot_and_scale_from_zero(prepared: dict[str, Any]) -> None:
    workers = {k: v for k, v in prepared["available_node_types"].items() if k != prepared["head_node_type"]}
    assert workers, "at least one worker node type"
    for name, node_type in workers.items():
        assert node_type["resources"].get("GPU", 0) >= 1, f"{name} has no GPU"
        assert node_type["min_workers"] == 0, f"{name} must scale from zero"
        assert node_type["max_workers"] >= 1
        assert node_type["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"


def _port_ranges(rule: dict[str, Any]) -> range:
    if str(rule.get("IpProtocol")) == "-1" or rule.get("FromPort", -1) == -1:
        return range(65536)
    return range(int(rule["FromPort"]), int(rule["ToPort"]) + 1)


def test_no_security_group_rule_opens_ray_ports(prepared: dict[str, Any]) -> None:
    rules = prepared["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        opened = [f"{p} ({what})" for p, what in PRIVATE_PORTS.items() if p in _port_ranges(rule)]
        assert not opened, f"security group rule {rule} opens {opened}; use `ray dashboard cluster.yaml`"


def test_dashboard_listens_on_loopback_only(prepared: dict[str, Any]) -> None:
    start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    assert "0.0.0.0" not in CLUSTER_YAML.read_text()


def test_token_auth_is_on(prepared: dict[str, Any]) -> None:
    options = " ".join(prepared["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in options
    # The token comes from the user's home directory, never from the repo.
    assert prepared["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_project_is_synced_and_installed(prepared: dict[str, Any]) -> None:
    assert prepared["file_mounts"]["~/study-platform"] == "."
    for excluded in (".venv", "studies", ".git"):
        assert excluded in prepared["rsync_exclude"]
    # merge_setup_commands puts setup_commands in front of head/worker setup.
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert "pip install -e ~/study-platform" in prepared[key]


def test_storage_is_s3_and_named_once() -> None:
    text = CLUSTER_YAML.read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    storage = re.findall(r"STUDY_STORAGE=(\S+)", code)
    assert len(storage) == 1 and storage[0].startswith("s3://"), storage
    assert len(re.findall(r"s3://", code)) == 1, "name the S3 storage path exactly once"


def test_no_credentials_in_file() -> None:
    text = CLUSTER_YAML.read_text()
    for pattern in (r"AKIA[0-9A-Z]{16}", r"aws_secret_access_key", r"BEGIN [A-Z ]*PRIVATE KEY", r"RAY_AUTH_TOKEN="):
        assert not re.search(pattern, text, re.IGNORECASE), f"credential-like text matching {pattern!r}"
