"""The image sources of the CNN families (`load_images`): what each ``data.source`` is and how its
files become tensors or a list of image files.

- ``cifar10``, ``cifar100``, ``svhn``: downloaded once into ``data.root`` under a file lock
  (torchvision's downloader); the files are read by `trainables.readers` (CIFAR's pickles with a
  restricted unpickler, never ``pickle.load``), checked, and kept in memory as uint8 tensors.
- ``imagenet``: ILSVRC-2012 in the usual ``train/`` and ``val/`` class-folder layout under
  ``data.root`` (never downloaded); ``imagenet-subset``: the same restricted to the classes listed
  in ``data.classes_file`` (EncapNet's 200-class h-ImageNet). Walked without following links to
  folders, every image's header scanned once before training (`trainables.readers`).
- ``mnist``, ``mnist-5k``: `trainables.data`, as single-channel images.

The table of sources (names, classes, kinds) is `trainables.data.SOURCE_TABLE`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from trainables import readers
from trainables.data import DATA_SOURCES, DEFAULT_ROOT, MNIST_SOURCES, SOURCE_TABLE, ImageSet, load_mnist

IMAGE_SOURCES: tuple[str, ...] = DATA_SOURCES  # every source is an image source
TENSOR_SOURCES: tuple[str, ...] = tuple(n for n, s in SOURCE_TABLE.items() if s.kind != "folder")
NUM_CLASSES: dict[str, int] = {n: s.classes for n, s in SOURCE_TABLE.items() if s.classes is not None}
IMAGE_EXTENSIONS = readers.IMAGE_EXTENSIONS


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
    if source in MNIST_SOURCES:
        return from_image_set(load_mnist(source, root))
    if source in ("imagenet", "imagenet-subset"):
        return load_image_folder(source, root, classes_file)
    return load_torchvision(source, Path(os.path.expanduser(root or DEFAULT_ROOT)))


def from_image_set(s: ImageSet) -> TensorImages:
    return TensorImages(s.train_x[:, None], s.train_y, s.test_x[:, None], s.test_y, 10, s.source)


# ----------------------------------------------------------------------------- CIFAR and SVHN


@dataclass(frozen=True)
class _Layout:
    """Where a downloaded source's files lie under ``data.root`` and their official MD5 sums."""

    folder: str  # "" for files directly in data.root
    train: tuple[tuple[str, str], ...]  # (file name, md5)
    test: tuple[tuple[str, str], ...]
    meta: tuple[str, str, str] | None  # (file name, key of the class names, md5)
    label_key: str


def _layout(source: str) -> _Layout:
    from torchvision import datasets

    if source == "svhn":
        s = datasets.SVHN.split_list
        return _Layout("", ((s["train"][1], s["train"][2]),), ((s["test"][1], s["test"][2]),), None, "y")
    cls = datasets.CIFAR10 if source == "cifar10" else datasets.CIFAR100
    return _Layout(
        cls.base_folder,
        tuple((n, m) for n, m in cls.train_list),
        tuple((n, m) for n, m in cls.test_list),
        (cls.meta["filename"], cls.meta["key"], cls.meta["md5"]),
        "labels" if source == "cifar10" else "fine_labels",
    )


def _files(layout: _Layout, root: Path) -> list[tuple[Path, str]]:
    meta = [(layout.meta[0], layout.meta[2])] if layout.meta else []
    return [(root / layout.folder / name, md5) for name, md5 in (*layout.train, *layout.test, *meta)]


def _download(source: str, root: Path) -> None:
    """torchvision's download of the source's archive/files into `root` (nothing is unpickled:
    the dataset object is never initialised, only its ``download`` runs)."""
    from torchvision import datasets

    if source == "svhn":
        for split in ("train", "test"):
            ds = datasets.SVHN.__new__(datasets.SVHN)
            ds.root, ds.split = str(root), split
            ds.url, ds.filename, ds.file_md5 = datasets.SVHN.split_list[split]
            ds.download()
        return
    cls = datasets.CIFAR10 if source == "cifar10" else datasets.CIFAR100
    ds = cls.__new__(cls)
    ds.root = str(root)
    ds.download()


def load_torchvision(source: str, root: Path) -> TensorImages:
    """CIFAR-10/100 or SVHN from `root`, downloaded once (under a file lock) when absent.

    Files already in `root` are read, never downloaded over: the official ones silently, others
    that differ from the official checksums (a hand-made or converted copy) as they are, with a
    warning line; files that cannot be read are reported as malformed, naming the file. Only
    absent files are downloaded; a failed download, a lock held for an hour or a directory where
    the lock cannot be written is one line naming the source, the directory and the offline
    alternative.
    """
    from filelock import FileLock, Timeout

    layout = _layout(source)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"data.root: cannot create the download directory {root} ({e.strerror or e})") from None

    def present() -> bool:
        files = _files(layout, root)
        there = [p for p, _ in files if p.exists()]
        if there and len(there) < len(files):
            missing = [str(p) for p, _ in files if not p.exists()]
            raise UserError(
                f"data.source={source}: {root} holds part of {source} only ({len(missing)} file(s) missing, e.g. "
                f"{missing[0]}); add the missing files or remove the others to download {source} again"
            )
        return bool(there)

    def fail(why: str) -> UserError:
        return UserError(f"data.source={source}: could not download {source} into {root} ({why}); "
                         "offline, use the bundled sample: --set data.source=mnist-5k")  # fmt: skip

    if not present():
        try:
            lock = FileLock(str(root / f"{source}.download.lock"), timeout=3600)
            lock.acquire()
        except Timeout:
            raise fail(f"another process has held {root / (source + '.download.lock')} for an hour") from None
        except OSError as e:  # a read-only or full cache directory
            raise fail(f"cannot write there: {e.strerror or e}") from None
        try:
            if not present():  # another process may have downloaded it meanwhile
                try:
                    _download(source, root)
                except Exception as e:  # network errors come in many types (URLError, HTTPError, RuntimeError)
                    raise fail(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
                if not present():
                    raise fail("the download left no files")
        finally:
            lock.release()
    return read_local(source, root, layout)


def read_local(source: str, root: Path, layout: _Layout | None = None) -> TensorImages:
    """The source's files in `root`, read and checked by `trainables.readers` (no network)."""
    from torchvision.datasets.utils import check_integrity

    layout = layout or _layout(source)
    if not all(check_integrity(str(p), md5) for p, md5 in _files(layout, root)):
        print(f"[data] {source}: files in {root} differ from the official release's checksums; "
              "reading them as they are", file=sys.stderr, flush=True)  # fmt: skip
    classes = NUM_CLASSES[source]
    folder = root / layout.folder

    def split(names: tuple[tuple[str, str], ...]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [
            readers.read_svhn_mat(folder / n) if source == "svhn" else readers.read_cifar_batch(folder / n, layout.label_key, classes)
            for n, _ in names
        ]
        x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    if layout.meta is not None:
        readers.read_cifar_meta(folder / layout.meta[0], layout.meta[1])  # checked, like every file there
    (tx, ty), (vx, vy) = split(layout.train), split(layout.test)
    return TensorImages(tx, ty, vx, vy, classes, source)


# ----------------------------------------------------------------------------- class-folder trees


def load_image_folder(source: str, root: str | None, classes_file: str | None) -> FolderImages:
    """ILSVRC-2012 (or a class subset) from ``root/train/<class>/*`` and ``root/val/<class>/*``,
    walked and scanned by `trainables.readers` (links, loops and unreadable images: see there)."""
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
        wanted = readers.read_classes_file(Path(os.path.expanduser(classes_file)))
    elif classes_file:
        raise UserError("data.classes_file: only for data.source imagenet-subset")
    splits = {}
    classes: list[str] = []
    for split in ("train", "val"):
        found = readers.class_folders(base / split)
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
        samples = readers.image_files(base / split, classes)
        splits[split] = readers.scan_images(samples, what=f"{source} {split} ({base / split})")
    return FolderImages(splits["train"], splits["val"], classes, source)


def source_classes(source: str, classes_file: str | None = None) -> int:
    """Number of classes of a source without loading it (imagenet-subset: lines of its class file;
    200, EncapNet's h-ImageNet, when the file is not there)."""
    if source == "imagenet-subset":
        path = Path(os.path.expanduser(classes_file or ""))
        if not classes_file or not path.exists():
            return 200
        return len(readers.read_classes_file(path))
    return NUM_CLASSES[source]

