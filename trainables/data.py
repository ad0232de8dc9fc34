"""The MNIST sources every family reads; the table of all data sources (`SOURCE_TABLE`,
`DATA_SOURCES`) is `trainables.sources`, re-exported here.

Two MNIST sources, both returning the same in-memory `ImageSet` (uint8 tensors, never a DataLoader):

- ``mnist``: torchvision's MNIST, downloaded once into a cache directory. The download is
  guarded by a file lock so that concurrent trials (or nodes sharing a disk) do not race.
- ``mnist-5k``: the 5,000-image sample bundled with this package (``assets/mnist_5k.npz``),
  split once into disjoint train and test halves (2,500 each) by a fixed permutation.

MNIST files already in the cache directory are read, never downloaded over; files there that
cannot be read are reported as malformed (one line naming the folder), not as a failed download.

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
from trainables.sources import DATA_SOURCES, MNIST_SOURCES, SOURCE_TABLE, DataSource  # noqa: F401 (re-exported)

SOURCES = MNIST_SOURCES  # the sources `load_mnist` reads (older name)

BUNDLED_MNIST = Path(__file__).parent / "assets" / "mnist_5k.npz"
DEFAULT_ROOT = "~/.cache/study-platform/data"  # where torchvision downloads go
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
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
    raise UserError(f"data.source: unknown source {source!r}; known: {', '.join(MNIST_SOURCES)}")


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

    def read() -> tuple | None:
        """Both splits if their files are in `root` (no network), None if they are not."""
        folder = root / "MNIST"
        raw = all((folder / "raw" / name).is_file() for name in MNIST_FILES)
        legacy = all((folder / "processed" / name).is_file() for name in ("training.pt", "test.pt"))
        if not (raw or legacy):
            return None
        try:
            return MNIST(str(root), train=True, download=False), MNIST(str(root), train=False, download=False)
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file, in whatever way it fails
            raise UserError(f"data.source=mnist: the MNIST files in {folder} are malformed ({_first_line(e)})") from None

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"data.root: cannot create the download directory {root} ({e.strerror or e})") from None
    splits = read()
    if splits is None:
        try:
            with FileLock(str(root / "mnist.download.lock"), timeout=1800):
                splits = read()  # another process may have downloaded it meanwhile
                if splits is None:
                    MNIST(str(root), train=True, download=True)
                    MNIST(str(root), train=False, download=True)
        except UserError:
            raise
        except Exception as e:  # network errors come in many types (URLError, HTTPError, RuntimeError)
            raise UserError(
                f"data.source=mnist: could not download mnist into {root} ({_first_line(e)}); "
                "offline, use the bundled sample: --set data.source=mnist-5k"
            ) from None
        splits = splits or read()
        if splits is None:
            raise UserError(f"data.source=mnist: the download into {root} left no readable MNIST files")
    train, test = splits
    return ImageSet(train.data, train.targets.long(), test.data, test.targets.long(), source="mnist")


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
