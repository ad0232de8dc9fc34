"""Image data for the CNN families (SSM, WSMS-Net, EncapNet): the trial's view of a source.

One data layer for every image family (PAPERS.md sections 3-5), in four modules:

- `trainables.image_sources`: the sources (``cifar10``, ``cifar100``, ``svhn``, ``imagenet``,
  ``imagenet-subset``, ``mnist``, ``mnist-5k``) and how their files become `TensorImages` (uint8,
  in memory) or `FolderImages` (a list of image files); `trainables.readers` reads the files
  (restricted unpickler, array and label checks, link-safe folder walk, image scan).
- `trainables.augment`: `adapt` (every batch at the family's input shape), `rescale` and the
  augmentation recipes (``augment``).
- `trainables.evaluation`: `evaluate_images` and the declarations of the metrics it reports.
- this module: `IMAGE_DEFAULTS` (the config keys every image family understands), `TrialImages`
  (a trial's subset, shape, recipe and normalisation; batches from memory or, for file-backed
  data, a ``DataLoader`` whose workers come from the trial's CPUs), `prepare_images`, the shared
  training epoch `train_epoch_images` and the config checks.

Every name of the four modules stays importable from here (``from trainables.images import ...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import UserError
from trainables import runtime  # data-parallel batch shards
from trainables.augment import AUGMENTATIONS, adapt, augment, rescale  # noqa: F401 (re-exported)
from trainables.common import ConfigError, backward, check_finite
from trainables.evaluation import (  # noqa: F401 (re-exported)
    IMAGE_METRIC_PATTERNS,
    SCALE_METRIC,
    SCALE_METRIC_PATTERN,
    LossFn,
    Outputs,
    cross_entropy,
    evaluate_images,
    image_metrics,
    is_scale_metric,
    main_logits,
    percent_errors,
    scale_metric,
    topk_correct,
)
from trainables.image_sources import (  # noqa: F401 (re-exported)
    IMAGE_EXTENSIONS,
    IMAGE_SOURCES,
    NUM_CLASSES,
    TENSOR_SOURCES,
    FolderImages,
    Images,
    TensorImages,
    from_image_set,
    load_image_folder,
    load_images,
    load_torchvision,
    source_classes,
)
from trainables.readers import say

# per-channel mean/std of the training sets (0-1 pixel scale), as the papers' code normalises
MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
SUBSET_SEED = 20260101  # fixed permutation: n_train/n_test take its first images (nested subsets)
MAX_REPLACEMENTS = 16  # undecodable images in a row replaced by the next ones before a read fails

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
    resized crop + flip (torchvision); otherwise (test): resize to 256/224 of the side, centre crop.

    Every file passed the header scan (`trainables.readers.scan_images`); one whose pixels still do
    not decode is replaced, for that read, by the next decodable image of the split (named once on
    stderr), so that one damaged file never ends a trial mid-epoch."""

    def __init__(self, samples: list[tuple[str, int]], channels: int, size: int, *, random_crop: bool) -> None:
        from torchvision.transforms import v2

        self.samples, self.channels = samples, channels
        if random_crop:
            geometry = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            geometry = [v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size)]
        self.transform = v2.Compose([*geometry, v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
        self._named: set[str] = set()  # files already said to be undecodable (per loader process)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import default_loader

        for k in range(min(len(self.samples), MAX_REPLACEMENTS + 1)):
            path, label = self.samples[(i + k) % len(self.samples)]
            try:
                img = default_loader(path)
                break
            except Exception as e:  # noqa: BLE001 - truncated or damaged pixels behind a readable header
                if path not in self._named:
                    self._named.add(path)
                    say(f"cannot decode image {path} ({type(e).__name__}: {e}); the next image of the split is used in its place")
        else:
            raise UserError(f"data: {MAX_REPLACEMENTS + 1} images in a row from {self.samples[i][0]} cannot be decoded")
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


# ----------------------------------------------------------------------------- training


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


# ----------------------------------------------------------------------------- config checks


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
