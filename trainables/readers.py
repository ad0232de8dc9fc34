"""Readers of data files the platform did not write: CIFAR's pickled batches, SVHN's ``.mat`` files,
class-folder image trees, class lists and image files.

Trust rules (docs/guide/data.md):

- **Nothing in a data file runs code.** CIFAR's batches are pickles; they are read with
  `ArrayUnpickler`, which rebuilds numpy arrays and plain values and refuses every other global
  (one line naming the file). torchvision's own CIFAR classes, which call ``pickle.load``, are
  never constructed on local files; torchvision only downloads.
- **Arrays are checked before training**: images must be uint8, or integers within 0..255
  (converted); floats are refused (a [0, 1] float array cast to uint8 would be black images), as
  are wrong shapes, label counts that do not match, and labels outside the source's classes.
- **Class-folder trees** are walked without following symbolic links to folders (a link out of
  the tree, or a loop such as ``a -> .``, is skipped with one line); a linked file counts only if
  it resolves inside the split's folder, and every image counts once.
- **Image files** are scanned before the first epoch (`scan_images`: the header must read and give
  a non-empty size); a file that fails is named and left out. A file whose header reads but whose
  pixels do not decode is replaced, for that read, by the next readable image of the split.
- **Class lists** (``data.classes_file``) must be regular files of at most `MAX_CLASSES_FILE_BYTES`,
  checked with ``os.stat`` before opening (no FIFO, no ``/dev/zero``).

Every problem is a `core.errors.UserError` of one line naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
import stat
import sys
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError, one_line

MAX_CLASSES_FILE_BYTES = 1 << 20  # 1 MiB: ImageNet's 1,000 synsets take 10 kB
MAX_PICKLE_BYTES = 1 << 31  # 2 GiB: CIFAR's largest file (cifar-100 train) is 155 MB
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SCAN_THREADS = 16  # image headers read in parallel (I/O bound)


def say(line: str) -> None:
    """One line on stderr, the data layer's voice (``[data] ...``)."""
    print(f"[data] {one_line(line)}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- pickles


class ArrayUnpickler(pickle.Unpickler):
    """A pickle reader that rebuilds numpy arrays, dtypes and scalars and nothing else: every
    other global (``os.system``, ``builtins.eval``, any class) is refused. Dicts, lists, strings,
    numbers and bytes need no global and load as usual."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),  # arrays in pickle protocol 5
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how protocol 2 pickles bytes written by Python 3
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (only numpy arrays are read)")
        with warnings.catch_warnings():  # numpy 2 maps numpy.core to numpy._core with a warning
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def read_pickle(path: Path, *, encoding: str = "latin1") -> Any:
    """The value pickled in `path`, read with `ArrayUnpickler` (``encoding="latin1"`` as torchvision
    reads CIFAR's Python 2 pickles). A non-regular or oversized file, a refused global or a damaged
    pickle is a one-line `UserError` naming the file; nothing in the file runs."""
    data = read_regular_file(path, MAX_PICKLE_BYTES, what="data file")
    try:
        return ArrayUnpickler(io.BytesIO(data), encoding=encoding).load()
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: not read ({e})") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file, in whatever way it fails
        raise UserError(f"{path}: malformed pickle ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- arrays


def check_images(path: Path, x: Any, *, what: str = "images") -> np.ndarray:
    """`x` as a uint8 array. The rule: uint8 is taken as it is; integers within 0..255 are
    converted; floats (a [0, 1] array would become black images), booleans, objects and integers
    outside 0..255 are refused in one line naming the file, the dtype and the range."""
    if not isinstance(x, np.ndarray):
        raise UserError(f"{path}: {what} must be a numpy array, got {type(x).__name__}")
    if x.dtype == np.uint8:
        return x
    lo, hi = (x.min(), x.max()) if x.size and x.dtype.kind in "iuf" else (None, None)
    if x.dtype.kind in "iu" and (not x.size or (lo >= 0 and hi <= 255)):
        return x.astype(np.uint8)
    span = f", values {lo:g}..{hi:g}" if lo is not None else ""
    rule = "uint8 pixels 0..255 are needed (floats are not scaled: store the images as uint8)"
    raise UserError(f"{path}: {what} have dtype {x.dtype}{span}; {rule}")


def check_labels(path: Path, y: Any, n: int, classes: int, *, what: str = "labels") -> np.ndarray:
    """`y` as int64 labels: n of them, integers within 0..classes-1 (one line naming the file)."""
    y = np.asarray(y)
    if y.size and y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
        raise UserError(f"{path}: {what} must be integers, got dtype {y.dtype}")
    y = y.reshape(-1).astype(np.int64)
    if len(y) != n:
        raise UserError(f"{path}: {len(y)} {what} for {n} images")
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise UserError(f"{path}: {what} outside 0..{classes - 1} (found {y.min()}..{y.max()})")
    return y


def read_cifar_batch(path: Path, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch (``data_batch_1``, ``test_batch``, cifar-100's ``train``): images
    (N, 3, 32, 32) uint8 (rows of 1024 red, green, blue values) and labels (N,) int64."""
    entry = read_pickle(path)
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        keys = ", ".join(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise UserError(f"{path}: not a CIFAR batch (needs the keys data and {label_key}; found {keys})")
    x = check_images(path, entry["data"])
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path}: data has shape {x.shape}; a CIFAR batch holds (N, 3072) rows")
    y = check_labels(path, entry[label_key], len(x), classes, what=label_key)
    return x.reshape(-1, 3, 32, 32), y


def read_cifar_meta(path: Path, key: str) -> list[str]:
    """A CIFAR meta file's class names (``batches.meta``/``meta``), checked to be a list of names."""
    entry = read_pickle(path)
    names = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str | bytes) for n in names):
        raise UserError(f"{path}: not a CIFAR meta file (needs {key}: a list of class names)")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN's ``train_32x32.mat``/``test_32x32.mat``: X (32, 32, 3, N) -> images (N, 3, 32, 32)
    uint8; y (N, 1) with 10 for the digit 0 -> labels (N,) 0..9."""
    from scipy.io import loadmat

    read_regular_file(path, None, what="data file", read=False)
    try:
        mat = loadmat(str(path))
    except Exception as e:  # noqa: BLE001 - scipy raises many types on a foreign or damaged file
        raise UserError(f"{path}: malformed .mat file ({type(e).__name__}: {e})") from None
    if "X" not in mat or "y" not in mat:
        raise UserError(f"{path}: not an SVHN file (needs the arrays X and y)")
    x = check_images(path, mat["X"], what="X")
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise UserError(f"{path}: X has shape {x.shape}; SVHN holds (32, 32, 3, N)")
    y = np.asarray(mat["y"]).reshape(-1)
    if y.dtype.kind in "iuf":
        y = np.where(y == 10, 0, y)  # SVHN writes the digit 0 as 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), check_labels(path, y, x.shape[3], 10, what="y")


# ----------------------------------------------------------------------------- small text files


def read_regular_file(path: Path, limit: int | None, *, what: str, read: bool = True) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes (None: any size),
    checked with ``os.stat`` before it is opened (a FIFO or device never blocks or floods the
    reader). ``read=False`` only checks. One-line `UserError` naming the file otherwise."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path}: the {what} is not a regular file")
    if limit is not None and st.st_size > limit:
        raise UserError(f"{path}: the {what} has {st.st_size} bytes, more than the {limit} allowed")
    if not read:
        return b""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1) if limit is not None else f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if limit is not None and len(data) > limit:  # it grew after the stat
        raise UserError(f"{path}: the {what} is larger than the {limit} bytes allowed")
    return data


def read_classes_file(path: Path) -> list[str]:
    """``data.classes_file``: one class folder name per line (the first word; blank lines skipped),
    distinct. At most `MAX_CLASSES_FILE_BYTES`, a regular UTF-8 file."""
    data = read_regular_file(path, MAX_CLASSES_FILE_BYTES, what="class list (data.classes_file)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"data.classes_file: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    wanted = [ln.split()[0] for ln in text.splitlines() if ln.strip()]
    if not wanted or len(set(wanted)) != len(wanted):
        raise UserError(f"data.classes_file: {path} must list distinct class names, one per line")
    return wanted


# ----------------------------------------------------------------------------- class-folder trees


def class_folders(split_dir: Path) -> list[str]:
    """The class folders of a split: its subfolders, sorted; a symbolic link is never taken for a
    class folder (skipped with one line)."""
    try:
        entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    except OSError as e:
        raise UserError(f"data.root: cannot list {split_dir} ({e.strerror or e})") from None
    found = []
    for e in entries:
        if e.is_symlink():
            if e.is_dir():
                say(f"{e.path}: a symbolic link to a folder; not followed (link or copy the images inside the tree)")
            continue
        if e.is_dir(follow_symlinks=False):
            found.append(e.name)
    if not found:
        raise UserError(f"data.root: {split_dir} has no class folders")
    return found


def image_files(split_dir: Path, classes: Sequence[str], extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[tuple[str, int]]:
    """(path, class index) of every image under ``split_dir/<class>/``, in sorted walk order, each
    counted once. Folders are walked with ``followlinks=False``: a linked folder (out of the tree,
    or a loop such as ``a -> .``) is never entered and is named in one line. A linked file counts
    only if it resolves to a file inside `split_dir` that is not counted already (a link to an
    image of another class leaves it in its own class). A class folder without images is a
    one-line `UserError`."""
    root = split_dir.resolve()
    exts = tuple(e.lower() for e in extensions)
    per_class: list[list[tuple[str, Path | None]]] = []  # (path, resolved target if a link)
    skipped: list[str] = []
    for name in classes:
        folder = root / name
        if folder.is_symlink() or not folder.is_dir():
            raise UserError(f"data.root: {split_dir / name} is not a class folder (a folder, not a link)")
        found: list[tuple[str, Path | None]] = []
        for dirpath, dirnames, filenames in sorted(os.walk(folder, followlinks=False)):
            skipped += [os.path.join(dirpath, d) for d in sorted(dirnames) if os.path.islink(os.path.join(dirpath, d))]
            for fname in sorted(filenames):
                if fname.lower().endswith(exts):
                    path = os.path.join(dirpath, fname)
                    found.append((path, Path(path).resolve() if os.path.islink(path) else None))
        per_class.append(found)
    counted = {path for found in per_class for path, target in found if target is None}  # the real files
    samples: list[tuple[str, int]] = []
    for index, found in enumerate(per_class):
        n = len(samples)
        for path, target in found:
            if target is not None:  # a linked file: inside the tree, a file, not counted yet
                if not target.is_relative_to(root) or not target.is_file() or str(target) in counted:
                    skipped.append(path)
                    continue
                counted.add(str(target))
            samples.append((path, index))
        if len(samples) == n:
            raise UserError(f"data.root: class folder {split_dir / classes[index]} has no images ({', '.join(exts)})")
    if skipped:
        say(f"{split_dir}: {len(skipped)} symbolic link(s) not followed (a folder, out of the tree, a loop or "
            f"an image counted already), e.g. {skipped[0]}")  # fmt: skip
    return samples


# ----------------------------------------------------------------------------- image files


def _header_problem(path: str) -> str | None:
    """None if the image's header reads and gives a non-empty size, else why not."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            img.verify()  # structure check (PNG: chunks and CRCs); no pixel decoding for JPEG
    except Exception as e:  # noqa: BLE001 - not an image, truncated, a decompression bomb, unreadable
        return f"{type(e).__name__}: {e}"
    if w < 1 or h < 1:
        return f"empty image ({w} x {h})"
    return None


def scan_images(samples: list[tuple[str, int]], *, what: str) -> list[tuple[str, int]]:
    """`samples` without the files whose image header cannot be read (one line names the count and
    the first few; the rule is in the module docstring). Headers are read in parallel."""
    with ThreadPoolExecutor(max_workers=SCAN_THREADS) as pool:
        problems = list(pool.map(_header_problem, (p for p, _ in samples)))
    bad = [(p, why) for (p, _), why in zip(samples, problems) if why is not None]
    if not bad:
        return samples
    shown = "; ".join(f"{p} ({why})" for p, why in bad[:3])
    say(f"{what}: {len(bad)} of {len(samples)} image file(s) cannot be read and are left out: {shown}")
    return [s for s, why in zip(samples, problems) if why is None]
