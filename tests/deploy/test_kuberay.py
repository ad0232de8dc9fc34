"""deploy/kuberay/*.yaml and deploy/docker/Dockerfile, checked without a Kubernetes cluster.

The RayJob has the fields KubeRay's ray.io/v1 RayJob needs (as in KubeRay's own
`ray-job.sample.yaml`); its Ray version, its images' tags and the Dockerfile's base image all
equal the `ray` pin in pyproject.toml; every pod mounts the results volume the entrypoint writes
to; the entrypoint is a `study run` the CLI parses, on a spec that validates; the explorer's
command is one the CLI parses.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from study.cli import build_parser, main
from tests.conftest import REPO

KUBERAY = REPO / "deploy" / "kuberay"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
IMAGE_ROOT = "/home/ray/study-platform"  # WORKDIR of the Dockerfile: the repository inside the image
MOUNT = "/mnt/studies"


def _pinned_ray() -> str:
    """The version in the ``"ray[...]==X"`` line of pyproject.toml's dependencies."""
    versions = re.findall(r'^\s*"ray(?:\[[^\]]*\])?==([\w.]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert len(versions) == 1, versions
    return versions[0]


def _docs(name: str) -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]
    return {d["kind"]: d for d in docs}


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return _docs("rayjob.yaml")["RayJob"]


def _pod_specs(rayjob: dict) -> list[dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]


def test_rayjob_has_the_fields_kuberay_requires(rayjob: dict) -> None:
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rayjob["metadata"]["name"])  # a DNS label
    spec = rayjob["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 1  # retried jobs resume
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # a map of strings in the CRD
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head runs the driver, no trials
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"  # the submitter pod reaches the Jobs API
    assert head["template"]["spec"]["containers"][0]["name"] == "ray-head"
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265} <= ports
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["template"]["spec"]["containers"]
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray wants env_vars as strings
    assert float(env["env_vars"]["STUDY_LOCK_STALE_S"]) > 0


def test_ray_version_matches_the_pin(rayjob: dict) -> None:
    pinned = _pinned_ray()
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == pinned
    images = [c["image"] for pod in _pod_specs(rayjob) for c in pod["containers"]]
    images.append(_docs("explorer.yaml")["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"])
    for image in images:
        assert image.rsplit(":", 1)[1].startswith(f"ray-{pinned}"), image
    text = DOCKERFILE.read_text()
    assert f"ARG RAY_VERSION={pinned}\n" in text
    assert "FROM rayproject/ray:${RAY_VERSION}-py311${FLAVOR}" in text
    assert f"WORKDIR {IMAGE_ROOT}\n" in text
    assert re.search(r"^RUN pip install --no-cache-dir \. ", text, re.M)  # installed at build time


def test_every_pod_mounts_the_results_volume(rayjob: dict) -> None:
    claim = _docs("rayjob.yaml")["PersistentVolumeClaim"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # workers write checkpoints themselves
    explorer = _docs("explorer.yaml")["Deployment"]["spec"]["template"]["spec"]
    for pod in [*_pod_specs(rayjob), explorer]:
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert volumes[mounts[MOUNT]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_entrypoint_is_a_study_run_the_cli_accepts(rayjob: dict, capsys: pytest.CaptureFixture) -> None:
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[0] == "study"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.address == "auto"
    assert args.storage == MOUNT or args.storage.startswith(f"{MOUNT}/")
    assert args.spec.startswith(f"{IMAGE_ROOT}/")
    local_spec = REPO / Path(args.spec).relative_to(IMAGE_ROOT)  # the file the image holds (COPY search_spaces)
    assert local_spec.is_file(), local_spec
    sets = [a for o in args.overrides for a in ("--set", o)]
    assert main(["validate", str(local_spec), *sets]) == 0, capsys.readouterr().err
    assert ": ok (" in capsys.readouterr().out


def test_explorer_command_is_one_the_cli_accepts() -> None:
    container = _docs("explorer.yaml")["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    argv = container["command"]
    assert argv[:2] == ["study", "serve"]
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # the subcommands argparse knows
    if "serve" not in commands:
        pytest.skip("`study serve` is not in this CLI yet")
    args = parser.parse_args(argv[1:])
    assert args.storage == MOUNT
    assert {p["containerPort"] for p in container["ports"]} == {args.port}  # the port kubectl port-forward reaches
    assert getattr(args, "host", "127.0.0.1") == "127.0.0.1"  # loopback: only through the port-forward
