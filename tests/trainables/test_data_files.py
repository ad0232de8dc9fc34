"""Data files the platform did not write: what the user sees when one is crafted, malformed, of the
wrong kind or too large (one line naming the file, a `UserError`, nothing executed), and that the
official formats still load."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserError
from trainables import images as im
from trainables import readers

CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class Py2Pickler(pickle._Pickler):
    """Writes strings and bytes as Python 2's ``str`` (SHORT_BINSTRING/BINSTRING opcodes), as the
    official CIFAR files were written by cPickle: they load only with ``encoding="latin1"``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def dump(obj: object, path: Path, *, py2: bool = False) -> None:
    with open(path, "wb") as f:
        (Py2Pickler(f, protocol=2) if py2 else pickle.Pickler(f)).dump(obj)


def write_cifar10(root: Path, *, py2: bool = False, data: np.ndarray | None = None, n: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in CIFAR10_BATCHES:
        x = data if data is not None else rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        dump({"data": x, "labels": rng.integers(0, 10, len(x)).tolist(), "batch_label": name}, folder / name, py2=py2)
    dump({"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": n}, folder / "batches.meta", py2=py2)
    return folder


class Crafted:
    """A pickle that runs a shell command when plain ``pickle.load`` reads it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def assert_one_line(e: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(e.value)
    assert e.type is UserError and "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg


# ----------------------------------------------------------------------------- pickles


def test_official_python2_cifar_pickles_load_with_latin1(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, py2=True)
    with pytest.raises(UnicodeDecodeError):  # the real format: Python 2 strings, not readable as ASCII
        with open(folder / "data_batch_1", "rb") as f:
            pickle.load(f)
    with open(folder / "data_batch_1", "rb") as f:
        expected = pickle.load(f, encoding="latin1")  # what torchvision does
    d = im.load_images("cifar10", str(tmp_path))
    assert d.train_x.shape == (20, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert torch.equal(d.train_x[0], torch.from_numpy(expected["data"][0].reshape(3, 32, 32)))
    assert d.train_y[:4].tolist() == expected["labels"]


@pytest.mark.parametrize("name", ["data_batch_1", "test_batch", "batches.meta"])
def test_crafted_cifar_pickle_runs_nothing(tmp_path: Path, name: str, monkeypatch) -> None:
    import torchvision.datasets as D

    def no_torchvision(*a, **k):
        raise AssertionError("torchvision's CIFAR reader (pickle.load) was constructed")

    monkeypatch.setattr(D.CIFAR10, "__init__", no_torchvision)
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "executed"
    dump({"data": Crafted(marker), "labels": [0]}, folder / name)
    with pytest.raises(UserError) as e:
        im.load_images("cifar10", str(tmp_path))
    assert_one_line(e, str(folder / name), "refused global posix.system")
    assert not marker.exists()


def test_unpickler_admits_arrays_and_plain_values_only(tmp_path: Path) -> None:
    path = tmp_path / "p"
    value = {"a": np.arange(3, dtype=np.int16), "b": [1, "x", 2.5, b"raw"], "c": np.float32(1.5)}
    for protocol in (2, 4, 5):
        with open(path, "wb") as f:
            pickle.dump(value, f, protocol=protocol)
        back = readers.read_pickle(path)
        assert np.array_equal(back["a"], value["a"]) and back["b"] == value["b"] and back["c"] == np.float32(1.5)
    for evil in (print, Path("x"), range(3), np.random.default_rng(0)):
        dump(evil, path)
        with pytest.raises(UserError) as e:
            readers.read_pickle(path)
        assert_one_line(e, str(path), "refused global")


def test_malformed_local_cifar_is_named_as_malformed_not_as_a_download(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:50])  # truncated
    with pytest.raises(UserError) as e:
        im.load_images("cifar10", str(tmp_path))
    assert_one_line(e, str(folder / "test_batch"), "malformed")
    assert "could not download" not in str(e.value)
    (folder / "test_batch").unlink()  # part of the files only: never downloaded over
    with pytest.raises(UserError) as e:
        im.load_images("cifar10", str(tmp_path))
    assert_one_line(e, "holds part of cifar10 only", str(folder / "test_batch"))


def test_malformed_local_svhn_is_named_as_malformed(tmp_path: Path) -> None:
    (tmp_path / "train_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    (tmp_path / "test_32x32.mat").write_bytes(b"")
    with pytest.raises(UserError) as e:
        im.load_images("svhn", str(tmp_path))
    assert_one_line(e, str(tmp_path / "train_32x32.mat"), "malformed .mat file")


# ----------------------------------------------------------------------------- arrays


def test_float_images_are_refused_not_cast_to_black(tmp_path: Path) -> None:
    write_cifar10(tmp_path, data=np.random.default_rng(0).random((4, 3072)).astype(np.float32))
    with pytest.raises(UserError) as e:
        im.load_images("cifar10", str(tmp_path))
    assert_one_line(e, "data_batch_1", "dtype float32", "values 0", "uint8 pixels 0..255 are needed")


def test_integer_images_within_0_255_are_converted_others_refused(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (4, 3072)).astype(np.int64)
    write_cifar10(tmp_path / "ok", data=x)
    d = im.load_images("cifar10", str(tmp_path / "ok"))
    assert d.train_x.dtype == torch.uint8 and torch.equal(d.train_x[0].flatten(), torch.from_numpy(x[0]).to(torch.uint8))
    write_cifar10(tmp_path / "bad", data=x * 2)
    with pytest.raises(UserError) as e:
        im.load_images("cifar10", str(tmp_path / "bad"))
    assert_one_line(e, "dtype int64", "uint8 pixels")


def test_shapes_and_labels_are_checked(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path / "shape", data=np.zeros((4, 1024), dtype=np.uint8))
    with pytest.raises(UserError) as e:
        im.load_images("cifar10", str(tmp_path / "shape"))
    assert_one_line(e, str(folder / "data_batch_1"), "shape (4, 1024)", "(N, 3072)")
    folder = write_cifar10(tmp_path / "labels")
    dump({"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [3, 10]}, folder / "test_batch")
    with pytest.raises(UserError) as e:
        im.load_images("cifar10", str(tmp_path / "labels"))
    assert_one_line(e, str(folder / "test_batch"), "labels outside 0..9")
    dump({"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [3]}, folder / "test_batch")
    with pytest.raises(UserError) as e:
        im.load_images("cifar10", str(tmp_path / "labels"))
    assert_one_line(e, "1 labels for 2 images")


def test_svhn_labels_10_is_zero_and_11_is_refused(tmp_path: Path) -> None:
    from scipy.io import savemat

    x = np.zeros((32, 32, 3, 2), dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.array([[10], [11]], dtype=np.uint8)})
    savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[10], [1]], dtype=np.uint8)})
    with pytest.raises(UserError) as e:
        im.load_images("svhn", str(tmp_path))
    assert_one_line(e, str(tmp_path / "train_32x32.mat"), "y outside 0..9")


# ----------------------------------------------------------------------------- folders and images


def write_tree(root: Path, classes=("n01", "n02"), per_class: int = 2) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_links_out_of_the_tree_and_loops_are_not_followed(tmp_path: Path, capsys) -> None:
    root, outside = tmp_path / "tree", tmp_path / "outside"
    write_tree(root)
    write_tree(outside)
    train = root / "train"
    (train / "n01" / "loop").symlink_to(".")  # a -> .
    (train / "n01" / "up").symlink_to(train)  # round in the tree
    (train / "n02" / "away").symlink_to(outside / "train" / "n02")  # a folder out of the tree
    (train / "n02" / "stolen.png").symlink_to(outside / "train" / "n01" / "0.png")  # a file out of the tree
    (train / "n02" / "again.png").symlink_to(train / "n01" / "0.png")  # an image counted already
    (train / "n03").symlink_to(outside / "train" / "n01")  # a class folder that is a link
    d = im.load_images("imagenet", str(root))
    assert d.classes == ["n01", "n02"]
    assert sorted(Path(p).name for p, _ in d.train) == ["0.png", "0.png", "1.png", "1.png"]  # each image once
    assert len({os.path.realpath(p) for p, _ in d.train}) == 4
    err = capsys.readouterr().err
    assert "symbolic link(s) not followed" in err and f"{train / 'n03'}: a symbolic link to a folder" in err
    assert all(line.startswith("[data] ") for line in err.strip().splitlines())


def test_unreadable_images_are_named_and_left_out_before_training(tmp_path: Path, capsys) -> None:
    write_tree(tmp_path, per_class=3)
    bad = tmp_path / "train" / "n01" / "broken.png"
    bad.write_bytes(b"not an image at all")
    (tmp_path / "train" / "n02" / "empty.jpg").write_bytes(b"")
    d = im.load_images("imagenet", str(tmp_path))
    assert len(d.train) == 6 and str(bad) not in {p for p, _ in d.train}
    err = capsys.readouterr().err
    assert "2 of 8 image file(s) cannot be read and are left out" in err and str(bad) in err
    assert len(err.strip().splitlines()) == 1


def test_an_image_that_fails_to_decode_mid_epoch_is_replaced_not_fatal(tmp_path: Path, capsys) -> None:
    from PIL import Image

    write_tree(tmp_path, per_class=2)
    path = tmp_path / "train" / "n01" / "0.png"
    Image.fromarray(np.full((64, 64, 3), 7, dtype=np.uint8)).save(path)
    d = im.load_images("imagenet", str(tmp_path))  # the header scan passes
    path.write_bytes(path.read_bytes()[:60])  # then the pixels are cut off
    cfg = {**im.IMAGE_DEFAULTS, "batch_size": 4, "threads": 1, "loader_workers": 0}
    t = im.prepare_images(cfg, d, channels=3, size=16, recipe="none")
    batches = list(t.batches("train", 4, torch.device("cpu"), torch.Generator().manual_seed(0)))
    assert sum(len(y) for _, y in batches) == 4
    err = capsys.readouterr().err
    assert f"cannot decode image {path}" in err and "used in its place" in err


# ----------------------------------------------------------------------------- class lists


def test_classes_file_must_be_a_small_regular_file(tmp_path: Path) -> None:
    write_tree(tmp_path)
    big = tmp_path / "big.txt"
    big.write_text("n01\n" * 300_000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would block until a writer comes
    for path, needle in ((big, "more than the 1048576 allowed"), (fifo, "not a regular file"),
                         (Path("/dev/zero"), "not a regular file"), (tmp_path / "none.txt", "cannot read")):  # fmt: skip
        with pytest.raises(UserError) as e:
            im.load_images("imagenet-subset", str(tmp_path), classes_file=str(path))
        assert_one_line(e, str(path), needle)
    with pytest.raises(UserError) as e:
        im.source_classes("imagenet-subset", str(fifo))
    assert_one_line(e, "not a regular file")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00n01")
    with pytest.raises(UserError) as e:
        im.load_images("imagenet-subset", str(tmp_path), classes_file=str(tmp_path / "bin.txt"))
    assert_one_line(e, "is not UTF-8 text")
