"""The GPU tier: every test here is marked ``gpu`` and runs on CUDA; without CUDA it is skipped.

``STUDY_GPU_TIER_DEVICE=cpu`` runs the same tests on the CPU (the dry run of
``scripts/gpu_check.sh --dry-run``: it proves the tests themselves work, not GPU behaviour), with
``STUDY_GPU_TIER_QUICK=1`` taking one variant per family instead of all of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DEVICE_ENV = "STUDY_GPU_TIER_DEVICE"  # cpu: run the tier on the CPU (dry run)
QUICK_ENV = "STUDY_GPU_TIER_QUICK"  # 1: one variant per family
HERE = Path(__file__).parent


def tier_device() -> torch.device | None:
    """The device the tier runs on: CUDA when present, the CPU when asked for, else None (skip)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get(DEVICE_ENV) == "cpu":
        return torch.device("cpu")
    return None


def quick() -> bool:
    return os.environ.get(QUICK_ENV) == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason=f"no CUDA device (set {DEVICE_ENV}=cpu for the CPU dry run)")
    for item in items:
        if HERE not in Path(str(item.fspath)).parents:
            continue
        item.add_marker(pytest.mark.gpu)
        if tier_device() is None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> torch.device:
    d = tier_device()
    if d is None:
        pytest.skip("no CUDA device")
    return d
