"""Image data for the CNN families (SSM, WSMS-Net, EncapNet): sources, shapes, augmentation, evaluation.

One data layer for every image family (PAPERS.md sections 3-5):

- **Sources** (`load_images`): ``cifar10``, ``cifar100``, ``svhn`` (torchvision, downloaded once
  into ``data.root`` under a file lock), ``imagenet`` (ILSVRC-2012 in the usual ``train/`` and
  ``val/`` class-folder layout under ``data.root``; never downloaded), ``imagenet-subset`` (the
  same restricted to the classes listed in ``data.classes_file``: EncapNet's 200-class
  h-ImageNet), and the offline ``mnist-5k`` (bundled) and ``mnist`` (torchvision).
- **Shapes.** In-memory data (MNIST, CIFAR, SVHN) stays uint8 at its native size; the family
  names the input shape it wants (channels, side) and `TrialImages.batch` adapts every batch to
  it on the device: grey -> 3 channels by replication (3 -> 1 by the mean), a side up to 1/4
  larger by zero padding (MNIST 28 -> 32 for the CIFAR nets: the digit keeps its pixel scale), a
  larger or smaller side by bilinear resizing (MNIST 28 -> 64 or 224 for the ImageNet nets).
- **Augmentation recipes** (config key ``augment``), each from its paper, vectorised on the
  batch and drawn from the trial's generator (deterministic per seed, on CPU or GPU):
  ``cifar`` (pad 4, random crop, horizontal flip: He et al. 2016, used by SSM/WSMS on CIFAR),
  ``encapnet`` (resize to 34/32 of the side, random crop, flip; EncapNet's logged runs, no
  normalisation: set ``normalize: false``), ``imagenet`` (random resized crop, scale 0.08-1,
  ratio 3/4-4/3, + flip; test images resized to 256/224 of the side and centre-cropped when read
  from files), ``none``.
- **File-backed data** (ImageNet) is read by a ``DataLoader`` over torchvision's ``ImageFolder``
  (workers from the trial's CPUs, pinned memory and persistent workers on GPU).
- **Evaluation** (`evaluate_images`): ``test_loss``, ``test_acc`` (top-1, fraction), ``test_err_pct``
  (the same as an error in percent, the papers' unit; ``test_err_top5_pct`` likewise),
  ``test_acc_top5`` when there are more than 10 classes, per-head accuracies for families whose
  forward returns several logits, and the scale-robustness metric ``test_acc_scale_<factor>``
  for each factor in ``scale_eval`` (`rescale`: shrink and zero-pad, or enlarge and centre-crop).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core import metrics as M
from core.errors import UserError
from core.metrics import Metric
from trainables import runtime  # data-parallel batch shards
from trainables.common import ConfigError, backward, check_finite
from trainables.data import DEFAULT_ROOT, ImageSet, load_mnist

IMAGE_SOURCES = ("mnist", "mnist-5k", "cifar10", "cifar100", "svhn", "imagenet", "imagenet-subset")
TENSOR_SOURCES = ("mnist", "mnist-5k", "cifar10", "cifar100", "svhn")
AUGMENTATIONS = ("none", "cifar", "encapnet", "imagenet")
NUM_CLASSES = {"mnist": 10, "mnist-5k": 10, "cifar10": 10, "cifar100": 100, "svhn": 10, "imagenet": 1000}
# per-channel mean/std of the training sets (0-1 pixel scale), as the papers' code normalises
MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
SCALE_METRIC = "test_acc_scale_{}"  # one metric per factor of `scale_eval`, e.g. test_acc_scale_0.5
SCALE_METRIC_PATTERN = r"test_acc_scale_\d+(\.\d+)?"
SUBSET_SEED = 20260101  # fixed permutation: n_train/n_test take its first images (nested subsets)

# Config keys every image family understands (merge into the family's `defaults`).
IMAGE_DEFAULTS: dict[str, Any] = {
    "num_classes": 0,  # classifier outputs; 0 = the data source's number of classes (filled in per trial)
    "augment": "auto",  # auto (the family's recipe for the source) | none | cifar | encapnet | imagenet
    "normalize": True,  # subtract the source's mean, divide by its std (per channel)
    "n_train": 0,  # training images used (0 = all); a fixed nested subset
    "n_test": 0,  # test images used (0 = all)
    "scale_eval": [],  # factors of the scaled test sets, e.g. [0.5, 0.75, 1.0, 1.5, 2.0]; [] = off
    "scale_eval_at": "epoch",  # epoch (every epoch) | end (last epoch only)
    "eval_batch_size": 256,  # test batch size (memory only; no effect on results)
    "loader_workers": -1,  # file-backed data: DataLoader workers (-1 = the trial's CPUs)
}


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class TensorImages:
    """In-memory uint8 images: x (N, C, H, W), y (N,) int64, for both splits."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    source: str

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            x, y = getattr(self, f"{name}_x"), getattr(self, f"{name}_y")
            if x.ndim != 4 or x.shape[0] != y.shape[0] or x.dtype != torch.uint8:
                raise UserError(
                    f"{self.source}: {name} images must be uint8 (N, C, H, W) matching {tuple(y.shape)} labels, "
                    f"got {x.dtype} {tuple(x.shape)}"
                )


@dataclass(frozen=True)
class FolderImages:
    """A class-folder image tree read from disk per batch: (path, class index) samples per split."""

    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    classes: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


Images = TensorImages | FolderImages


def load_images(source: str, root: str | None = None, *, classes_file: str | None = None) -> Images:
    """Load an image source by name (see the module docstring); one-line `UserError`s."""
    if source not in IMAGE_SOURCES:
        raise UserError(f"data.source: unknown image source {source!r}; known: {', '.join(IMAGE_SOURCES)}")
    if source in ("mnist", "mnist-5k"):
        return from_image_set(load_mnist(source, root))
    if source in ("imagenet", "imagenet-subset"):
        return load_image_folder(source, root, classes_file)
    return load_torchvision(source, Path(os.path.expanduser(root or DEFAULT_ROOT)))


def from_image_set(s: ImageSet) -> TensorImages:
    return TensorImages(s.train_x[:, None], s.train_y, s.test_x[:, None], s.test_y, 10, s.source)


def _hwc(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def load_torchvision(source: str, root: Path) -> TensorImages:
    """CIFAR-10/100 or SVHN through torchvision, downloaded once into `root` under a file lock.

    Files already in `root` are read, never downloaded over: the official ones silently, others
    that fail torchvision's checksum (a hand-made or converted copy) as they are, with a warning
    line. Only absent files are downloaded; a failed download, a lock held for an hour or a
    directory where the lock cannot be written is one line naming the source, the directory and
    the offline alternative.
    """
    from filelock import FileLock
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100, "svhn": datasets.SVHN}[source]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"data.root: cannot create the download directory {root} ({e.strerror or e})") from None

    def open_split(train: bool, download: bool, verify: bool) -> Any:
        kind = cls if verify else _unverified(cls)
        if source == "svhn":
            return kind(str(root), split="train" if train else "test", download=download)
        return kind(str(root), train=train, download=download)

    def read_existing() -> tuple[list[Any] | None, bool]:
        """The splits already in `root` (no network): (splits, verified), (None, False) if absent."""
        for verify in (True, False):  # the official files, else files there that differ from them
            try:
                return [open_split(t, download=False, verify=verify) for t in (True, False)], verify
            except Exception:  # noqa: BLE001 - missing, or not the official files
                continue
        return None, False

    def fail(why: str) -> UserError:
        return UserError(f"data.source={source}: could not download {source} into {root} ({why}); "
                         "offline, use the bundled sample: --set data.source=mnist-5k")  # fmt: skip

    splits, verified = read_existing()  # files there: read, never downloaded over
    if splits is None:
        from filelock import Timeout

        try:
            lock = FileLock(str(root / f"{source}.download.lock"), timeout=3600)
            lock.acquire()
        except Timeout:
            raise fail(f"another process has held {root / (source + '.download.lock')} for an hour") from None
        except OSError as e:  # a read-only or full cache directory
            raise fail(f"cannot write there: {e.strerror or e}") from None
        try:
            splits, verified = read_existing()  # another process may have downloaded it meanwhile
            if splits is None:
                try:
                    splits, verified = [open_split(t, download=True, verify=True) for t in (True, False)], True
                except Exception as e:  # network errors come in many types (URLError, HTTPError, RuntimeError)
                    raise fail(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        finally:
            lock.release()
    if not verified:
        print(f"[data] {source}: files in {root} differ from the official release's checksums; "
              "reading them as they are", file=sys.stderr, flush=True)  # fmt: skip
    train, test = splits
    if source == "svhn":  # (N, 3, 32, 32) uint8 already; labels 0-9
        tx, ty = _hwc(train.data), torch.as_tensor(train.labels, dtype=torch.int64)
        vx, vy = _hwc(test.data), torch.as_tensor(test.labels, dtype=torch.int64)
    else:  # (N, 32, 32, 3) uint8
        tx, ty = _hwc(train.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(train.targets)
        vx, vy = _hwc(test.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(test.targets)
    n_classes = NUM_CLASSES[source]
    for name, y in (("train", ty), ("test", vy)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
            raise UserError(f"data.source={source}: {name} labels outside 0..{n_classes - 1} in {root}")
    return TensorImages(tx.to(torch.uint8), ty.long(), vx.to(torch.uint8), vy.long(), n_classes, source)


def _unverified(cls: type) -> type:
    """The torchvision dataset class with its checksum test reduced to "the files exist"."""

    class Unverified(cls):  # type: ignore[misc, valid-type]
        def _check_integrity(self) -> bool:
            if hasattr(self, "train_list"):  # CIFAR
                folder = Path(self.root) / self.base_folder
                return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)
            return (Path(self.root) / self.filename).is_file()  # SVHN

        def _load_meta(self) -> None:  # CIFAR: class names without the checksum test
            import pickle

            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Unverified


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def load_image_folder(source: str, root: str | None, classes_file: str | None) -> FolderImages:
    """ILSVRC-2012 (or a class subset) from ``root/train/<class>/*`` and ``root/val/<class>/*``."""
    if not root:
        raise UserError(f"data.root: {source} is read from your own copy (root/train, root/val); set data.root")
    base = Path(os.path.expanduser(root))
    for split in ("train", "val"):
        if not (base / split).is_dir():
            raise UserError(
                f"data.root: {base} has no {split}/ directory; {source} needs the class-folder layout "
                "root/train/<class>/*.JPEG and root/val/<class>/*.JPEG"
            )
    wanted: list[str] | None = None
    if source == "imagenet-subset":
        if not classes_file:
            raise UserError("data.classes_file: imagenet-subset needs a file listing one class folder name per line")
        path = Path(os.path.expanduser(classes_file))
        try:
            wanted = [ln.split()[0] for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"data.classes_file: cannot read {path} ({getattr(e, 'strerror', None) or e})") from None
        if not wanted or len(set(wanted)) != len(wanted):
            raise UserError(f"data.classes_file: {path} must list distinct class names, one per line")
    elif classes_file:
        raise UserError("data.classes_file: only for data.source imagenet-subset")
    from torchvision.datasets.folder import find_classes, make_dataset

    splits = {}
    classes: list[str] = []
    for split in ("train", "val"):
        try:
            found, _ = find_classes(str(base / split))
        except FileNotFoundError as e:
            raise UserError(f"data.root: {base / split}: {e}") from None
        if wanted is not None:
            missing = [c for c in wanted if c not in found]
            if missing:
                raise UserError(
                    f"data.classes_file: class {missing[0]!r} has no folder in {base / split} "
                    f"({len(missing)} of {len(wanted)} missing)"
                )
            found = wanted
        if split == "train":
            classes = list(found)
        elif found != classes:
            raise UserError(f"data.root: {base}/val has other class folders than {base}/train")
        index = {c: i for i, c in enumerate(classes)}
        try:
            samples = make_dataset(str(base / split), index, extensions=IMAGE_EXTENSIONS)
        except FileNotFoundError as e:  # a class folder without images
            raise UserError(f"data.root: {base / split}: {str(e).splitlines()[0]}") from None
        splits[split] = samples
    return FolderImages(splits["train"], splits["val"], classes, source)


# ----------------------------------------------------------------------------- shapes


def adapt(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """A float batch (B, C, H, W) in [0, 1] at `channels` x `size` x `size` (see module docstring)."""
    c = x.shape[1]
    if c != channels:
        if c == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise UserError(f"cannot adapt {c}-channel images to {channels} channels")
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if h == w and size > h and (size - h) * 4 <= h:  # a little larger: pad, keep the pixel scale
        lo = (size - h) // 2
        return F.pad(x, (lo, size - h - lo, lo, size - h - lo))
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < h)


def rescale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The batch with its content scaled by `factor` at the same size: shrink and zero-pad (factor < 1)
    or enlarge and centre-crop (factor > 1). The scale-robustness test set of WSMS-Net (PAPERS.md 4)."""
    if factor <= 0:
        raise ValueError(f"scale factor must be > 0, got {factor}")
    h, w = x.shape[-2:]
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    if (nh, nw) == (h, w):
        return x
    y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=factor < 1)
    if factor < 1:
        top, left = (h - nh) // 2, (w - nw) // 2
        return F.pad(y, (left, w - nw - left, top, h - nh - top))
    top, left = (nh - h) // 2, (nw - w) // 2
    return y[..., top : top + h, left : left + w]


# ----------------------------------------------------------------------------- augmentation


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    mask = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def _random_crop(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """A random size x size window of each image (x at least that large), by gather."""
    b, _, h, w = x.shape
    oy = torch.randint(0, h - size + 1, (b,), generator=g).to(x.device)
    ox = torch.randint(0, w - size + 1, (b,), generator=g).to(x.device)
    ar = torch.arange(size, device=x.device)
    rows, cols = (oy[:, None] + ar)[:, None, :, None], (ox[:, None] + ar)[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[bi, ci, rows, cols]


def _random_resized_crop(x: torch.Tensor, g: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception-style random resized crop back to the input size, as one affine grid sample."""
    b = x.shape[0]
    area = _uniform(b, *scale, g)
    log_r = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), g)
    r = torch.exp(log_r)
    cw, ch = torch.sqrt(area * r).clamp(max=1.0), torch.sqrt(area / r).clamp(max=1.0)  # fractions of the side
    cx, cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - cw), (torch.rand(b, generator=g) * 2 - 1) * (1 - ch)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw, cx, ch, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, recipe: str, g: torch.Generator) -> torch.Tensor:
    """Apply a named recipe to a float batch (B, C, S, S); random numbers from `g` (CPU generator)."""
    if recipe == "none":
        return x
    s = x.shape[-1]
    if recipe == "cifar":  # pad 4, random crop, flip (He et al. 2016, CIFAR)
        pad = max(1, round(4 * s / 32))
        return _flip(_random_crop(F.pad(x, (pad, pad, pad, pad)), s, g), g)
    if recipe == "encapnet":  # resize 34, random crop 32, flip (EncapNet's logged runs)
        big = max(s + 1, round(34 * s / 32))
        x = F.interpolate(x, size=(big, big), mode="bilinear", align_corners=False)
        return _flip(_random_crop(x, s, g), g)
    if recipe == "imagenet":  # random resized crop + flip
        return _flip(_random_resized_crop(x, g), g)
    raise UserError(f"augment: unknown recipe {recipe!r}; known: {', '.join(AUGMENTATIONS)}")


# ----------------------------------------------------------------------------- per-trial data


@dataclass
class TrialImages:
    """What an image trial trains on: the source's images and the family's input shape."""

    data: Images
    channels: int
    size: int
    recipe: str  # resolved augmentation recipe
    normalize: bool
    train_index: torch.Tensor | None  # subset of the training split (None: all); tensor sources
    test_index: torch.Tensor | None
    workers: int = 0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    _loaders: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def source(self) -> str:
        return self.data.source

    @property
    def n_train(self) -> int:
        if isinstance(self.data, FolderImages):
            return len(self.train_samples)
        return len(self.train_index) if self.train_index is not None else len(self.data.train_y)

    @property
    def n_test(self) -> int:
        if isinstance(self.data, FolderImages):
            return len(self.test_samples)
        return len(self.test_index) if self.test_index is not None else len(self.data.test_y)

    @property
    def train_samples(self) -> list[tuple[str, int]]:
        assert isinstance(self.data, FolderImages)
        return _take(self.data.train, self.train_index)

    @property
    def test_samples(self) -> list[tuple[str, int]]:
        assert isinstance(self.data, FolderImages)
        return _take(self.data.test, self.test_index)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a [0, 1] batch (the last step before the model)."""
        if not self.normalize:
            return x
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype)[None, :, None, None]
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype)[None, :, None, None]
        return (x - mean) / std

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The training recipe on a batch (file-backed ImageNet batches come augmented by the loader)."""
        if isinstance(self.data, FolderImages) and self.recipe == "imagenet":
            return x
        return augment(x, self.recipe, generator)

    def batches(self, split: str, batch_size: int, device: torch.device, generator: torch.Generator | None) -> Any:
        """Yield (x in [0, 1] at the family's shape, before augmentation/normalisation, y) batches.
        Training order from `generator` (None: fixed order)."""
        if isinstance(self.data, FolderImages):
            yield from self._folder_batches(split, batch_size, device, generator)
            return
        xs, ys = (self.data.train_x, self.data.train_y) if split == "train" else (self.data.test_x, self.data.test_y)
        index = self.train_index if split == "train" else self.test_index
        n = len(index) if index is not None else len(ys)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for idx in runtime.shard_batches(list(order.split(int(batch_size)))):  # a data-parallel worker's slices
            if index is not None:
                idx = index[idx]
            x = xs[idx].to(device, non_blocking=True).float().div_(255)
            yield adapt(x, self.channels, self.size), ys[idx].to(device, non_blocking=True)

    def _folder_batches(self, split: str, batch_size: int, device: torch.device, generator: torch.Generator | None):
        """Batches of a file-backed split through a DataLoader whose workers persist across epochs. The
        order is the in-memory path's (a permutation from the trial's generator, cut into global
        batches), and a data-parallel worker reads only its slice of each global batch
        (`runtime.shard_batches`): every example once per epoch over all workers, at the spec's
        global batch size."""
        from torch.utils.data import DataLoader

        key = f"{split}:{batch_size}"
        if key not in self._loaders:  # one loader per split and batch size
            train = split == "train"
            ds = _FolderDataset(
                self.train_samples if train else self.test_samples, self.channels, self.size,
                random_crop=train and self.recipe == "imagenet",
            )  # fmt: skip
            self._loaders[key] = DataLoader(
                ds,
                batch_sampler=_GlobalBatches(len(ds), int(batch_size)),
                num_workers=self.workers,
                pin_memory=device.type == "cuda",
                persistent_workers=self.workers > 0,
            )
        loader = self._loaders[key]
        n = len(loader.dataset)
        loader.batch_sampler.order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


class _GlobalBatches(torch.utils.data.Sampler):
    """A DataLoader's index batches for one epoch: `order` cut into global batches of `batch_size`,
    of each the slice of this data-parallel worker (all of it outside data-parallel training). The
    sampler runs in the trial's process, so setting `order` before each epoch works with persistent
    loader workers."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.order = torch.arange(n)
        self.batch_size = batch_size

    def _batches(self) -> list[torch.Tensor]:
        return runtime.shard_batches(list(self.order.split(self.batch_size)))

    def __iter__(self):
        return (b.tolist() for b in self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class _FolderDataset(torch.utils.data.Dataset):
    """Decoded images in [0, 1] at the family's shape. Training with the `imagenet` recipe: random
    resized crop + flip (torchvision); otherwise (test): resize to 256/224 of the side, centre crop."""

    def __init__(self, samples: list[tuple[str, int]], channels: int, size: int, *, random_crop: bool) -> None:
        from torchvision.transforms import v2

        self.samples, self.channels = samples, channels
        if random_crop:
            geometry = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            geometry = [v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size)]
        self.transform = v2.Compose([*geometry, v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[i]
        try:
            img = default_loader(path)
        except OSError as e:
            raise UserError(f"data: cannot read image {path} ({e})") from None
        x = self.transform(img)
        if self.channels == 1:
            x = x.mean(dim=0, keepdim=True)
        return x, label


def _take(samples: list, index: torch.Tensor | None) -> list:
    return samples if index is None else [samples[int(i)] for i in index]


def _subset(n_total: int, n: int) -> torch.Tensor | None:
    if n <= 0 or n >= n_total:
        return None
    perm = torch.from_numpy(np.random.default_rng(SUBSET_SEED).permutation(n_total))
    return perm[:n].sort().values


def source_classes(source: str, classes_file: str | None = None) -> int:
    """Number of classes of a source without loading it (imagenet-subset: lines of its class file)."""
    if source == "imagenet-subset":
        try:
            return sum(1 for ln in Path(os.path.expanduser(classes_file or "")).read_text().splitlines() if ln.strip())
        except OSError:
            return 200  # EncapNet's h-ImageNet
    return NUM_CLASSES[source]


def check_batches_for_batchnorm(family: str, cfg: Mapping[str, Any], data: Images | None) -> None:
    """With data: no training batch of a single image (the last one, or all with batch_size 1):
    BatchNorm cannot normalise one example by its own statistics (a crash mid-trial otherwise)."""
    if data is None:
        return
    n = len(data.train) if isinstance(data, FolderImages) else len(data.train_y)
    used, batch = int(cfg["n_train"]) or n, int(cfg["batch_size"])
    if batch == 1:
        raise ConfigError(family, "batch_size", "must be >= 2: BatchNorm cannot normalise a batch of one image")
    if batch > 1 and used % batch == 1:
        raise ConfigError(family, "batch_size", f"{used} training images in batches of {batch} leave a last batch "
                          "of one image, which BatchNorm cannot normalise; change batch_size or n_train")  # fmt: skip


def check_image_config(family: str, cfg: Mapping[str, Any], data: Images | None) -> None:
    """Rules of the `IMAGE_DEFAULTS` keys (one-line `ConfigError`s); with data, also the sizes."""
    if cfg["num_classes"] < 0:
        raise ConfigError(family, "num_classes", f"must be >= 1, or 0 for the data source's (got {cfg['num_classes']})")
    if data is not None and cfg["num_classes"] and cfg["num_classes"] < data.num_classes:
        raise ConfigError(
            family,
            "num_classes",
            f"{data.source} has {data.num_classes} classes, more than num_classes={cfg['num_classes']}",
        )
    if cfg["augment"] not in ("auto", *AUGMENTATIONS):
        raise ConfigError(
            family, "augment", f"must be one of auto, {', '.join(AUGMENTATIONS)} (got {cfg['augment']!r})"
        )
    for key in ("n_train", "n_test"):
        if cfg[key] < 0:
            raise ConfigError(family, key, f"must be >= 0 (0 = all), got {cfg[key]}")
    if cfg["eval_batch_size"] < 1:
        raise ConfigError(family, "eval_batch_size", f"must be >= 1, got {cfg['eval_batch_size']}")
    if cfg["loader_workers"] < -1:
        raise ConfigError(
            family, "loader_workers", f"must be >= 0, or -1 for the trial's CPUs (got {cfg['loader_workers']})"
        )
    if cfg["scale_eval_at"] not in ("epoch", "end"):
        raise ConfigError(family, "scale_eval_at", f"must be epoch or end (got {cfg['scale_eval_at']!r})")
    factors = cfg["scale_eval"]
    if len(factors) > 16 or any(
        isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.05 <= f <= 20 for f in factors
    ):
        raise ConfigError(family, "scale_eval", f"must be at most 16 numbers in [0.05, 20] (got {factors!r})")
    if len({scale_metric(f) for f in factors}) != len(factors):
        raise ConfigError(family, "scale_eval", f"factors must be distinct (got {factors!r})")
    if data is not None:
        n = len(data.train) if isinstance(data, FolderImages) else len(data.train_y)
        used = cfg["n_train"] or n
        if cfg["n_train"] > n:
            raise ConfigError(family, "n_train", f"{data.source} has {n} training images, asked for {cfg['n_train']}")
        nt = len(data.test) if isinstance(data, FolderImages) else len(data.test_y)
        if cfg["n_test"] > nt:
            raise ConfigError(family, "n_test", f"{data.source} has {nt} test images, asked for {cfg['n_test']}")
        if cfg["batch_size"] > used:
            raise ConfigError(
                family, "batch_size", f"{cfg['batch_size']} is larger than the {used} training images of {data.source}"
            )


def image_inert_keys(cfg: Mapping[str, Any]) -> frozenset[str]:
    """`IMAGE_DEFAULTS` keys without effect in `cfg`: ``scale_eval_at`` without scaled test sets."""
    return frozenset() if cfg["scale_eval"] else frozenset({"scale_eval_at"})


def scale_metric(factor: float) -> str:
    """The metric name of one scaled test set: test_acc_scale_0.5, test_acc_scale_2."""
    return SCALE_METRIC.format(f"{float(factor):g}")


def prepare_images(cfg: Mapping[str, Any], data: Images, *, channels: int, size: int, recipe: str) -> TrialImages:
    """The trial's view of the data at the family's input shape (`recipe`: the family's default
    augmentation for this source, used when ``augment: auto``)."""
    if isinstance(data, FolderImages):
        train_index, test_index = _subset(len(data.train), cfg["n_train"]), _subset(len(data.test), cfg["n_test"])
    else:
        train_index, test_index = _subset(len(data.train_y), cfg["n_train"]), _subset(len(data.test_y), cfg["n_test"])
    stats_key = (
        "mnist"
        if data.source.startswith("mnist")
        else "imagenet"
        if data.source.startswith("imagenet")
        else data.source
    )
    mean, std = MEAN_STD[stats_key]
    if len(mean) != channels:  # grey stats replicated, colour stats averaged
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    workers = int(cfg["loader_workers"])
    if workers < 0:
        workers = max(0, int(cfg.get("threads", 1)))
    return TrialImages(
        data=data,
        channels=channels,
        size=size,
        recipe=recipe if cfg["augment"] == "auto" else cfg["augment"],
        normalize=bool(cfg["normalize"]),
        train_index=train_index,
        test_index=test_index,
        workers=workers if isinstance(data, FolderImages) else 0,
        mean=tuple(mean),
        std=tuple(std),
    )


# ----------------------------------------------------------------------------- training and evaluation

Outputs = torch.Tensor | Mapping[str, torch.Tensor]
LossFn = Callable[[Outputs, torch.Tensor], torch.Tensor]


def main_logits(out: Outputs) -> torch.Tensor:
    """The prediction of a forward: the tensor itself, or ``out["logits"]``."""
    return out if isinstance(out, torch.Tensor) else out["logits"]


def cross_entropy(out: Outputs, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(main_logits(out), y)


def train_epoch_images(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrialImages,
    cfg: Mapping[str, Any],
    generator: torch.Generator,
    device: torch.device,
    *,
    loss_fn: LossFn = cross_entropy,
) -> dict[str, float]:
    """One epoch over the (augmented) training images; `loss_fn(outputs, y)` is the family's loss.
    Returns ``train_loss`` (mean over examples) and ``train_acc`` (of `main_logits`)."""
    total, correct, n = 0.0, 0, 0
    for x, y in data.batches("train", int(cfg["batch_size"]), device, generator):
        x = data.finish(data.augment(x, generator))
        out = model(x)
        loss = loss_fn(out, y)
        check_finite(loss)
        optimizer.zero_grad(set_to_none=True)
        backward(loss)
        optimizer.step()
        total += float(loss.detach()) * len(y)
        correct += int((main_logits(out).detach().argmax(1) == y).sum())
        n += len(y)
    return {"train_loss": total / max(n, 1), "train_acc": correct / max(n, 1)}


@torch.no_grad()
def evaluate_images(
    model: nn.Module,
    data: TrialImages,
    cfg: Mapping[str, Any],
    device: torch.device,
    *,
    loss_fn: LossFn = cross_entropy,
) -> dict[str, float]:
    """Test metrics shared by every image family (module docstring). A forward returning a mapping
    adds ``test_acc_<name>`` for every other logits tensor in it (e.g. SSM's heads). Scaled test
    sets every epoch, or with ``scale_eval_at: end`` only after the last (config ``__epoch__``)."""
    last_epoch = int(cfg.get("__epoch__", cfg["epochs"])) >= int(cfg["epochs"])
    factors = list(cfg["scale_eval"]) if (cfg["scale_eval_at"] == "epoch" or last_epoch) else []
    top5 = data.num_classes > 10
    sums: dict[str, float] = {}
    n = 0
    for x, y in data.batches("test", int(cfg["eval_batch_size"]), device, None):
        out = model(data.finish(x))
        logits = main_logits(out)
        b = len(y)
        n += b
        _add(sums, "test_loss", float(loss_fn(out, y)) * b)
        _add(sums, "test_acc", float((logits.argmax(1) == y).sum()))
        if top5:
            _add(sums, "test_acc_top5", float(topk_correct(logits, y, 5)))
        if not isinstance(out, torch.Tensor):
            for name, extra in out.items():
                if name != "logits" and isinstance(extra, torch.Tensor) and extra.shape == logits.shape:
                    _add(sums, f"test_acc_{name}", float((extra.argmax(1) == y).sum()))
        for f in factors:
            scaled = main_logits(model(data.finish(rescale(x, float(f)))))
            _add(sums, scale_metric(f), float((scaled.argmax(1) == y).sum()))
    metrics = {k: v / max(n, 1) for k, v in sums.items()}
    return {**metrics, **percent_errors(metrics)}


def percent_errors(metrics: Mapping[str, float]) -> dict[str, float]:
    """``test_err_pct`` (and ``test_err_top5_pct``): the test errors in percent, the papers' unit,
    so that paper rows can be written as the papers print them."""
    out = {}
    if "test_acc" in metrics:
        out["test_err_pct"] = 100.0 * (1.0 - metrics["test_acc"])
    if "test_acc_top5" in metrics:
        out["test_err_top5_pct"] = 100.0 * (1.0 - metrics["test_acc_top5"])
    return out


def _add(sums: dict[str, float], key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value


def topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum())


def image_metrics(num_classes_max: int, extra: Mapping[str, Metric] | None = None) -> dict[str, Metric]:
    """The metrics an image family declares (`Family.metrics`): losses, top-1 accuracy and error in
    percent, top-5 when some source has more than 10 classes, and the family's `extra` ones."""
    base = {
        "train_loss": M.LOSS,
        "train_acc": M.ACCURACY,
        "test_loss": M.LOSS,
        "test_acc": M.ACCURACY,
        "test_err_pct": M.ERROR_PCT,  # 100 x (1 - test_acc), the papers' unit
    }
    top5 = {"test_acc_top5": M.ACCURACY, "test_err_top5_pct": M.ERROR_PCT} if num_classes_max > 10 else {}
    return {**base, **top5, **{k: v for k, v in (extra or {}).items() if k not in base}}


# config-dependent metrics of every image family: the scaled test sets (scale_eval), top-5 with more than 10 classes
IMAGE_METRIC_PATTERNS: dict[str, Metric] = {
    SCALE_METRIC_PATTERN: M.ACCURACY,
    r"test_acc_top5": M.ACCURACY,
    r"test_err_top5_pct": M.ERROR_PCT,
}


def is_scale_metric(name: str) -> bool:
    return re.fullmatch(SCALE_METRIC_PATTERN, name) is not None
