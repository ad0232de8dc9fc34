"""EncapNet (trainables/encapnet.py, trainables/optimal_transport.py): capConv shapes for every core
and skip, capFC, Sinkhorn against POT, the bias fix, the OT unit's gradients, the parameter counts
of the authors' layers (built on the meta device), the config rules and the three search spaces.

The generic contract over FAMILY.variants (all tiny) is in test_contract.py.
"""

from __future__ import annotations

from pathlib import Path

import ot
import pytest
import torch

from trainables.common import ConfigError, count_params, resolve_config
from trainables.encapnet import (
    FAMILY,
    AideCore,
    CapFC,
    CapModule,
    OTUnit,
    build,
    check,
    enable_train_only,
    ot_param_count,
    parse_units,
)
from trainables.optimal_transport import kl_loss, pairwise_cost, sinkhorn, sinkhorn_loss

SEARCH_SPACES = Path(__file__).resolve().parents[2] / "search_spaces"


def cfg_of(**overrides) -> dict:
    return resolve_config(FAMILY, {"num_classes": 10, **overrides})


def meta_counts(**overrides) -> tuple[int, int]:
    """(params as run_trial counts them, OT unit parameters), built on the meta device."""
    with torch.device("meta"):
        model = build(cfg_of(**overrides))
    return count_params(model), ot_param_count(model)


# -- capConv, capFC ---------------------------------------------------------------------------------


@pytest.mark.parametrize("core", ["master", "v1", "v2", "v3"])
@pytest.mark.parametrize("skip", ["none", "main", "sub", "both"])
def test_capconv_module_shapes(core: str, skip: str):
    types, dim_in, dim_out = 4, 2, 4
    module = CapModule(
        types * dim_in, types * dim_out, types, 2, core, 2, skip in ("main", "both"), skip in ("sub", "both")
    )
    x = torch.randn(3, types * dim_in, 8, 8)
    out, taps = module(x)
    assert out.shape == (3, types * dim_out, 4, 4)
    assert taps["input"] is x and taps["main"].shape == taps["sub1"].shape == out.shape
    lengths = out.view(3, types, dim_out, 4, 4).norm(dim=2)
    assert (lengths < 1).all()  # every capsule squashed
    assert (module.main.adjust is not None) == (skip in ("main", "both"))
    assert module.skip_sub == (skip in ("sub", "both"))


def test_sub_skip_adds_the_block_input_before_the_last_bn():
    torch.manual_seed(0)
    module = CapModule(8, 8, 4, 1, "master", 2, False, True).eval()
    x = torch.randn(2, 8, 4, 4)
    out, taps = module(x)
    last = module.subs[-1]
    expected = last.post(last.core(taps["sub1"]) + taps["main"])
    assert torch.allclose(out, expected, atol=1e-6)


def test_aide_cores_have_the_papers_kernels_and_coefficients():
    v3 = AideCore(8, 16, 4, 3, 2, 1, "v3")
    assert v3.aide[0].kernel_size == (7, 7) and v3.aide[0].groups == 1  # k + 4, dense
    assert v3.master[0].groups == 4
    assert v3.coeff.out_channels == v3.coeff_master.out_channels == 4  # one coefficient per capsule type
    v1, v2 = AideCore(8, 16, 4, 3, 2, 1, "v1"), AideCore(8, 16, 4, 3, 2, 1, "v2")
    assert v1.aide[0].kernel_size == (3, 3) and v1.coeff.in_channels == 16
    assert v2.coeff.in_channels == 8 and v2.coeff.stride == (2, 2)  # from the layer input
    x = torch.randn(2, 8, 8, 8)
    for core in (v1, v2, v3):
        assert core(x).shape == (2, 16, 4, 4)


def test_capfc_is_a_per_dimension_fully_connected_layer():
    torch.manual_seed(0)
    fc = CapFC(in_caps=2 * 4, classes=3, dim=5, types=2)
    x = torch.randn(2, 2 * 5, 2, 2)  # 2 types of dim 5 at 2x2 = 8 capsules
    out = fc(x)
    assert out.shape == (2, 3, 5)
    caps = x.view(2, 2, 5, 2, 2).permute(0, 1, 3, 4, 2).reshape(2, 8, 5)
    s = torch.stack(
        [torch.stack([(fc.weight[d, :, j] * caps[:, :, d]).sum(1) for d in range(5)], 1) for j in range(3)], 1
    )
    expected = (
        s * (s.norm(dim=-1, keepdim=True) ** 2 / (1 + s.norm(dim=-1, keepdim=True) ** 2)) / s.norm(dim=-1, keepdim=True)
    )
    assert torch.allclose(out, expected, atol=1e-5)


# -- Sinkhorn against POT ---------------------------------------------------------------------------


def _weights(n: int, uniform: bool, seed: int) -> torch.Tensor:
    if uniform:
        return torch.full((n,), 1 / n, dtype=torch.float64)
    w = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.2
    return w / w.sum()


@pytest.mark.parametrize("eps", [10.0, 1.0, 0.1, 0.01, 1e-3])
@pytest.mark.parametrize("iterations", [1, 5, 50])
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "weighted"])
def test_sinkhorn_matches_pot_values_and_gradients(eps: float, iterations: int, uniform: bool):
    """The same L iterations as POT on the same cost (no early stop), autodiff through the iterates
    in both; any marginals."""
    g = torch.Generator().manual_seed(int(eps * 1000) + iterations)
    cost = (torch.rand(7, 5, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    a, b = _weights(7, uniform, 1), _weights(5, uniform, 2)
    ours, plan = sinkhorn(cost, eps, iterations, log_a=a.log(), log_b=b.log())
    (grad,) = torch.autograd.grad(ours, cost)
    ref_cost = cost.detach().clone().requires_grad_(True)
    ref = ot.sinkhorn2(a, b, ref_cost, eps, method="sinkhorn_log", numItermax=iterations, stopThr=0.0)
    (ref_grad,) = torch.autograd.grad(ref, ref_cost)
    assert float(ours) == pytest.approx(float(ref), rel=1e-9, abs=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-7, atol=1e-10)
    if eps >= 0.1:  # the plain scaling algorithm agrees where its kernel does not underflow
        plain = ot.sinkhorn2(a, b, cost.detach(), eps, method="sinkhorn", numItermax=iterations, stopThr=0.0)
        assert float(ours) == pytest.approx(float(plain), rel=1e-9)
        assert torch.allclose(plan, ot.sinkhorn(a, b, cost.detach(), eps, numItermax=iterations, stopThr=0.0), atol=1e-12)
    # marginals: the last update (u, the rows) makes the rows exact
    assert torch.allclose(plan.sum(1), a, atol=1e-12)


def test_sinkhorn_on_a_batch_of_costs_is_each_problem_alone():
    g = torch.Generator().manual_seed(5)
    costs = torch.rand(3, 6, 4, generator=g, dtype=torch.float64)
    values, plans = sinkhorn(costs, 0.1, 20)
    assert values.shape == (3,) and plans.shape == (3, 6, 4)
    for i in range(3):
        v, p = sinkhorn(costs[i], 0.1, 20)
        assert torch.allclose(values[i], v, rtol=1e-12) and torch.allclose(plans[i], p, atol=1e-14)
        a, b = _weights(6, True, 0), _weights(4, True, 0)
        assert float(v) == pytest.approx(float(ot.sinkhorn2(a, b, costs[i], 0.1, method="sinkhorn_log",
                                                             numItermax=20, stopThr=0.0)), rel=1e-9)  # fmt: skip


def test_sinkhorn_refuses_unbalanced_weights_and_bad_shapes():
    cost = torch.rand(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="same total mass"):
        sinkhorn(cost, 1.0, 5, log_a=torch.full((3,), 0.5).log(), log_b=torch.full((4,), 0.25).log())
    with pytest.raises(ValueError, match="weights of sizes"):
        sinkhorn(cost, 1.0, 5, log_a=torch.full((4,), 0.25).log())
    with pytest.raises(ValueError, match=r"\(\.\.\., N, M\)"):
        sinkhorn(torch.rand(4), 1.0, 5)


@pytest.mark.parametrize("eps", [1.0, 0.05])
def test_sinkhorn_detached_plan_gives_the_envelope_gradient(eps: float):
    g = torch.Generator().manual_seed(3)
    cost = torch.rand(6, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    value, plan = sinkhorn(cost, eps, 200, grad_through_iterations=False)
    assert not plan.requires_grad  # the iterations ran without autograd
    (grad,) = torch.autograd.grad(value, cost)
    assert torch.equal(grad, plan)  # d<P, C>/dC with P fixed
    a = torch.full((6,), 1 / 6, dtype=torch.float64)
    pot_plan = ot.sinkhorn(a, a, cost.detach(), eps, method="sinkhorn_log", numItermax=200, stopThr=0.0)
    assert torch.allclose(plan, pot_plan, atol=1e-10)


def test_sinkhorn_small_eps_never_nan_where_the_kernel_underflows():
    g = torch.Generator().manual_seed(0)
    cost = (torch.rand(16, 16, generator=g) * 50).requires_grad_(True)  # float32, exp(-C / eps) = 0
    assert (torch.exp(-cost.detach() / 1e-4) == 0).float().mean() > 0.99
    for eps in (1e-6, 1e-4, 1e-2):
        for grad_through in (True, False):
            value, plan = sinkhorn(cost, eps, 30, grad_through_iterations=grad_through)
            (grad,) = torch.autograd.grad(value, cost)
            assert torch.isfinite(value) and torch.isfinite(plan).all() and torch.isfinite(grad).all()
            assert float(plan.sum()) == pytest.approx(1.0, rel=1e-4)
    # where POT's plain (scaling) Sinkhorn fails on this cost, ours equals POT's log-domain one
    a = torch.full((16,), 1 / 16, dtype=torch.float64)
    c64 = cost.detach().double()
    with pytest.warns(UserWarning):  # POT: "numerical errors" (its kernel underflows)
        ot.sinkhorn2(a, a, c64, 0.01, method="sinkhorn", numItermax=50, stopThr=0.0)
    ref = ot.sinkhorn2(a, a, c64, 0.01, method="sinkhorn_log", numItermax=50, stopThr=0.0)
    assert float(sinkhorn(cost.detach(), 0.01, 50)[0]) == pytest.approx(float(ref), rel=1e-5)


def test_sinkhorn_rejects_a_bad_eps():
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(torch.rand(3, 3), 0.0, 10)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn(torch.rand(3, 3), 1.0, 0)


@pytest.mark.parametrize("cost", ["l2", "cosine"])
def test_bias_fix_divergence_of_a_distribution_with_itself_is_zero(cost: str):
    x = torch.randn(8, 5)
    fixed = sinkhorn_loss(x, x.clone(), eps=0.5, iterations=20, cost=cost, bias_fix=True)
    assert abs(float(fixed)) < 1e-6
    raw = sinkhorn_loss(x, x.clone(), eps=0.5, iterations=20, cost=cost, bias_fix=False)
    assert float(raw) > 1e-3  # entropic OT of a measure with itself is not 0: the bias the fix removes
    assert float(sinkhorn_loss(x, x + 3, eps=0.5, iterations=20, cost=cost)) >= 0 or cost == "cosine"


def test_pairwise_costs():
    x, y = torch.tensor([[0.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 1.0]])
    assert pairwise_cost(x, y, "l2").flatten().tolist() == pytest.approx([1.0, (9 + 9) ** 0.5], abs=1e-5)
    assert pairwise_cost(x[1:], y, "cosine").item() == pytest.approx(1 - 4 / 5)
    x = torch.randn(4, 3, requires_grad=True)
    pairwise_cost(x, x, "l2").sum().backward()  # zero distances on the diagonal: finite gradient
    assert torch.isfinite(x.grad).all()


def test_kl_loss_is_zero_for_equal_features_and_positive_otherwise():
    x = torch.randn(4, 6)
    assert float(kl_loss(x, x.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_loss(x, torch.randn(4, 6))) > 0


# -- OT unit --------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["ot", "kl"])
@pytest.mark.parametrize("grad", [True, False])
def test_ot_unit_gradient_reaches_generator_and_critic(loss: str, grad: bool):
    torch.manual_seed(0)
    unit = OTUnit(c_z=16, c_y=8, stride=2, groups=4, critic=True)
    z, y = torch.randn(6, 16, 4, 4), torch.randn(6, 8, 8, 8)
    opts = {"loss": loss, "eps": 0.1, "iters": 10, "cost": "cosine", "bias_fix": True, "grad": grad}
    unit(z, y, opts).backward()
    for part in (unit.generator, unit.critic):
        weights = [m.weight for m in part.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        assert weights and all(w.grad is not None and (w.grad != 0).any() for w in weights)
    assert unit.generator[0].groups == 4 and unit.generator[0].stride == (2, 2)


def test_ot_units_are_train_time_only():
    cfg = cfg_of(width=4, reg="ot", ot_units="two")
    model = build(cfg)
    plain = build(cfg_of(width=4))
    assert count_params(model) == count_params(plain)  # params: the inference net only
    assert ot_param_count(model) > 0
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert isinstance(model(x), torch.Tensor)  # inference never runs the units
    model.train()
    enable_train_only(model)
    out = model(x)
    assert set(out) == {"logits", "reg"} and out["reg"].ndim == 0
    out["reg"].backward()
    assert all(p.grad is not None for p in model.reg.parameters())
    assert count_params(model) == count_params(plain) + ot_param_count(model)


def test_ot_unit_presets_and_lists():
    assert parse_units("two") == [(3, "same"), (4, "half")]
    assert parse_units("one") == [(4, "half")]
    assert len(parse_units("each2")) == 8
    assert parse_units("m1_same, m2_half") == [(1, "same"), (2, "half")]
    with pytest.raises(ValueError, match="m5_half"):
        parse_units("m5_half")


# -- parameter counts (CIFAR-10, the authors' layers) ---------------------------------------------


def test_parameter_counts_of_the_authors_layers():
    assert meta_counts(core="master", skip="both") == (1_729_920, 0)
    assert meta_counts(core="v3", skip="both")[0] == 27_734_848
    assert meta_counts(core="v3", skip="both", aide_modules=[3, 4])[0] == 26_195_456
    assert meta_counts(core="master", reg="ot", ot_units="two", generator="vanilla") == (1_729_920, 2_067_462)
    assert meta_counts(core="master", reg="ot", ot_units="two", generator="capsule")[1] == 353_286
    assert meta_counts(arch="encapnet6_master")[0] == 1_689_856
    assert meta_counts(arch="encapnet6_aide")[0] == 8_124_224
    assert meta_counts(arch="resnet18")[0] == 11_173_962  # torchvision's ResNet-18, CIFAR stem
    with torch.device("meta"):  # model_part: ot counts the units alone (study validate --models)
        units = build(cfg_of(reg="ot", ot_units="two", generator="vanilla", model_part="ot"))
    assert count_params(units) == 2_067_462


def test_models_listing_shows_the_counts():
    from study.models import model_size
    from study.spec import load_spec

    spec = load_spec(SEARCH_SPACES / "encapnet_capconv.yaml")
    base = spec.base_config()
    assert model_size("encapnet", cfg_of(**{**base, "core": "master", "skip": "both"}))[0] == 1_729_920
    assert model_size("encapnet", cfg_of(**{**base, "core": "v3", "skip": "both"}))[0] == 27_734_848
    ot_spec = load_spec(SEARCH_SPACES / "encapnet_ot.yaml", ["fixed.model_part=ot"])
    ot_cfg = cfg_of(**{**ot_spec.base_config(), "arch": "encapnet", "reg": "ot_vanilla_generator"})
    assert model_size("encapnet", ot_cfg)[0] == 2_067_462


# -- config rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"arch": "capnet"}, "arch"),
        ({"core": "v4"}, "core"),
        ({"skip": "all"}, "skip"),
        ({"reg": "ot", "arch": "cnn6"}, "reg"),
        ({"ot_units": "m9_same"}, "ot_units"),
        ({"sinkhorn_eps": 0.0}, "sinkhorn_eps"),
        ({"sinkhorn_iters": 0}, "sinkhorn_iters"),
        ({"aide_modules": [1, 5]}, "aide_modules"),
        ({"cost": "l1"}, "cost"),
    ],
)
def test_check_names_the_key(overrides: dict, key: str):
    with pytest.raises(ConfigError) as e:
        check(cfg_of(**overrides))
    assert e.value.key == key


def test_model_part_ot_is_for_listing_only():
    from trainables.images import load_images

    cfg = cfg_of(model_part="ot", reg="ot")
    check(cfg)  # study validate --models: fine
    with pytest.raises(ConfigError, match="model_part"):
        check(cfg, load_images("mnist-5k"))


# -- search spaces --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["encapnet_capconv", "encapnet_ot", "encapnet_table1"])
def test_spaces_load_offline_and_paper_rows_hit_grid_points(name: str):
    from study.spec import example_configs, load_spec

    spec = load_spec(SEARCH_SPACES / f"{name}.yaml", ["data.source=mnist-5k"])
    assert spec.trainable == "encapnet" and spec.paper.results
    configs = [{**spec.base_config(), **c} for c in example_configs(spec, limit=10_000)]
    for row in spec.paper.results:
        assert any(all(c.get(k) == v for k, v in row.where.items()) for c in configs), row.label
        if row.metric == "test_acc":
            assert 0.5 < row.value < 1 and "error" in row.label  # 1 - the paper's error %


@pytest.mark.parametrize(("n_train", "batch_size", "ok"), [(33, 16, False), (34, 16, True), (40, 1, False)])
def test_a_training_batch_of_one_image_is_refused(n_train: int, batch_size: int, ok: bool):
    """Every net here (the OT critic too) has BatchNorm: a batch of one would crash mid-trial."""
    data = FAMILY.load_data("mnist-5k", None)
    c = cfg_of(n_train=n_train, batch_size=batch_size, reg="ot")
    if ok:
        check(c, data)
        return
    with pytest.raises(ConfigError, match=r"^trainable encapnet: batch_size: ") as e:
        check(c, data)
    assert "\n" not in str(e.value)
