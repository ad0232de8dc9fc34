"""Split-and-Share Module: the heads, the training schemes, the parameter counts, the ensembles and the YAMLs.

The generic contract (every head and backbone variant, via FAMILY.variants) is in test_contract.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from study.models import describe_models
from study.spec import load_spec
from trainables import REGISTRY
from trainables.common import ConfigError, count_params, make_optimizer, resolve_config
from trainables.images import TensorImages
from trainables.ssm import (
    FAMILY,
    Ensemble,
    ParallelFCHead,
    SplitShareHead,
    SSMNet,
    build,
    check,
    ensemble_logits,
    evaluate,
    member_seed,
    split_points,
    ssm_loss,
    train_epoch,
)

SEARCH_SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
SSM_SPACES = sorted(SEARCH_SPACES.glob("ssm*.yaml"))
CPU = torch.device("cpu")
TINY = {"arch": "resnet18", "width": 4, "cifar_stem": True, "image_size": 16, "num_classes": 10, "device": "cpu"}


def config(**overrides) -> dict:
    return resolve_config(FAMILY, {**FAMILY.smoke, **TINY, **overrides})


@pytest.fixture(scope="module")
def mnist5k():
    return FAMILY.load_data("mnist-5k", None)


def test_registered():
    assert REGISTRY["ssm"] is FAMILY


# -- the head ------------------------------------------------------------------------------------


def test_split_points_are_cumulative_quarters():
    assert split_points(2048, 4) == [512, 1024, 1536, 2048]
    assert split_points(512, 4) == [128, 256, 384, 512]
    assert split_points(10, 3) == [3, 7, 10]  # not divisible: rounded, the last head sees all
    assert split_points(8, 1) == [8]


@pytest.mark.parametrize("bn_relu", ["prose", "all", "none"])
def test_head_k_sees_exactly_the_first_k_quarters(bn_relu):
    """Gradient test: head k's output depends on channels [0, kC/4) and on nothing after them."""
    torch.manual_seed(0)
    head = SplitShareHead(16, 5, heads=4, bn_relu=bn_relu).eval()  # eval: BN is affine, ReLU passes positives
    f = (torch.rand(3, 16) + 0.5).requires_grad_()
    out = head(f)  # (3, 4, 5)
    assert out.shape == (3, 4, 5)
    for k, bound in enumerate([4, 8, 12, 16]):
        (g,) = torch.autograd.grad(out[:, k].sum(), f, retain_graph=True)
        seen = (g != 0).any(dim=0)
        assert seen[:bound].all(), (k, seen)
        assert not seen[bound:].any(), (k, seen)


def test_bn_relu_placement():
    torch.manual_seed(0)
    f = torch.randn(8, 16)

    def normed(head: SplitShareHead) -> list[bool]:
        return [isinstance(n, nn.Sequential) and isinstance(n[0], nn.BatchNorm1d) and isinstance(n[1], nn.ReLU)
                for n in head.norms]  # fmt: skip

    prose, alg1, none = (SplitShareHead(16, 5, 4, p) for p in ("prose", "all", "none"))
    assert normed(prose) == [True, True, True, False]  # Sec. 3: "the first 3 features"
    assert normed(alg1) == [True] * 4  # Algorithm 1, lines 6-7
    assert normed(none) == [False] * 4
    assert [n[0].num_features for n in prose.norms[:3]] == [4, 8, 12]
    # functionally: head k = fc_k(relu(bn(f[:, :b_k]))) for the first three, head 4 = fc_4(f) (prose)
    out = prose.train()(f)
    for k, b in enumerate([4, 8, 12]):
        expected = prose.fcs[k](F.relu(F.batch_norm(f[:, :b], None, None, training=True)))
        assert torch.allclose(out[:, k], expected, atol=1e-5)
    assert torch.allclose(out[:, 3], prose.fcs[3](f), atol=1e-6)
    # BN + ReLU make the head non-linear: not a linear map of f
    assert not torch.allclose(prose.train()(2 * f), 2 * out - prose(torch.zeros_like(f)), atol=1e-3)


@pytest.mark.parametrize(("head", "n_heads"), [("ssm", 4), ("2fc", 2), ("3fc", 3)])
def test_output_is_the_mean_of_the_heads(head, n_heads):
    torch.manual_seed(0)
    net = SSMNet("resnet18", 7, width=4, cifar_stem=True, head=head).eval()
    out = net(torch.randn(2, 3, 16, 16))
    heads = [out[f"head{k}"] for k in range(1, n_heads + 1)]
    assert sorted(out) == sorted(["logits", *(f"head{k}" for k in range(1, n_heads + 1))])
    assert torch.allclose(out["logits"], torch.stack(heads).mean(0), atol=1e-6)
    assert not torch.allclose(heads[0], heads[1])  # distinct heads
    plain = SSMNet("resnet18", 7, width=4, cifar_stem=True, head="plain").eval()
    assert isinstance(plain(torch.randn(2, 3, 16, 16)), torch.Tensor)


def test_parallel_fc_heads_are_full_width():
    head = ParallelFCHead(32, 10, 3)
    assert [fc.in_features for fc in head.fcs] == [32, 32, 32]


def test_individual_vs_joint_losses_on_a_tiny_batch():
    torch.manual_seed(0)
    heads = torch.randn(6, 4, 5, requires_grad=True)  # (B, heads, classes)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    out = {"logits": heads.mean(1), **{f"head{k + 1}": heads[:, k] for k in range(4)}}
    per_head = [F.cross_entropy(heads[:, k], y) for k in range(4)]
    joint = ssm_loss(out, y, scheme="joint")
    assert torch.allclose(joint, F.cross_entropy(heads.mean(1), y))
    assert torch.allclose(ssm_loss(out, y, scheme="individual"), sum(per_head))
    assert torch.allclose(ssm_loss(out, y, scheme="individual", reduce="mean"), sum(per_head) / 4)
    # individual: head k's gradient is exactly the gradient of its own cross-entropy
    (g_ind,) = torch.autograd.grad(ssm_loss(out, y, scheme="individual"), heads, retain_graph=True)
    (g_own,) = torch.autograd.grad(per_head[1], heads, retain_graph=True)
    assert torch.allclose(g_ind[:, 1], g_own[:, 1]) and (g_own[:, [0, 2, 3]] == 0).all()
    # joint: every head gets the same gradient, that of the mean's cross-entropy / 4
    (g_joint,) = torch.autograd.grad(joint, heads)
    assert torch.allclose(g_joint[:, 0], g_joint[:, 3])
    assert not torch.allclose(g_joint, g_ind)
    plain = torch.randn(6, 5)
    assert torch.allclose(ssm_loss(plain, y, scheme="individual"), F.cross_entropy(plain, y))


def test_individual_training_changes_the_update(mnist5k):
    """One step on the same batch: the schemes give different head weights."""
    weights = {}
    for scheme in ("joint", "individual"):
        cfg = config(head="ssm", scheme=scheme, n_train=32, batch_size=16, epochs=1)
        torch.manual_seed(0)
        model, data = build(cfg), FAMILY.prepare(cfg, mnist5k)
        train_epoch(model.train(), make_optimizer(model, cfg), data, cfg, torch.Generator().manual_seed(0), CPU)
        weights[scheme] = model.head.fcs[0].weight.detach().clone()
    assert not torch.allclose(weights["joint"], weights["individual"])


# -- parameter counts (Table 4) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "head", "expected"),
    [
        ("resnet50", "plain", 25_557_032),
        ("resnet50", "ssm", 28_638_176),
        ("resnet50", "2fc", 27_606_032),
        ("resnet50", "3fc", 29_655_032),
        ("resnet18", "plain", 11_689_512),
        ("resnet101", "plain", 44_549_160),
        ("resnext50_32x4d", "plain", 25_028_904),
        ("resnext101_32x8d", "plain", 88_791_336),
    ],
)
def test_parameter_counts_with_1000_classes(arch, head, expected):
    cfg = resolve_config(FAMILY, {"arch": arch, "head": head, "num_classes": 1000})
    with torch.device("meta"):
        model = build(cfg)
    assert count_params(model) == expected


def test_ssm_overhead_is_three_bn_and_four_fcs():
    """+SSM over the plain head: FCs 512/1024/1536/2048 -> 1000 replace one 2048 -> 1000, BN on 3."""
    heads = sum(b * 1000 + 1000 for b in (512, 1024, 1536, 2048)) + 2 * (512 + 1024 + 1536)
    assert 28_638_176 - 25_557_032 == heads - (2048 * 1000 + 1000)
    cfg = resolve_config(FAMILY, {"head": "ssm", "bn_relu": "all", "num_classes": 1000})
    with torch.device("meta"):
        assert count_params(build(cfg)) == 28_638_176 + 2 * 2048  # Algorithm 1: a 4th BN


def test_models_listing_of_the_imagenet_space():
    spec = load_spec(SEARCH_SPACES / "ssm_imagenet.yaml")
    listed = {(m["config"]["arch"], m["config"]["head"]): m["params"] for m in describe_models(spec)}
    assert {h: listed[("resnet50", h)] for h in ("plain", "ssm", "2fc", "3fc")} == {
        "plain": 25_557_032, "ssm": 28_638_176, "2fc": 27_606_032, "3fc": 29_655_032,
    }  # fmt: skip
    assert len(listed) == 20


# -- ensembles (Table 3) -------------------------------------------------------------------------


def test_ensemble_accuracy_on_hand_made_logits():
    y = torch.tensor([0, 1, 2, 0])
    a = torch.tensor([[3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 3.0, 2.0], [0.0, 2.0, 0.0]])  # right on 0 only
    b = torch.tensor([[0.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 1.0]])  # right on 1, 2
    acc = lambda z: float((z.argmax(1) == y).float().mean())  # noqa: E731
    assert (acc(a), acc(b)) == (0.25, 0.5)
    probs = ensemble_logits([a, b], "probs")
    assert torch.allclose(probs.exp().sum(1), torch.ones(4))  # log of a mean of distributions
    assert torch.allclose(probs.exp(), (a.softmax(1) + b.softmax(1)) / 2)
    assert acc(probs) == 0.75  # rows 0, 1, 2 right; row 3 wrong
    mean = ensemble_logits([a, b], "logits")
    assert torch.allclose(mean, (a + b) / 2)
    assert acc(mean) == 0.75
    # a case where the two rules disagree: a confident wrong member against two mild right ones
    z = [torch.tensor([[0.0, 10.0]]), torch.tensor([[4.0, 0.0]]), torch.tensor([[4.0, 0.0]])]
    assert int(ensemble_logits(z, "logits").argmax()) == 1 and int(ensemble_logits(z, "probs").argmax()) == 0


class _Fixed(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(x)]


def test_ensemble_metrics_from_evaluate():
    """Members and ensemble side by side, and the gain over the better member."""
    y = torch.tensor([0, 1, 2, 0])
    a = torch.tensor([[3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 3.0, 2.0], [0.0, 2.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 1.0]])
    x = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    data = TensorImages(x, y, x, y, 3, "mnist-5k")
    cfg = resolve_config(FAMILY, {"image_size": 8, "normalize": False, "num_classes": 3})
    trial = FAMILY.prepare(cfg, data)
    m = evaluate(Ensemble([_Fixed(a), _Fixed(b)]), trial, cfg, CPU)
    assert (m["test_acc_member1"], m["test_acc_member2"], m["test_acc"]) == (0.25, 0.5, 0.75)
    assert m["test_acc_ensemble_gain"] == pytest.approx(0.25)
    assert m["test_loss"] == pytest.approx(float(F.nll_loss(ensemble_logits([a, b]), y)))


def test_member_one_is_the_single_model_of_the_same_seed(mnist5k):
    """An ensemble's first member trains exactly as a single run with the trial's seed; the others differ."""

    def one_epoch(ensemble: int) -> nn.Module:
        cfg = config(head="ssm", ensemble=ensemble, n_train=48, batch_size=16, seed=3)
        torch.manual_seed(3)  # what run_trial does
        model, data = build(cfg), FAMILY.prepare(cfg, mnist5k)
        train_epoch(model.train(), make_optimizer(model, cfg), data, cfg, torch.Generator().manual_seed(3), CPU)
        return model

    single, pair = one_epoch(1), one_epoch(2)
    assert isinstance(pair, Ensemble) and int(pair.epochs_trained) == 1
    assert "epochs_trained" in pair.state_dict()  # checkpointed: a resumed trial keeps its member seeds
    s, m1, m2 = single.state_dict(), pair.members[0].state_dict(), pair.members[1].state_dict()
    assert all(torch.equal(s[k], m1[k]) for k in s)
    assert not torch.equal(m1["backbone.conv1.weight"], m2["backbone.conv1.weight"])


def test_member_seeds_are_distinct_and_stable():
    seeds = {member_seed(s, m, e) for s in range(3) for m in range(1, 4) for e in (None, 0, 1)}
    assert len(seeds) == 27
    assert member_seed(5, 1, 2) == member_seed(5, 1, 2) and 0 <= member_seed(5, 1, 2) < 2**63


# -- config checks and spaces --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"head": "4fc"}, "head"),
        ({"bn_relu": "first"}, "bn_relu"),
        ({"scheme": "both"}, "scheme"),
        ({"arch": "vgg16"}, "arch"),
        ({"arch": "resnext50_32x4d", "width": 8}, "width"),
        ({"heads": 0}, "heads"),
        ({"width": 4, "heads": 33}, "heads"),  # resnet18 at width 4: 32 channels
        ({"ensemble": 0}, "ensemble"),
        ({"image_size": 4}, "image_size"),
        ({"ensemble_combine": "vote"}, "ensemble_combine"),
    ],
)
def test_bad_configs_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=rf"^trainable ssm: {key}: "):
        check(config(**overrides))


def test_a_last_batch_of_one_image_is_refused(mnist5k):
    with pytest.raises(ConfigError, match=r"^trainable ssm: batch_size: 33 training images in batches of 16"):
        check(config(n_train=33, batch_size=16), mnist5k)
    check(config(n_train=34, batch_size=16), mnist5k)


@pytest.mark.parametrize("path", SSM_SPACES, ids=lambda p: p.name)
def test_spaces_validate_and_run_offline(path):
    spec = load_spec(path)
    assert spec.trainable == "ssm"
    offline = load_spec(path, ["data.source=mnist-5k"])
    assert offline.data.source == "mnist-5k"


def test_shipped_spaces():
    names = {p.name for p in SSM_SPACES}
    assert {"ssm_imagenet.yaml", "ssm_cifar.yaml", "ssm_cifar100.yaml", "ssm_imagenet_ensemble.yaml"} <= names
    imagenet = load_spec(SEARCH_SPACES / "ssm_imagenet.yaml")
    metrics = {r.metric for r in imagenet.paper.results}
    assert {"test_acc", "params", *(f"test_acc_head{k}" for k in range(1, 5))} <= metrics
    ens = load_spec(SEARCH_SPACES / "ssm_imagenet_ensemble.yaml")
    assert ens.base_config()["ensemble"] == 2
    assert {r.metric for r in ens.paper.results} >= {"test_acc", "test_acc_member1", "test_acc_member2"}


def test_an_ensemble_resumed_from_its_state_trains_on_exactly(mnist5k):
    """Two epochs in one go == one epoch, a checkpoint's state (as run_trial saves it), one more epoch:
    the members' per-epoch data seeds come from the saved ``epochs_trained``."""
    cfg = config(head="ssm", ensemble=2, n_train=32, batch_size=16, epochs=2, seed=1)
    data = FAMILY.prepare(cfg, mnist5k)

    def fresh():
        torch.manual_seed(1)
        model = build(cfg).train()
        return model, make_optimizer(model, cfg), torch.Generator().manual_seed(1)

    model, opt, gen = fresh()
    for _ in range(2):
        train_epoch(model, opt, data, cfg, gen, CPU)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt, gen = fresh()
    train_epoch(model, opt, data, cfg, gen, CPU)
    saved = {"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state()}
    torch.manual_seed(99)  # a new process: another global RNG state
    resumed, opt2, gen2 = fresh()
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["optimizer"])
    gen2.set_state(saved["generator"])
    train_epoch(resumed, opt2, data, cfg, gen2, CPU)
    after = resumed.state_dict()
    assert int(after["epochs_trained"]) == 2
    assert all(torch.equal(straight[k], after[k]) for k in straight)
