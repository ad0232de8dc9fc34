"""Share or Split: Transformed MNIST, square IoU, margin loss and squash, the heads, the configs and the YAMLs.

The generic contract (both heads x both tasks, via FAMILY.variants) is in test_contract.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from core.errors import UserError
from trainables import REGISTRY, share_split
from trainables.common import make_optimizer, resolve_config
from trainables.data import load_mnist
from trainables.share_split import (
    CANVAS,
    DIGIT,
    FAMILY,
    ShareOrSplitNet,
    margin_loss,
    render,
    square_iou,
    squash,
    transform_params,
)

SEARCH_SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mnist5k():
    return load_mnist("mnist-5k")


def config(**overrides) -> dict:
    return resolve_config(FAMILY, {"train_images": 128, "test_images": 64, "device": "cpu", **overrides})


# -- transform ----------------------------------------------------------------------------------


def test_transform_params_stay_in_bounds_and_are_deterministic():
    index = np.arange(20_000)
    p = transform_params(3, 1, index, 5)
    s, cx, cy = p.unbind(-1)
    assert p.shape == (20_000, 3) and p.dtype == torch.float64
    assert s.min() >= 0.5 and s.max() <= 2.0
    assert s.min() < 0.52 and s.max() > 1.98  # the whole range is used
    half = DIGIT * s / 2
    for c in (cx, cy):
        assert (c - half >= 0).all() and (c + half <= CANVAS).all()
    assert torch.equal(p, transform_params(3, 1, index, 5))  # pure function of its arguments
    assert torch.equal(p[7:9], transform_params(3, 1, index[7:9], 5))  # per sample, not per batch
    for other in (transform_params(4, 1, index, 5), transform_params(3, 2, index, 5), transform_params(3, 1, index, 6)):
        assert not torch.isclose(p, other).all(-1).any()  # another seed, stream or copy: other transforms


def test_render_keeps_the_ink_inside_the_box(mnist5k):
    digits = mnist5k.train_x[:300]
    params = transform_params(0, 1, np.arange(300), 0)
    canvases = render(digits, params)[:, 0]  # (B, 56, 56)
    assert canvases.shape == (300, CANVAS, CANVAS)
    for img, digit, (s, cx, cy) in zip(canvases, digits, params.tolist()):
        half = DIGIT * s / 2
        rows, cols = torch.nonzero(img > 0, as_tuple=True)
        assert cols.min() >= math.floor(cx - half) and cols.max() <= math.ceil(cx + half) - 1
        assert rows.min() >= math.floor(cy - half) and rows.max() <= math.ceil(cy + half) - 1
        # the ink's area scales with s^2
        assert img.sum().item() == pytest.approx(s**2 * digit.float().sum().item() / 255, rel=0.1)


def test_render_of_a_full_square_fills_exactly_the_box():
    full = torch.full((3, DIGIT, DIGIT), 255, dtype=torch.uint8)
    params = torch.tensor([[0.5, 14.0, 14.0], [1.0, 30.5, 20.25], [2.0, 28.0, 28.0]], dtype=torch.float64)
    canvases = render(full, params)[:, 0]
    u = torch.arange(CANVAS, dtype=torch.float64)
    for img, (s, cx, cy) in zip(canvases, params.tolist()):
        half = DIGIT * s / 2
        outside_x = (u + 1 <= cx - half) | (u >= cx + half)
        outside_y = (u + 1 <= cy - half) | (u >= cy + half)
        inside_x = (u >= cx - half + 1) & (u + 1 <= cx + half - 1)  # one px in from the edge (bilinear border)
        inside_y = (u >= cy - half + 1) & (u + 1 <= cy + half - 1)
        assert (img[outside_y, :] == 0).all() and (img[:, outside_x] == 0).all()
        assert (img[inside_y][:, inside_x] == 1).all()
        assert img.sum().item() == pytest.approx((DIGIT * s) ** 2, rel=0.08)


def test_test_set_is_the_same_in_every_trial(mnist5k):
    a = share_split.prepare(config(seed=0, head="share"), mnist5k)
    b = share_split.prepare(config(seed=9, head="split", train_images=300, copies=80), mnist5k)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert a.test_x.shape == (64, CANVAS, CANVAS) and a.test_x.dtype == torch.uint8
    assert np.array_equal(b.train_index[:128], a.train_index)  # training subsets are nested
    c = share_split.prepare(config(data_seed=1), mnist5k)
    assert not torch.equal(a.test_x, c.test_x)


def test_defaults_are_the_paper_sizes_capped_at_the_split(mnist5k):
    data = share_split.prepare(resolve_config(FAMILY, {}), mnist5k)
    assert len(data.train_y) == 2500 and len(data.test_y) == 2500  # 55,000 and 5,000 capped


def test_copies_cycle_over_epochs(mnist5k):
    data = share_split.prepare(config(copies=3), mnist5k)
    cfg = config(copies=3)
    epochs = [share_split.train_params(data, cfg, e) for e in range(6)]
    assert torch.equal(epochs[0], epochs[3]) and torch.equal(epochs[2], epochs[5])
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    one = config(copies=1)
    assert torch.equal(share_split.train_params(data, one, 0), share_split.train_params(data, one, 79))


def test_train_epoch_advances_the_checkpointed_epoch_counter(mnist5k):
    cfg = config(head="split", task="cls_box", train_images=64, copies=80, recon_size=28)
    data = share_split.prepare(cfg, mnist5k)
    model = share_split.build(cfg)
    metrics = share_split.train_epoch(model, make_optimizer(model, cfg), data, cfg, torch.Generator(), CPU)
    assert int(model.state_dict()["epochs_trained"]) == 1
    assert {"train_loss", "train_acc", "train_cls_loss", "train_box_loss", "train_recon_loss"} <= set(metrics)
    parts = metrics["train_cls_loss"] + metrics["train_box_loss"] + metrics["train_recon_loss"]
    assert metrics["train_loss"] == pytest.approx(parts)


# -- IoU, squash, margin loss ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ((4.0, 10.0, 10.0), (4.0, 10.0, 10.0), 1.0),  # identical
        ((2.0, 0.0, 0.0), (2.0, 5.0, 0.0), 0.0),  # disjoint
        ((2.0, 0.0, 0.0), (2.0, 2.0, 0.0), 0.0),  # touching edges
        ((2.0, 1.0, 1.0), (4.0, 1.0, 1.0), 4 / 16),  # nested: inner area / outer area
        ((2.0, 1.0, 1.0), (4.0, 0.0, 0.0), 4 / 16),  # nested, off-centre
        ((2.0, 0.0, 0.0), (2.0, 1.0, 0.0), 2 / 6),  # half overlap in x: inter 1 x 2, union 4 + 4 - 2
        ((2.0, 0.0, 0.0), (2.0, 1.0, 1.0), 1 / 7),  # quarter overlap: inter 1, union 7
        ((-1.0, 0.0, 0.0), (2.0, 0.0, 0.0), 0.0),  # a negative predicted side counts as 0
    ],
)
def test_square_iou_hand_computed(a, b, iou):
    ta, tb = torch.tensor(a), torch.tensor(b)
    assert square_iou(ta, tb).item() == pytest.approx(iou)
    assert square_iou(tb, ta).item() == pytest.approx(iou)  # symmetric
    assert square_iou(torch.stack([ta, ta]), torch.stack([tb, tb])).tolist() == pytest.approx([iou, iou])


def test_squash_hand_computed():
    v = squash(torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 1.0]]))
    assert v[0].tolist() == pytest.approx([15 / 26, 20 / 26])  # |s| = 5 -> |v| = 25/26, along s
    assert v[1].tolist() == [0.0, 0.0]
    assert v[2].tolist() == pytest.approx([0.0, 0.5])  # |s| = 1 -> |v| = 1/2
    assert (squash(torch.randn(100, 10, 8) * 10).norm(dim=-1) < 1).all()


def test_margin_loss_hand_computed():
    lengths = torch.tensor([[0.95, 0.2, 0.05], [0.5, 0.3, 0.0]])
    y = torch.tensor([0, 0])
    # sample 1: 0 + 0.5 * 0.1^2 + 0 = 0.005; sample 2: 0.4^2 + 0.5 * 0.2^2 = 0.18; mean 0.0925
    assert margin_loss(lengths, y).item() == pytest.approx(0.0925)
    assert margin_loss(torch.tensor([[0.1, 0.95]]), torch.tensor([1])).item() == pytest.approx(0.0)
    assert margin_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([1])).item() == pytest.approx(0.5 * 0.81)


# -- nets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("head", "k_h", "k_p"), [("share", 80, None), ("split", 80, 16)])
def test_feature_size_mapping(head, k_h, k_p):
    model = share_split.build(config(head=head, features=80, task="cls_box"))
    assert model.head.fc.out_features == (k_h if head == "share" else 10 * k_p)
    out = model(torch.rand(5, 1, CANVAS, CANVAS))
    assert out.scores.shape == (5, 10) and out.box.shape == (5, 3) and out.recon.shape == (5, CANVAS * CANVAS)


def test_split_masks_with_the_true_class_in_training_and_the_predicted_one_at_test():
    torch.manual_seed(0)
    model = share_split.build(config(head="split", features=40, task="cls_box", recon_size=28)).eval()
    x = torch.rand(6, 1, CANVAS, CANVAS)
    out = model(x)
    predicted = out.scores.argmax(-1)
    assert torch.allclose(model(x, predicted).box, out.box)
    assert not torch.allclose(model(x, (predicted + 1) % 10).box, out.box)
    assert (out.scores > 0).all() and (out.scores < 1).all()  # capsule lengths


def test_cls_task_and_zero_recon_weight_drop_their_branches():
    model = share_split.build(config(head="share", task="cls", recon_weight=0))
    assert model.head.box is None and model.decoder is None
    out = model(torch.rand(2, 1, CANVAS, CANVAS))
    assert out.box is None and out.recon is None
    bigger = share_split.build(config(head="share", task="cls_box", recon_size=28))
    assert bigger.decoder.net[-1].out_features == 28 * 28


def test_evaluate_reports_iou_only_with_a_box(mnist5k):
    for task, has_iou in (("cls", False), ("cls_box", True)):
        cfg = config(head="share", task=task, recon_size=28)
        with torch.no_grad():
            metrics = share_split.evaluate(share_split.build(cfg).eval(), share_split.prepare(cfg, mnist5k), cfg, CPU)
        assert ("test_iou" in metrics) is has_iou and ("test_box_loss" in metrics) is has_iou
        assert {"test_loss", "test_acc", "test_cls_loss", "test_recon_loss"} <= set(metrics)


# -- config errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train_images": 2501}, "train_images: must be at most the train split size of mnist-5k (2500) (got 2501)"),
        ({"test_images": 9999}, "test_images: must be at most the test split size of mnist-5k (2500) (got 9999)"),
        ({"head": "split", "features": 42}, "features must be a multiple of 5 for head=split"),
        ({"head": "both"}, "head: must be one of share, split (got 'both')"),
        ({"task": "box"}, "task: must be one of cls, cls_box"),
        ({"copies": 0}, "copies: must be an integer >= 1 (got 0)"),
        ({"data_seed": -1}, "data_seed: must be an integer >= 0 (got -1)"),
        ({"recon_size": 32}, "recon_size: must be one of 28, 56 (got 32)"),
    ],
)
def test_bad_config_is_a_one_line_user_error(mnist5k, overrides, message):
    with pytest.raises(UserError, match="^trainable share_split: ") as e:
        share_split.prepare(config(**overrides), mnist5k)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_family_is_registered_with_all_four_nets():
    assert REGISTRY["share_split"] is FAMILY
    assert {(v["head"], v["task"]) for v in FAMILY.variants.values()} == {
        (h, t) for h in ("share", "split") for t in ("cls", "cls_box")
    }
    assert isinstance(share_split.build(resolve_config(FAMILY, {})), ShareOrSplitNet)


# -- search spaces ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["share_split", "share_split_data_size"])
def test_search_space_uses_known_keys_and_its_paper_rows_are_grid_points(name):
    spec = yaml.safe_load((SEARCH_SPACES / f"{name}.yaml").read_text())
    assert spec["name"] == name and spec["trainable"] == "share_split"
    data_keys = {k: v for k, v in spec["data"].items() if k != "source"}
    resolve_config(FAMILY, {**data_keys, **spec["fixed"], **{k: v["grid"][0] for k, v in spec["space"].items()}})
    grid = {k: v["grid"] for k, v in spec["space"].items()}
    for row in spec["paper"]["results"]:
        assert set(row["where"]) == set(grid), row["label"]
        assert all(row["where"][k] in grid[k] for k in grid), row["label"]
        assert row["metric"] in {"test_acc", "test_iou"} and 0.5 < row["value"] < 1.0
    labels = [row["label"] for row in spec["paper"]["results"]]
    assert len(labels) == len(set(labels))


def test_table1_has_every_cell():
    spec = yaml.safe_load((SEARCH_SPACES / "share_split.yaml").read_text())
    cells = {(tuple(sorted(r["where"].items())), r["metric"]) for r in spec["paper"]["results"]}
    assert len(cells) == 8 * 6  # 8 nets x (cls 55K, cls 4.4M, cls+box acc 55K/4.4M, IoU 55K/4.4M)
    by_label = {r["label"]: r for r in spec["paper"]["results"]}
    row = by_label["Table 1, Split K_p=8, classification alone, Train55K"]
    assert row["where"] == {"head": "split", "features": 40, "task": "cls", "copies": 1} and row["value"] == 0.9841
