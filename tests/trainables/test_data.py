"""MNIST sources: the bundled sample's split, and the download's error path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserError
from trainables import data as data_mod


def test_bundled_sample_split_is_disjoint_and_fixed() -> None:
    a, b = data_mod.load_mnist("mnist-5k"), data_mod.load_mnist("mnist-5k")
    assert a.train_x.shape == (2500, 28, 28) and a.test_x.shape == (2500, 28, 28)
    assert a.train_x.dtype == torch.uint8 and a.train_y.dtype == torch.int64
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    with np.load(data_mod.BUNDLED_MNIST) as f:
        images = f["images"].reshape(5000, -1)
    # every image lands in exactly one half
    rows = {im.tobytes(): i for i, im in enumerate(images)}
    train_ids = {rows[x.numpy().tobytes()] for x in a.train_x.reshape(2500, -1)}
    test_ids = {rows[x.numpy().tobytes()] for x in a.test_x.reshape(2500, -1)}
    assert not train_ids & test_ids and len(train_ids | test_ids) == len(rows)
    assert set(a.train_y.tolist()) == set(range(10)) == set(a.test_y.tolist())


def test_unknown_source_lists_known() -> None:
    with pytest.raises(UserError, match="unknown source 'cifar'; known: mnist, mnist-5k"):
        data_mod.load_mnist("cifar")


def test_failed_download_suggests_offline_source(tmp_path, monkeypatch) -> None:
    import torchvision.datasets

    class Offline:
        def __init__(self, *a, **k):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(UserError) as info:
        data_mod.load_mnist("mnist", str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and f"could not download mnist into {tmp_path}" in msg and "--set data.source=mnist-5k" in msg


def test_malformed_local_mnist_files_are_reported_as_malformed(tmp_path) -> None:
    """Files there that cannot be read are named as malformed, never as a failed download."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data_mod.MNIST_FILES:
        (raw / name).write_bytes(b"\x00\x00\x08\x03 not an idx file")
    with pytest.raises(UserError) as info:
        data_mod.load_mnist("mnist", str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and f"MNIST files in {tmp_path / 'MNIST'} are malformed" in msg
    assert "could not download" not in msg


def test_one_table_of_data_sources() -> None:
    from trainables import REGISTRY
    from trainables.images import IMAGE_SOURCES, NUM_CLASSES

    assert data_mod.DATA_SOURCES == tuple(data_mod.SOURCE_TABLE) == IMAGE_SOURCES
    assert {s for f in REGISTRY.values() for s in f.sources or ()} <= set(data_mod.DATA_SOURCES)
    assert all(NUM_CLASSES[n] == s.classes for n, s in data_mod.SOURCE_TABLE.items() if s.classes is not None)


def test_data_sources_and_member_keys_import_without_torch() -> None:
    """The spec checker and the pack grouping read `trainables.sources.DATA_SOURCES` and
    `trainables.keys.MEMBER_KEYS` without importing torch or a family."""
    import subprocess
    import sys

    code = (
        "import sys, trainables.sources as s, trainables.keys as k; "
        "assert s.DATA_SOURCES and 'seed' in k.MEMBER_KEYS; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "False"
