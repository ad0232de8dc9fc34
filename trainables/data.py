"""MNIST sources shared by every study family.

Two sources, both returning the same in-memory `ImageSet` (uint8 tensors, never a DataLoader):

- ``mnist``: torchvision's MNIST, downloaded once into a cache directory. The download is
  guarded by a file lock so that concurrent trials (or nodes sharing a disk) do not race.
- ``mnist-5k``: the 5,000-image sample bundled with this package (``assets/mnist_5k.npz``),
  split once into disjoint train and test halves (2,500 each) by a fixed permutation.

Data is loaded once per study in the driver and reaches trials through the object store
(``tune.with_parameters``); per-trial derivation (pairs, transforms) happens in the trial.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError

BUNDLED_MNIST = Path(__file__).parent / "assets" / "mnist_5k.npz"
SOURCES = ("mnist", "mnist-5k")
DEFAULT_ROOT = "~/.cache/study-platform/data"  # where torchvision downloads go
SPLIT_SEED = 20180401  # fixed permutation that splits the bundled sample into halves


@dataclass(frozen=True)
class ImageSet:
    """Grey 28x28 digits as uint8 tensors: x (N, 28, 28), y (N,) int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            x, y = getattr(self, f"{name}_x"), getattr(self, f"{name}_y")
            if x.ndim != 3 or x.shape[0] != y.shape[0]:
                raise UserError(f"{self.source}: {name} images {tuple(x.shape)} do not match labels {tuple(y.shape)}")


def load_mnist(source: str, root: str | None = None) -> ImageSet:
    """Load an MNIST source by name (`mnist` or `mnist-5k`)."""
    if source == "mnist-5k":
        return _load_bundled()
    if source == "mnist":
        return _load_torchvision(Path(os.path.expanduser(root or DEFAULT_ROOT)))
    raise UserError(f"data.source: unknown source {source!r}; known: {', '.join(SOURCES)}")


def _load_bundled() -> ImageSet:
    try:
        with np.load(BUNDLED_MNIST) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{BUNDLED_MNIST}: cannot read the bundled MNIST sample ({e})") from None
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    half = len(perm) // 2
    x = torch.from_numpy(images.astype(np.uint8))
    y = torch.from_numpy(labels.astype(np.int64))
    tr, te = torch.from_numpy(perm[:half]), torch.from_numpy(perm[half:])
    return ImageSet(x[tr], y[tr], x[te], y[te], source="mnist-5k")


def _load_torchvision(root: Path) -> ImageSet:
    from filelock import FileLock
    from torchvision.datasets import MNIST

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"data.root: cannot create the download directory {root} ({e.strerror or e})") from None
    try:
        with FileLock(str(root / "mnist.download.lock"), timeout=1800):
            train = MNIST(str(root), train=True, download=True)
            test = MNIST(str(root), train=False, download=True)
    except Exception as e:  # network errors come in many types (URLError, HTTPError, RuntimeError)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"data.source=mnist: could not download mnist into {root} ({msg}); "
            "offline, use the bundled sample: --set data.source=mnist-5k"
        ) from None
    return ImageSet(train.data, train.targets.long(), test.data, test.targets.long(), source="mnist")
