"""Digit-pair comparison (trainables/digit_pairs.py): pairs, the four nets, the two switches, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.errors import UserError
from trainables import digit_pairs as dp
from trainables.common import Diverged, check_finite, count_params, make_optimizer, resolve_config
from trainables.data import ImageSet, load_mnist

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mnist5k() -> ImageSet:
    return load_mnist("mnist-5k")


def config(**overrides) -> dict:
    return resolve_config(dp.FAMILY, {**dp.FAMILY.smoke, "device": "cpu", **overrides})


def first_batch(pairs: dp.Pairs, n: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return pairs.input[:n], pairs.target[:n], pairs.classes[:n]


# --- parameter counts -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(dp.PAPER_PARAMS))
def test_param_count_matches_paper(arch: str) -> None:
    assert count_params(dp.build(config(arch=arch))) == dp.PAPER_PARAMS[arch]


def test_branch_and_head_counts() -> None:
    assert count_params(dp.DigitBranch()) == 34_922
    assert count_params(dp.TwoBranchNet(shared=True).head) == 42


# --- pairs ----------------------------------------------------------------------------------


def test_pairs_follow_the_course_helper(mnist5k: ImageSet) -> None:
    pairs = dp.generate_pairs(mnist5k.train_x, mnist5k.train_y, 300, torch.Generator().manual_seed(0))
    assert pairs.input.shape == (300, 2, 14, 14) and pairs.input.dtype == torch.float32
    assert pairs.target.dtype == torch.int64 and pairs.classes.shape == (300, 2)
    assert torch.equal(pairs.classes, mnist5k.train_y[pairs.indices])
    assert torch.equal(pairs.target, (pairs.classes[:, 0] <= pairs.classes[:, 1]).long())
    for k in (0, 1):  # channel k is the k-th image of the pair, avg-pooled, pixels still 0-255
        pooled = F.avg_pool2d(mnist5k.train_x[pairs.indices[:, k]].unsqueeze(1).float(), kernel_size=2)
        assert torch.equal(pairs.input[:, k], pooled[:, 0])


def test_pairs_are_disjoint_within_each_split(mnist5k: ImageSet) -> None:
    data = dp.prepare(config(n_train=1000, n_test=1000), mnist5k)
    for pairs, split_size in ((data.train, len(mnist5k.train_y)), (data.test, len(mnist5k.test_y))):
        flat = pairs.indices.flatten()
        assert flat.unique().numel() == 2000
        assert 0 <= int(flat.min()) and int(flat.max()) < split_size


def test_pairs_are_determined_by_the_seed(mnist5k: ImageSet) -> None:
    a, b = dp.prepare(config(seed=3), mnist5k), dp.prepare(config(seed=3), mnist5k)
    c = dp.prepare(config(seed=4), mnist5k)
    for split in ("train", "test"):
        assert torch.equal(getattr(a, split).indices, getattr(b, split).indices)
        assert torch.equal(getattr(a, split).input, getattr(b, split).input)
        assert not torch.equal(getattr(a, split).indices, getattr(c, split).indices)


def test_target_rate_is_about_055(mnist5k: ImageSet) -> None:
    data = dp.prepare(config(n_train=1000, n_test=1000), mnist5k)
    for pairs in (data.train, data.test):
        assert 0.48 < pairs.target.float().mean().item() < 0.62  # P(c0 <= c1) = 0.55 for uniform classes


def test_inputs_standardised_with_training_statistics(mnist5k: ImageSet) -> None:
    data = dp.prepare(config(n_train=1000, n_test=1000), mnist5k)
    assert abs(data.train.input.mean().item()) < 1e-4
    assert abs(data.train.input.std().item() - 1) < 1e-4
    assert abs(data.test.input.mean().item()) < 0.1  # same statistics applied, not the test set's own


@pytest.mark.parametrize(("key", "n"), [("n_train", 1251), ("n_test", 5000), ("n_train", 0)])
def test_too_many_pairs_is_a_user_error(mnist5k: ImageSet, key: str, n: int) -> None:
    with pytest.raises(UserError, match=rf"^{key}: .*{key} <= 1250 must hold, got {key}={n}$") as e:
        dp.prepare(config(**{key: n}), mnist5k)
    assert "\n" not in str(e.value)


# --- switches -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "sharing", "shared", "params"),
    [
        ("Siamese", None, True, 34_964),
        ("Siamese", False, False, 69_886),
        ("parallelConv", None, False, 69_886),
        ("parallelConv", True, True, 34_964),
    ],
)
def test_weight_sharing_switch(arch: str, sharing: bool | None, shared: bool, params: int) -> None:
    model = dp.build(config(arch=arch, weight_sharing=sharing))
    assert isinstance(model, dp.TwoBranchNet) and count_params(model) == params
    pairs = zip(model.branch0.parameters(), model.branch1.parameters())
    assert all((p0 is p1) == shared for p0, p1 in pairs)


def test_aux_loss_switch_changes_the_loss(mnist5k: ImageSet) -> None:
    data = dp.prepare(config(), mnist5k)
    x, target, classes = first_batch(data.train)
    torch.manual_seed(0)
    out = dp.build(config(arch="Siamese"))(x)
    main = dp.pair_loss(out, target, classes, config(aux_loss=False))
    with_aux = dp.pair_loss(out, target, classes, config(aux_loss=True))
    half = dp.pair_loss(out, target, classes, config(aux_loss=True, aux_weight=0.5))
    digits = F.cross_entropy(out["digits"][:, 0], classes[:, 0]) + F.cross_entropy(out["digits"][:, 1], classes[:, 1])
    assert torch.allclose(main, F.cross_entropy(out["logits"], target))
    assert torch.allclose(with_aux, main + digits)
    assert torch.allclose(half, main + 0.5 * digits)


@pytest.mark.parametrize("arch", dp.SINGLE_BRANCH)
def test_aux_loss_is_ignored_by_single_branch_nets(mnist5k: ImageSet, arch: str) -> None:
    data = dp.prepare(config(), mnist5k)
    x, target, classes = first_batch(data.train)
    out = dp.build(config(arch=arch)).eval()(x)
    on, off = (dp.pair_loss(out, target, classes, config(arch=arch, aux_loss=a)) for a in (True, False))
    assert torch.equal(on, off)


@pytest.mark.parametrize("arch", dp.SINGLE_BRANCH)
def test_weight_sharing_on_single_branch_net_is_a_user_error(arch: str) -> None:
    with pytest.raises(UserError, match=f"weight_sharing=true needs a two-branch net .*got arch={arch}") as e:
        dp.build(config(arch=arch, weight_sharing=True))
    assert "\n" not in str(e.value)
    dp.build(config(arch=arch, weight_sharing=False))  # False is what they are anyway


def test_unknown_arch_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match="arch: unknown net 'LeNet'; known: FconnNet, ConvNet, parallelConv, Siamese"):
        dp.build(config(arch="LeNet"))


# --- training and evaluation ----------------------------------------------------------------


@pytest.mark.parametrize(("arch", "digit_acc"), [("Siamese", True), ("ConvNet", False)])
def test_evaluate_reports_digit_accuracy_for_two_branch_nets(mnist5k: ImageSet, arch: str, digit_acc: bool) -> None:
    cfg = config(arch=arch)
    model = dp.build(cfg).eval()
    metrics = dp.evaluate(model, dp.prepare(cfg, mnist5k), cfg, CPU)
    assert ("test_digit_acc" in metrics) == digit_acc
    assert all(0 <= metrics[k] <= 1 for k in ("test_acc", "test_digit_acc") if k in metrics)


def test_single_example_last_batch_is_merged(mnist5k: ImageSet) -> None:
    cfg = config(arch="FconnNet", n_train=201, batch_size=100)  # batches 100, 100, 1: BatchNorm needs >= 2
    model = dp.build(cfg).train()
    metrics = dp.train_epoch(model, make_optimizer(model, cfg), dp.prepare(cfg, mnist5k), cfg, torch.Generator(), CPU)
    assert 0 <= metrics["train_acc"] <= 1


def test_huge_learning_rate_raises_diverged(mnist5k: ImageSet) -> None:
    cfg = config(arch="Siamese", lr=1e6)
    torch.manual_seed(0)
    data, model = dp.prepare(cfg, mnist5k), dp.build(cfg).train()
    optimizer, generator = make_optimizer(model, cfg), torch.Generator().manual_seed(0)
    with pytest.raises(Diverged):
        for _ in range(20):
            dp.train_epoch(model, optimizer, data, cfg, generator, CPU)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_check_finite_rejects_non_finite_losses(value: float) -> None:
    with pytest.raises(Diverged):
        check_finite(torch.tensor(value, requires_grad=True) * 1)
    check_finite(torch.tensor(1.5))


# --- initialisation (Table 2 choice) ----------------------------------------------------------


@pytest.mark.parametrize("arch", list(dp.PAPER_PARAMS))
def test_he_init_covers_hidden_layers_only(arch: str) -> None:
    torch.manual_seed(0)
    model = dp.build(config(arch=arch, init="he"))
    hidden = dp.hidden_layers(model)
    outputs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m not in hidden]
    assert len(hidden) == {"FconnNet": 5, "ConvNet": 5, "parallelConv": 10, "Siamese": 5}[arch]
    assert all(isinstance(m, torch.nn.Linear) and m.out_features in (2, 10) for m in outputs)  # logits only
    for m in hidden:  # He normal: std sqrt(2 / fan_in), zero biases
        fan_in = m.weight[0].numel()
        assert torch.count_nonzero(m.bias) == 0
        assert m.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.25)
    torch.manual_seed(0)
    default = dp.build(config(arch=arch, init="torch"))  # PyTorch's default: uniform, std sqrt(1 / (3 fan_in))
    first = dp.hidden_layers(default)[0]
    assert first.weight.std().item() == pytest.approx((1 / (3 * first.weight[0].numel())) ** 0.5, rel=0.25)
    assert count_params(model) == count_params(default) == dp.PAPER_PARAMS[arch]


def test_unknown_init_is_a_config_error() -> None:
    with pytest.raises(UserError, match=r"init: must be one of he, torch \(got 'xavier'\)"):
        dp.check(config(init="xavier"))


def test_he_init_keeps_the_signal_that_torch_init_loses(mnist5k: ImageSet) -> None:
    """The cause of the low no-aux arms (Table 2): with PyTorch's default init a branch's last hidden
    features start ~30x smaller than its input, so the digit logits (and their gradients through the
    ReLU and the head) start near zero; He init keeps their scale."""
    data = dp.prepare(config(n_train=300, n_test=10), mnist5k)
    x = data.train.input[:, 0:1]  # first digits, standardised: std 1
    for init, lo, hi in (("torch", 0.0, 0.1), ("he", 0.5, 5.0)):
        for seed in range(3):
            torch.manual_seed(seed)
            branch = dp.build(config(arch="Siamese", init=init)).branch0.eval()
            with torch.no_grad():
                hidden = branch.classifier[:-1](branch.features(x))  # (300, 64), after the last ReLU
            assert lo < hidden.std().item() < hi, (init, seed)
