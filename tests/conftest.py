from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parents[1]
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


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
