"""The image data layer: loaders on tiny files written in each real format, shapes, augmentation,
scaled test sets, evaluation, and the one-line errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import UserError
from trainables import images as im
from trainables.common import COMMON_DEFAULTS, ConfigError

CPU = torch.device("cpu")


def cfg(**over):
    return {**COMMON_DEFAULTS, **im.IMAGE_DEFAULTS, "batch_size": 16, **over}


@pytest.fixture
def offline(monkeypatch):
    """torchvision's downloads fail at once, as on a machine without internet."""
    from urllib.error import URLError

    import torchvision.datasets as D

    def fail(self, *a, **k):
        raise URLError("Name or service not known")

    for cls in (D.CIFAR10, D.CIFAR100, D.SVHN):
        monkeypatch.setattr(cls, "download", fail)


def write_cifar10(root: Path, n_train: int = 5, n_test: int = 4) -> np.ndarray:
    """The CIFAR-10 python layout: 5 pickled training batches, a test batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_train
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        if first is None:
            first = (data, labels)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return first


def test_cifar10_pickled_batches_are_read_as_nchw(tmp_path: Path, offline, capsys) -> None:
    data, labels = write_cifar10(tmp_path)
    d = im.load_images("cifar10", str(tmp_path))
    assert isinstance(d, im.TensorImages) and d.num_classes == 10 and d.source == "cifar10"
    assert d.train_x.shape == (25, 3, 32, 32) and d.test_x.shape == (4, 3, 32, 32)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    # CIFAR rows are 1024 red, 1024 green, 1024 blue values, row-major: channel-first after loading
    assert torch.equal(d.train_x[0], torch.from_numpy(data[0].reshape(3, 32, 32)))
    assert d.train_y[:5].tolist() == labels
    assert "differ from the official release's checksums" in capsys.readouterr().err


def test_cifar100_fine_labels(tmp_path: Path, offline) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 3)):
        with open(folder / name, "wb") as f:
            pickle.dump(
                {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": [99, 0, 42, 7, 1, 2][:n]}, f
            )
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    d = im.load_images("cifar100", str(tmp_path))
    assert d.num_classes == 100 and d.train_y.tolist() == [99, 0, 42, 7, 1, 2] and d.test_x.shape == (3, 3, 32, 32)


def test_svhn_mat_files_with_label_10_for_zero(tmp_path: Path, offline) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)  # SVHN's (H, W, C, N)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.array([[10], [1], [9], [10], [3]], dtype=np.uint8)})
    savemat(tmp_path / "test_32x32.mat", {"X": x[..., :2], "y": np.array([[2], [10]], dtype=np.uint8)})
    d = im.load_images("svhn", str(tmp_path))
    assert d.train_x.shape == (5, 3, 32, 32) and d.train_y.tolist() == [0, 1, 9, 0, 3] and d.test_y.tolist() == [2, 0]
    assert torch.equal(d.train_x[1], torch.from_numpy(x[..., 1]).permute(2, 0, 1))


def test_missing_download_is_one_line_naming_source_dir_and_offline_source(tmp_path: Path, offline) -> None:
    for source in ("cifar10", "cifar100", "svhn"):
        with pytest.raises(UserError) as info:
            im.load_images(source, str(tmp_path / source))
        msg = str(info.value)
        assert "\n" not in msg and f"could not download {source} into {tmp_path / source}" in msg
        assert "--set data.source=mnist-5k" in msg


def test_files_there_are_read_without_a_download_and_lock_trouble_is_one_line(tmp_path: Path, monkeypatch) -> None:
    import filelock
    import torchvision.datasets as D
    from scipy.io import savemat

    def no_network(self, *a, **k):
        raise AssertionError("downloaded although the files are there")

    monkeypatch.setattr(D.SVHN, "download", no_network)
    x = np.zeros((32, 32, 3, 2), dtype=np.uint8)
    for split in ("train", "test"):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array([[1], [2]], dtype=np.uint8)})

    def no_lock(*a, **k):
        raise AssertionError("locked although nothing is downloaded")

    monkeypatch.setattr(filelock.FileLock, "acquire", no_lock)
    assert im.load_images("svhn", str(tmp_path)).train_y.tolist() == [1, 2]  # read as they are, with a warning
    # absent files and a directory where the lock cannot be written / a lock held too long: one line
    for error, needle in ((PermissionError(13, "Permission denied"), "cannot write there: Permission denied"),
                          (filelock.Timeout("x.lock"), "held")):  # fmt: skip
        def raise_(*a, error=error, **k):
            raise error

        monkeypatch.setattr(filelock.FileLock, "acquire", raise_)
        with pytest.raises(UserError) as info:
            im.load_images("cifar10", str(tmp_path / "c"))
        msg = str(info.value)
        assert "\n" not in msg and f"could not download cifar10 into {tmp_path / 'c'}" in msg and needle in msg
        assert "--set data.source=mnist-5k" in msg


def write_folder(root: Path, classes=("n01", "n02", "n03"), per_class: int = 3) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{c}_{i}.png")


def test_imagenet_folder_tree_is_read_by_a_dataloader(tmp_path: Path) -> None:
    write_folder(tmp_path)
    d = im.load_images("imagenet", str(tmp_path))
    assert isinstance(d, im.FolderImages) and d.classes == ["n01", "n02", "n03"] and len(d.train) == 9
    t = im.prepare_images(cfg(loader_workers=0), d, channels=3, size=24, recipe="imagenet")
    assert t.num_classes == 3 and t.n_train == 9 and t.n_test == 9
    x, y = next(t.batches("train", 4, CPU, torch.Generator().manual_seed(0)))
    assert x.shape == (4, 3, 24, 24) and 0 <= float(x.min()) and float(x.max()) <= 1 and y.dtype == torch.int64
    xs = torch.cat([b for b, _ in t.batches("test", 4, CPU, None)])
    assert xs.shape == (9, 3, 24, 24)
    # the training order follows the trial's generator
    order = [torch.cat([y for _, y in t.batches("train", 9, CPU, torch.Generator().manual_seed(s))]) for s in (5, 5)]
    assert torch.equal(order[0], order[1])


def test_imagenet_subset_keeps_the_listed_classes_in_file_order(tmp_path: Path) -> None:
    write_folder(tmp_path, classes=("n01", "n02", "n03", "n04"))
    (tmp_path / "classes.txt").write_text("n03\nn01\n")
    d = im.load_images("imagenet-subset", str(tmp_path), classes_file=str(tmp_path / "classes.txt"))
    assert d.classes == ["n03", "n01"] and d.num_classes == 2 and len(d.train) == 6
    assert {Path(p).parent.name for p, _ in d.train} == {"n01", "n03"}
    assert {label for p, label in d.train if "n03" in p} == {0}
    assert im.source_classes("imagenet-subset", str(tmp_path / "classes.txt")) == 2


@pytest.mark.parametrize(
    ("setup", "kwargs", "message"),
    [
        (lambda r: None, {}, "has no train/ directory"),
        (lambda r: (r / "train").mkdir(), {}, "has no val/ directory"),
        (write_folder, {"classes_file": "missing.txt"}, "data.classes_file: only for data.source imagenet-subset"),
    ],
)
def test_malformed_imagenet_directory_is_one_line(tmp_path: Path, setup, kwargs, message) -> None:
    setup(tmp_path)
    with pytest.raises(UserError, match=message) as info:
        im.load_images("imagenet", str(tmp_path), **kwargs)
    assert "\n" not in str(info.value)


def test_imagenet_needs_root_and_subset_needs_known_classes(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data.root: imagenet is read from your own copy"):
        im.load_images("imagenet", None)
    write_folder(tmp_path)
    (tmp_path / "c.txt").write_text("n01\nn99\n")
    with pytest.raises(UserError, match="class 'n99' has no folder"):
        im.load_images("imagenet-subset", str(tmp_path), classes_file=str(tmp_path / "c.txt"))


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (3, 32), (1, 32), (3, 64), (3, 224), (1, 16)])
def test_offline_stand_in_at_any_family_shape(channels: int, size: int) -> None:
    d = im.load_images("mnist-5k")
    assert d.train_x.shape == (2500, 1, 28, 28) and d.num_classes == 10
    t = im.prepare_images(cfg(n_train=64, n_test=32), d, channels=channels, size=size, recipe="cifar")
    assert t.n_train == 64 and t.n_test == 32
    x, y = next(t.batches("train", 8, CPU, torch.Generator().manual_seed(0)))
    assert x.shape == (8, channels, size, size) and y.shape == (8,)
    if channels == 3:  # grey replicated
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    if size == 32:  # 28 -> 32 by zero padding: the digit keeps its pixel scale
        assert float(x[..., :2, :].abs().sum()) == 0 and float(x[..., 2:30, 2:30].sum()) > 0


def test_subsets_are_nested_and_fixed() -> None:
    d = im.load_images("mnist-5k")
    small = im.prepare_images(cfg(n_train=100), d, channels=1, size=28, recipe="none").train_index
    large = im.prepare_images(cfg(n_train=300), d, channels=1, size=28, recipe="none").train_index
    assert set(small.tolist()) <= set(large.tolist()) and len(small) == 100


@pytest.mark.parametrize("recipe", im.AUGMENTATIONS)
def test_augmentation_is_deterministic_per_seed(recipe: str) -> None:
    x = torch.rand(6, 3, 32, 32)
    a = im.augment(x, recipe, torch.Generator().manual_seed(1))
    b = im.augment(x, recipe, torch.Generator().manual_seed(1))
    c = im.augment(x, recipe, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(a, x) if recipe == "none" else not torch.equal(a, c)


def test_cifar_recipe_is_a_shifted_window_of_the_padded_image() -> None:
    x = torch.arange(32.0).expand(1, 1, 32, 32).clone()  # value = column index
    out = im.augment(x, "cifar", torch.Generator().manual_seed(0))
    row = out[0, 0, 16]
    inside = row[row > 0]  # zero padding, then consecutive columns (or reversed when flipped)
    d = inside[1:] - inside[:-1]
    assert len(inside) >= 27 and (d.abs() == 1).all() and len(set(d.tolist())) == 1


def test_rescale_shrinks_and_pads_or_enlarges_and_crops() -> None:
    x = torch.ones(2, 1, 32, 32)
    small = im.rescale(x, 0.5)
    assert small.shape == x.shape and float(small[..., 8:24, 8:24].min()) == 1 and float(small[..., :8, :].max()) == 0
    assert torch.equal(im.rescale(x, 1.0), x)
    big = im.rescale(torch.arange(32.0).expand(1, 1, 32, 32), 2.0)  # centre crop: the middle columns, stretched
    assert big.shape == (1, 1, 32, 32) and 7 <= float(big[0, 0, 0, 0]) <= 9 and 22 <= float(big[0, 0, 0, -1]) <= 24


def test_evaluation_reports_top5_heads_and_one_metric_per_scale() -> None:
    d = im.load_images("mnist-5k")
    c = cfg(n_train=32, n_test=40, scale_eval=[0.5, 1.0, 2], num_classes=10)
    t = im.prepare_images(c, d, channels=1, size=28, recipe="none")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(28 * 28, 10)

        def forward(self, x):
            z = self.fc(x.flatten(1))
            return {"logits": z, "head1": -z}

    torch.manual_seed(0)
    m = Net().eval()
    out = im.evaluate_images(m, t, {**c, "__epoch__": 1, "epochs": 1}, CPU)
    assert set(out) == {"test_loss", "test_acc", "test_err_pct", "test_acc_head1", "test_acc_scale_0.5",
                        "test_acc_scale_1", "test_acc_scale_2"}  # fmt: skip
    assert out["test_acc_scale_1"] == out["test_acc"] and 0 <= out["test_acc"] <= 1
    assert out["test_err_pct"] == pytest.approx(100 * (1 - out["test_acc"]))  # the papers' unit
    # at the end only
    mid = im.evaluate_images(m, t, {**c, "scale_eval_at": "end", "__epoch__": 1, "epochs": 3}, CPU)
    assert "test_acc_scale_0.5" not in mid
    assert im.topk_correct(torch.tensor([[0.0, 1, 2, 3, 4, 5]]), torch.tensor([0]), 5) == 0
    assert im.topk_correct(torch.tensor([[0.0, 1, 2, 3, 4, 5]]), torch.tensor([1]), 5) == 1
    assert im.is_scale_metric("test_acc_scale_0.75") and not im.is_scale_metric("test_acc_scale_")


def test_training_epoch_learns_with_the_shared_loop() -> None:
    d = im.load_images("mnist-5k")
    c = cfg(n_train=256, n_test=256, batch_size=32, num_classes=10)
    t = im.prepare_images(c, d, channels=1, size=28, recipe="none")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = im.evaluate_images(m, t, c, CPU)["test_acc"]
    for _ in range(3):
        metrics = im.train_epoch_images(m, opt, t, c, torch.Generator().manual_seed(0), CPU)
    after = im.evaluate_images(m, t, c, CPU)["test_acc"]
    assert set(metrics) == {"train_loss", "train_acc"} and after > max(before, 0.5)


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"augment": "autoaugment"}, "augment"),
        ({"scale_eval": [0.5, 0.5]}, "scale_eval"),
        ({"scale_eval": [0]}, "scale_eval"),
        ({"scale_eval_at": "never"}, "scale_eval_at"),
        ({"n_train": 3000}, "n_train"),
        ({"batch_size": 4000}, "batch_size"),
        ({"num_classes": 5}, "num_classes"),
    ],
)
def test_image_config_rules_name_the_key(over, key) -> None:
    d = im.load_images("mnist-5k")
    with pytest.raises(ConfigError) as info:
        im.check_image_config("fam", cfg(**over), d)
    assert info.value.key == key and "\n" not in str(info.value)


def test_imagenet_folder_is_sharded_over_data_parallel_workers(tmp_path: Path) -> None:
    """Two DDP workers read disjoint halves of each global batch of the one-worker order (not the
    whole epoch each), so the global batch is the spec's and every image is read once per epoch."""
    from trainables import runtime

    write_folder(tmp_path, per_class=4)
    d = im.load_images("imagenet", str(tmp_path))
    t = im.prepare_images(cfg(loader_workers=0), d, channels=3, size=16, recipe="none")

    def labels_and_sizes(shard):
        with runtime.training_pass(shard):
            batches = list(t.batches("train", 5, CPU, torch.Generator().manual_seed(7)))
        return [y.tolist() for _, y in batches], [len(y) for _, y in batches]

    whole, sizes = labels_and_sizes(None)
    assert sizes == [5, 5, 2] and sorted(sum(whole, [])) == sorted(y for _, y in d.train)
    rank0, sizes0 = labels_and_sizes(runtime.Shard(0, 2))
    rank1, sizes1 = labels_and_sizes(runtime.Shard(1, 2))
    assert sizes0 == [3, 3, 1] and sizes1 == [2, 2, 1]
    assert [a + b for a, b in zip(rank0, rank1)] == whole  # each global batch split between the workers
    # the test split in fixed order, whole on an unsharded evaluation
    xs = [y for _, y in t.batches("test", 5, CPU, None)]
    assert sum(len(y) for y in xs) == 12
