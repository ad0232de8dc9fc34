"""Shared fixtures and helpers, and the test tiers' rules.

Tiers (pytest markers, registered in pyproject.toml): plain `pytest` runs the fast tier; `e2e`
(a real local Ray), `fault` (kills and corrupts real runs), `cluster` (multi-node Ray on this
machine), `browser` (headless Chromium) and `gpu` (CUDA; skipped without it) run with `-m TIER`,
all of them with `-m ""`. Every test has a timeout (pyproject's `timeout`); the slow tiers get
`TIER_TIMEOUT_S` unless a test sets its own `@pytest.mark.timeout`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parents[1]
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

# Per-test timeouts (seconds) of the slow tiers, longest first; other tests get pyproject's 300 s.
TIER_TIMEOUT_S = {"cluster": 900, "fault": 600, "e2e": 480}

# Tests without Ray that take too long for the fast tier (measured with --durations on 2 shared
# cores, load 4-15): they run in the e2e tier. Listed by node id here so that their files stay as they are.
SLOW_TESTS = {
    # the model listing of the biggest shipped spaces (every distinct model built and its FLOPs counted)
    "tests/study/test_models.py::test_every_shipped_space_lists_its_models[wsms_cifar.yaml]": "176 s",
    "tests/study/test_models.py::test_every_shipped_space_lists_its_models[ssm_imagenet.yaml]": "42 s",
    "tests/study/test_models.py::test_every_shipped_space_lists_its_models[encapnet_capconv.yaml]": "37 s",
    "tests/study/test_models.py::test_every_shipped_space_lists_its_models[encapnet_ot.yaml]": "24 s",
    "tests/study/test_models.py::test_every_shipped_space_lists_its_models[wsms_imagenet.yaml]": "17 s",
    "tests/study/test_models.py::test_every_shipped_space_lists_its_models[ssm_cifar.yaml]": "11 s",
    "tests/study/test_models.py::test_every_shipped_space_lists_its_models[ssm_cifar100.yaml]": "10 s",
    # the same ImageNet listings again, with their exact counts (the fast tier keeps those counts through
    # tests/docs: the generated parameter tables of these spaces must stay as committed)
    "tests/trainables/test_wsms.py::test_imagenet_space_lists_the_exact_counts": "31 s",
    "tests/trainables/test_ssm.py::test_models_listing_of_the_imagenet_space": "27 s",
    # limits on huge specs (aliases expanded, long values shortened): seconds of YAML work each
    "tests/study/test_hardening.py::test_huge_values_are_shortened_in_errors": "41 s",
}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the e2e mark added here must count
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow unit tests join the e2e tier; slow tiers get their longer timeout; `gpu` tests are
    skipped without CUDA (unless `STUDY_GPU_TIER_DEVICE=cpu` asks for the CPU dry run of tests/gpu/)."""
    cuda: bool | None = None
    for item in items:
        if item.nodeid in SLOW_TESTS:
            item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("timeout") is None:
            for tier, seconds in TIER_TIMEOUT_S.items():
                if item.get_closest_marker(tier) is not None:
                    item.add_marker(pytest.mark.timeout(seconds))
                    break
        if item.get_closest_marker("gpu") is not None:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available() or os.environ.get("STUDY_GPU_TIER_DEVICE") == "cpu"
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs CUDA (gpu tier)"))


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray for the whole session (never attaches to another cluster)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def write_spec(path: Path, **overrides) -> Path:
    """A tiny digit-pair spec on the bundled sample; keyword args replace top-level keys."""
    raw = {
        "name": "tiny",
        "trainable": "digit_pairs",
        "data": {"source": "mnist-5k", "n_train": 200, "n_test": 200},
        "fixed": {"epochs": 2, "batch_size": 50, "lr": 0.01},
        "space": {"arch": {"grid": ["ConvNet", "Siamese"]}},
        "repeats": 2,
        "metric": "test_acc",
        "mode": "max",
        "resources": {"cpu": 1},
    }
    raw.update(overrides)
    path.write_text(yaml.safe_dump(raw))
    return path


def study_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "study.cli", *args]


def checkpoints_on_disk(trial_dir: Path) -> int:
    """How many checkpoints a trial has written: the trial persists them itself, so unlike result.json
    (written by the driver, 2-4 epochs behind) this is its real progress while it runs."""
    return len(list(trial_dir.glob("checkpoint_*")))


def saved_checkpoint_epochs(study_dir: Path) -> dict[str, int]:
    """{trial dir name: epoch of its latest checkpoint} for every unfinished trial the newest saved
    experiment state records with one: what a resumed driver must continue from rather than redo.
    Read from the trial's pickled checkpoint manager, the one Tune restores from: `last_result` can be
    an epoch ahead of it (a result is recorded before its checkpoint is registered)."""
    import ray.cloudpickle

    state = json.loads(sorted(study_dir.glob("experiment_state-*.json"))[-1].read_text())
    out = {}
    for trial_json, meta_json in state["trial_data"]:
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        if trial.get("status") in ("TERMINATED", "ERROR"):
            continue
        manager = ray.cloudpickle.loads(bytes.fromhex(meta["checkpoint_manager"]["value"]))
        latest = manager.latest_checkpoint_result
        epochs = trial.get("config", {}).get("epochs", math.inf)
        # a trial saved at its last epoch, not yet marked finished, reports that epoch again: left out
        if latest is not None and latest.checkpoint is not None and latest.metrics["epoch"] < epochs:
            out[trial.get("relative_logdir") or f"trial_{trial['trial_id']}"] = latest.metrics["epoch"]
    return out


def result_rows(study_dir: Path) -> dict[str, list[dict]]:
    """{trial dir name: its result.json rows} (a line cut mid-write is skipped)."""
    out = {}
    for f in sorted(study_dir.glob("trial_*/result.json")):
        rows = []
        for line in f.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        out[f.parent.name] = rows
    return out


def epochs_of(rows: list[dict]) -> list[int]:
    return [r["epoch"] for r in rows if "epoch" in r]


def restart_points(rows: list[dict]) -> list[int]:
    """Indices of the rows a trial reported first after being restored (from a checkpoint or not)."""
    return [i for i, r in enumerate(rows) if i and r.get("iterations_since_restore") == 1]
