"""WSMS-Net (trainables/wsms.py): stage shapes, weight sharing, MS-Net, per-stage BN, the paper's
parameter counts, the CIFAR backbones, scaled-test metrics and the shipped search spaces.

The contract (finite output, every parameter a gradient, determinism) is checked over the
family's variants by tests/trainables/test_contract.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from trainables.backbones import CifarDenseNet, CifarResNet, ResNet
from trainables.common import ConfigError, count_params, resolve_config
from trainables.wsms import FAMILY, WSMSNet, build, check, downscale, make_trunk, stage_sides

REPO = Path(__file__).resolve().parents[2]


def cfg(**overrides) -> dict:
    return resolve_config(FAMILY, {"num_classes": 10, **overrides})


def on_meta(**overrides) -> int:
    with torch.device("meta"):
        return count_params(build(cfg(**overrides)))


# ----------------------------------------------------------------------------- parameter counts

# PAPERS.md section 4: (backbone, stages) -> parameters() with 1000 classes, 1x1 integration to 1024
PAPER_COUNTS = {
    ("resnet50", 1): 25_557_032, ("resnet50", 3): 28_203_048, ("resnet50", 4): 28_465_192,
    ("resnet101", 1): 44_549_160, ("resnet101", 3): 47_195_176, ("resnet101", 4): 47_457_320,
    ("resnet152", 1): 60_192_808, ("resnet152", 3): 62_838_824, ("resnet152", 4): 63_100_968,
}  # fmt: skip
# reading C: shared convs, each stage its own BN affine, BN-ReLU on the concatenation
PER_STAGE_BN_COUNTS = {
    ("resnet50", 3): 28_250_920, ("resnet50", 4): 28_516_520,
    ("resnet101", 3): 47_295_272, ("resnet101", 4): 47_560_872,
    ("resnet152", 3): 62_991_144, ("resnet152", 4): 63_256_744,
}  # fmt: skip


@pytest.mark.parametrize(("backbone", "stages"), list(PAPER_COUNTS))
def test_imagenet_parameter_counts_are_exact(backbone: str, stages: int) -> None:
    assert on_meta(backbone=backbone, stages=stages, num_classes=1000, integration="conv1x1") == PAPER_COUNTS[
        backbone, stages
    ]


@pytest.mark.parametrize(("backbone", "stages"), list(PER_STAGE_BN_COUNTS))
def test_per_stage_bn_gives_reading_c(backbone: str, stages: int) -> None:
    count = on_meta(backbone=backbone, stages=stages, num_classes=1000, per_stage_bn=True)
    assert count == PER_STAGE_BN_COUNTS[backbone, stages]
    assert round(count / 1e6, 1) == round(PER_STAGE_BN_COUNTS[backbone, stages] / 1e6, 1)


def test_paper_millions_are_matched_by_reading_c_not_by_the_default() -> None:
    paper = {("resnet50", 3): 28.3, ("resnet50", 4): 28.5, ("resnet101", 3): 47.3, ("resnet101", 4): 47.6,
             ("resnet152", 3): 63.0, ("resnet152", 4): 63.3}  # fmt: skip
    assert all(round(PER_STAGE_BN_COUNTS[k] / 1e6, 1) == m for k, m in paper.items())
    below = [k for k, m in paper.items() if PAPER_COUNTS[k] < m * 1e6 - 0.05e6]
    assert len(below) == 5 and ("resnet50", 4) not in below  # the default is 0.04-0.20M below the paper


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: CifarResNet(20), 269_722),  # He et al. 2016a: 0.27M
        (lambda: CifarResNet(110), 1_727_962),  # 1.7M
        (lambda: CifarResNet(164, preact=True, bottleneck=True), 1_703_258),  # He et al. 2016b: 1.7M
        (lambda: CifarDenseNet(100), 769_162),  # Huang et al. 2017, DenseNet-BC k=12: 0.8M
        (lambda: CifarDenseNet(40, bottleneck=False, compression=1.0), 1_019_722),  # DenseNet-40 k=12: 1.0M
        (lambda: CifarDenseNet(100, growth=24, bottleneck=False, compression=1.0), 27_249_082),  # 27.2M
    ],
)
def test_cifar_backbone_counts_match_the_papers(make, expected: int) -> None:
    with torch.device("meta"):
        assert count_params(make()) == expected


# ----------------------------------------------------------------------------- shapes


SHAPE_CASES = [
    ({"backbone": "cifar_resnet", "depth": 8}, 32, 3),
    ({"backbone": "cifar_resnet", "depth": 8}, 64, 3),
    ({"backbone": "cifar_preact_resnet", "depth": 11, "block": "bottleneck"}, 32, 3),
    ({"backbone": "cifar_densenet_bc", "depth": 10}, 32, 3),
    ({"backbone": "cifar_densenet", "depth": 7}, 48, 3),
    ({"backbone": "resnet18", "cifar_stem": True}, 32, 4),
    ({"backbone": "resnet50"}, 64, 4),
    ({"backbone": "resnet50"}, 224, 4),
]


@pytest.mark.parametrize(("keys", "side", "max_stages"), SHAPE_CASES)
def test_every_stage_ends_at_the_final_size(keys: dict, side: int, max_stages: int) -> None:
    for stages in range(1, max_stages + 1):
        c = cfg(**keys, width=4, image_size=side, stages=stages)
        check(c)
        with torch.device("meta"), torch.no_grad():  # shapes only (the contract test runs real forwards)
            model = build(c).eval()
            x = torch.zeros(2, 3, side, side)
            outs = model.stage_features(x)
            assert model(x).shape == (2, 10)
        assert len(outs) == stages
        ends = {o.shape[-2:] for o in outs}
        assert len(ends) == 1, [o.shape for o in outs]
        assert next(iter(ends))[0] == stage_sides(c)[0]
        if keys["backbone"] == "resnet50" and side == 224:
            assert [tuple(o.shape[1:]) for o in outs] == [(128, 7, 7), (64, 7, 7), (32, 7, 7), (16, 7, 7)][:stages]


@pytest.mark.parametrize(
    ("keys", "side", "stages", "message"),
    [
        ({"backbone": "resnet50"}, 224, 5, "resnet50 at 224 px allows at most 4 stages: stage 5 (14 px input, stem + 0 groups) would end at 4x4, not 7x7"),
        ({"backbone": "resnet152"}, 224, 6, "allows at most 4 stages: stage 5"),
        ({"backbone": "cifar_resnet"}, 32, 4, "cifar_resnet at 32 px allows at most 3 stages: stage 4 (4 px input, stem + 0 groups) would end at 4x4, not 8x8"),
        ({"backbone": "cifar_densenet_bc"}, 32, 5, "allows at most 3 stages: stage 4"),
        # small images (a 1x1 final map): a stem-only stage would end at the same size, still refused
        ({"backbone": "resnet50", "width": 4}, 32, 5, "resnet50 has 4 groups: at most 4 stages (stage 5 would run the stem and no group; got 5)"),
        ({"backbone": "resnet18"}, 16, 5, "resnet18 has 4 groups: at most 4 stages"),
        ({"backbone": "cifar_resnet"}, 34, 3, "cifar_resnet at 34 px allows at most 2 stages: stage 3 (8 px input, stem + 1 groups) would end at 8x8, not 9x9"),
    ],
)  # fmt: skip
def test_a_stage_that_cannot_end_at_the_final_size_is_one_clear_error(keys, side, stages, message) -> None:
    with pytest.raises(ConfigError) as e:
        check(cfg(**keys, image_size=side, stages=stages))
    assert e.value.key == "stages"
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("backbone", ["cifar_resnet", "cifar_densenet_bc", "resnet18"])
def test_size_check_agrees_with_the_forward(backbone: str) -> None:
    """`check` accepts a (side, stages) exactly when the built net's stages end at one size."""
    depth = {"cifar_resnet": 8, "cifar_densenet_bc": 10}.get(backbone, 0)
    verdicts = []
    for side in (17, 20, 26, 30, 34, 36, 40):
        for stages in (2, 3, 4):
            c = cfg(backbone=backbone, depth=depth, width=2, image_size=side, stages=stages, downscale="avgpool")
            try:
                check(c)
                accepted = True
            except ConfigError:
                accepted = False
            try:
                model = WSMSNet(c, 10).eval()  # builds whenever every stage has a group left to run
            except ConfigError:
                assert not accepted
                verdicts.append(False)
                continue
            with torch.no_grad():
                try:
                    ends = {o.shape[-2:] for o in model.stage_features(torch.randn(1, 3, side, side))}
                    same = len(ends) == 1
                except (ValueError, RuntimeError):  # stages at different sizes; a pooling with no output
                    same = False
            assert accepted == same, (backbone, side, stages)
            verdicts.append(accepted)
    assert any(verdicts) and not all(verdicts)


def test_stage_inputs_are_the_downscaled_image() -> None:
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(downscale(x, 2, "avgpool"), x.reshape(2, 3, 16, 2, 16, 2).mean((3, 5)))
    assert torch.equal(downscale(x, 4, "nearest"), x[..., 2::4, 2::4])
    for method in ("bilinear-antialias", "bilinear", "avgpool", "nearest"):
        assert downscale(x, 4, method).shape == (2, 3, 8, 8)
        assert downscale(x, 1, method) is x
    # stage 2 of a WSMS net sees exactly downscale(x, 2): its features equal the trunk on that input
    model = build(cfg(backbone="cifar_resnet", depth=8, width=4, stages=2, downscale="avgpool")).eval()
    with torch.no_grad():
        stem, g1, g2 = list(model.trunks[0])[:3]
        expected = g2(g1(stem(downscale(x, 2, "avgpool"))))
        assert torch.allclose(model.stage_features(x)[1], expected)


# ----------------------------------------------------------------------------- sharing


def test_one_stage_is_the_plain_backbone() -> None:
    torch.manual_seed(3)
    plain = CifarResNet(8, 10, width=4)
    torch.manual_seed(3)
    model = build(cfg(backbone="cifar_resnet", depth=8, width=4, stages=1, integration="conv3x3", ms=True))
    assert count_params(model) == count_params(plain)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain.eval()(x))
    torch.manual_seed(3)
    tv = ResNet("resnet50", 10, width=4)
    assert on_meta(backbone="resnet50", width=4, stages=1) == count_params(tv)


@pytest.mark.parametrize(
    "keys",
    [
        {"backbone": "cifar_resnet", "depth": 8},
        {"backbone": "cifar_preact_resnet", "depth": 8},
        {"backbone": "cifar_densenet_bc", "depth": 10},
        {"backbone": "resnet50", "image_size": 64},
    ],
)
@pytest.mark.parametrize("integration", ["none", "conv1x1", "conv3x3"])
def test_wsms_has_the_backbone_parameters_plus_the_integration_layer(keys: dict, integration: str) -> None:
    stages = 3
    c = cfg(**keys, width=4, stages=stages, integration=integration, integration_width=12)
    with torch.device("meta"):
        trunk = make_trunk(c, 10)
        parts = [trunk.stem, *trunk.groups]
        backbone = sum(count_params(p) for p in parts)  # stem + groups: everything but the head
        wsms, ms = build(c), build({**c, "ms": True})
    concat = wsms.concat_channels
    head_norm = 2 * concat if not isinstance(trunk.head_norm, nn.Identity) else 0  # pre-activation: BN on the concat
    k = {"none": 0, "conv1x1": 1, "conv3x3": 3}[integration]
    conv = concat * 12 * k * k
    fc = (12 if k else concat) * 10 + 10
    assert count_params(wsms) == backbone + head_norm + conv + fc
    # MS-Net: stage s has its own stem and first G-s+1 groups on top of that
    extra = sum(count_params(p) for s in range(1, stages) for p in parts[: len(parts) - s])
    assert count_params(ms) == count_params(wsms) + extra > count_params(wsms)


def test_gradient_from_stage_2_reaches_the_shared_stem() -> None:
    x = torch.randn(4, 3, 32, 32)
    wsms = build(cfg(backbone="cifar_resnet", depth=8, width=4, stages=2))
    stem_conv = wsms.trunks[0][0][0]
    wsms.stage_features(x)[1].pow(2).sum().backward()  # stage 2 alone
    assert stem_conv.weight.grad is not None and stem_conv.weight.grad.abs().sum() > 0
    assert wsms.trunks[0][3][0].conv1.weight.grad is None  # group 3: run by stage 1 only
    # MS-Net: stage 2's gradient stays in its own copy
    ms = build(cfg(backbone="cifar_resnet", depth=8, width=4, stages=2, ms=True))
    ms.stage_features(x)[1].pow(2).sum().backward()
    assert ms.trunks[0][0][0].weight.grad is None
    assert ms.trunks[1][0][0].weight.grad.abs().sum() > 0
    assert len(ms.trunks[1]) == 3  # stem + 2 groups: nothing it never runs


def test_wsms_stages_share_weights_and_ms_net_stages_do_not() -> None:
    x = torch.randn(2, 3, 32, 32)
    for ms in (False, True):
        model = build(cfg(backbone="cifar_resnet", depth=8, width=4, stages=2, ms=ms)).eval()
        with torch.no_grad():
            before = model.stage_features(x)
            model.trunks[0][0][0].weight.mul_(2)  # stage 1's stem conv
            after = model.stage_features(x)
        assert not torch.allclose(before[0], after[0])
        assert torch.allclose(before[1], after[1]) == ms  # stage 2 changes only when it shares the stem


def test_per_stage_bn_shares_convs_but_not_batchnorm() -> None:
    model = build(cfg(backbone="cifar_resnet", depth=8, width=4, stages=3, per_stage_bn=True))
    stem_bn = model.trunks[0][0][1]
    assert len(stem_bn.norms) == 3  # the stem runs in all 3 stages
    assert [len(g[0].bn1.norms) for g in list(model.trunks[0])[1:]] == [3, 2, 1]  # group g: min(S, G-g+1)
    assert isinstance(model.concat_norm[0], nn.BatchNorm2d)
    x = torch.randn(4, 3, 32, 32)
    model.stage_features(x)[1].sum().backward()  # stage 2 uses norm copy 1, not copy 0
    assert stem_bn.norms[1].weight.grad is not None and stem_bn.norms[0].weight.grad is None
    assert model.trunks[0][0][0].weight.grad is not None  # the conv itself is shared
    # running statistics per stage, too
    assert not torch.equal(stem_bn.norms[0].running_mean, stem_bn.norms[1].running_mean)


# ----------------------------------------------------------------------------- metrics and checks


def test_scaled_test_metrics_and_errors_in_percent() -> None:
    c = cfg(backbone="cifar_resnet", depth=8, width=4, stages=2, n_train=32, n_test=40, batch_size=16,
            scale_eval=[0.5, 1.0, 2.0], epochs=1)  # fmt: skip
    data = FAMILY.prepare(c, FAMILY.load_data("mnist-5k", None))
    model = build(c).eval()
    metrics = FAMILY.evaluate(model, data, c, torch.device("cpu"))
    assert {"test_acc_scale_0.5", "test_acc_scale_1", "test_acc_scale_2"} <= set(metrics)
    assert metrics["test_acc_scale_1"] == metrics["test_acc"]
    assert math.isclose(metrics["test_err_pct"], 100 * (1 - metrics["test_acc"]))
    assert all(FAMILY.knows_metric(k) for k in metrics)
    assert FAMILY.knows_metric("test_acc_top5") and FAMILY.knows_metric("test_err_top5_pct")


@pytest.mark.parametrize(
    ("keys", "key", "message"),
    [
        ({"backbone": "vgg16"}, "backbone", "unknown backbone 'vgg16'; known: resnet18"),
        ({"backbone": "cifar_resnet", "depth": 30}, "depth", "cifar_resnet with basic blocks needs depth 6n+2"),
        ({"backbone": "cifar_preact_resnet", "depth": 112, "block": "bottleneck"}, "depth", "needs depth 9n+2"),
        ({"backbone": "cifar_densenet_bc", "depth": 42}, "depth", "needs depth 6n+4"),
        ({"backbone": "resnet50", "depth": 50}, "depth", "fixed by its name"),
        ({"backbone": "cifar_densenet_bc", "block": "bottleneck"}, "block", "only the CIFAR ResNets"),
        ({"backbone": "cifar_resnet", "cifar_stem": True}, "cifar_stem", "only for the torchvision ResNets"),
        ({"integration": "conv5x5"}, "integration", "must be one of none, conv1x1, conv3x3"),
        ({"downscale": "bicubic"}, "downscale", "must be one of bilinear-antialias, bilinear, avgpool, nearest"),
        ({"stages": 0}, "stages", "must be >= 1"),
        ({"integration_width": -1}, "integration_width", "must be >= 0"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(keys: dict, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        check(cfg(**keys))
    assert e.value.key == key and message in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- search spaces


def test_imagenet_space_lists_the_exact_counts() -> None:
    from study.models import describe_models
    from study.spec import load_spec

    models = describe_models(load_spec(REPO / "search_spaces" / "wsms_imagenet.yaml"))
    got = {(m["config"]["backbone"], m["config"]["stages"]): m["params"] for m in models}
    assert got == PAPER_COUNTS
    assert all(m["flops"] > 0 for m in models)


@pytest.mark.parametrize("name", ["wsms_imagenet", "wsms_cifar", "wsms_scale_mnist"])
def test_shipped_spaces_validate_offline(name: str) -> None:
    from study.spec import check_configs, check_keys, load_spec

    path = REPO / "search_spaces" / f"{name}.yaml"
    spec = load_spec(path, ["data.source=mnist-5k"] if name != "wsms_scale_mnist" else [])
    check_keys(spec, path)
    check_configs(spec, path, FAMILY.load_data("mnist-5k", None))
    assert spec.fixed["scale_eval"] == [0.5, 0.75, 1.0, 1.5, 2.0]


def test_a_last_batch_of_one_image_is_refused():
    data = FAMILY.load_data("mnist-5k", None)
    small = {"backbone": "resnet18", "image_size": 32, "stages": 2}  # final maps of 1x1: BatchNorm needs 2 images
    with pytest.raises(ConfigError, match=r"^trainable wsms: batch_size: 33 training images in batches of 16"):
        check(cfg(**small, n_train=33, batch_size=16), data)
    check(cfg(**small, n_train=34, batch_size=16), data)


def test_imagenet_backbones_default_to_1000_classes_outside_a_trial():
    assert on_meta(backbone="resnet50", stages=3, integration="conv1x1", num_classes=0) == 28_203_048
    assert build(cfg(backbone="cifar_resnet", depth=8, width=4, stages=2, num_classes=0)).fc.out_features == 10
