"""The contract of trainables/common.py, checked on every registered family and every one of its variants.

A new family is covered by registering it in `trainables.REGISTRY`: nothing to add here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from trainables import REGISTRY
from trainables.common import ConfigError, Family, make_optimizer, resolve_config

DATA_SOURCE = "mnist-5k"  # the bundled offline sample, passed to each family's load_data
CPU = torch.device("cpu")

CASES = [
    pytest.param(family, variant, id=f"{family.name}:{variant}")
    for family in REGISTRY.values()
    for variant in (family.variants or {"defaults": {}})
]


@pytest.fixture(scope="module")
def family_data() -> Callable[[Family], Any]:
    """Each family's raw data, loaded once per module."""
    cache: dict[str, Any] = {}

    def get(family: Family) -> Any:
        if family.name not in cache:
            cache[family.name] = family.load_data(DATA_SOURCE, None)
        return cache[family.name]

    return get


def variant_config(family: Family, variant: str, seed: int = 0) -> dict:
    """The smoke config (small data) with the variant applied, one epoch, on CPU."""
    overrides = dict(family.variants.get(variant, {}))
    return resolve_config(family, {**family.smoke, **overrides, "seed": seed, "epochs": 1, "device": "cpu"})


def fresh_epoch(family: Family, variant: str, data: Any, seed: int = 0) -> tuple[torch.nn.Module, dict, Any, dict]:
    """What `run_trial` does before its first epoch, then one `train_epoch`: (model, cfg, trial_data, metrics)."""
    cfg = variant_config(family, variant, seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    trial_data = family.prepare(cfg, data)
    model = family.build(cfg)
    optimizer = make_optimizer(model, cfg)
    model.train()
    metrics = family.train_epoch(model, optimizer, trial_data, cfg, generator, CPU)
    return model, cfg, trial_data, metrics


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a forward output (a tensor, or a dict/tuple/list of them)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in tensors_in(item)]
    return []


@pytest.mark.parametrize("family", REGISTRY.values(), ids=lambda f: f.name)
def test_family_configs_use_known_keys(family: Family) -> None:
    assert REGISTRY[family.name] is family
    resolve_config(family, dict(family.smoke))  # raises on an unknown key
    for overrides in family.variants.values():
        resolve_config(family, dict(overrides))


@pytest.mark.parametrize("family", REGISTRY.values(), ids=lambda f: f.name)
def test_config_values_are_type_checked(family: Family) -> None:
    with pytest.raises(ConfigError, match=r"^trainable \S+: lr: Input should be a valid number \(got 'fast'\)$"):
        resolve_config(family, {"lr": "fast"})
    for key, default in family.defaults.items():  # family keys: the type of their default
        if isinstance(default, bool):
            with pytest.raises(ConfigError, match=f": {key}: Input should be a valid boolean"):
                resolve_config(family, {key: "yes"})
        elif isinstance(default, int | float):
            with pytest.raises(ConfigError, match=f": {key}: Input should be a valid (integer|number)"):
                resolve_config(family, {key: "many"})
    cfg = resolve_config(family, {"epochs": np.int64(3), "lr": np.float32(0.5)})  # Tune samples numpy scalars
    assert type(cfg["epochs"]) is int and type(cfg["lr"]) is float


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_forward_output_is_finite(family: Family, variant: str, family_data) -> None:
    cfg = variant_config(family, variant)
    trial_data = family.prepare(cfg, family_data(family))
    model = family.build(cfg).eval()
    outputs: list[Any] = []
    model.register_forward_hook(lambda module, args, out: outputs.append((args, out)))
    family.evaluate(model, trial_data, cfg, CPU)  # forwards the family's own test batches
    assert outputs, "evaluate never called the model"
    for args, out in outputs:
        found = tensors_in(out)
        assert found, f"forward returned no tensor: {type(out)}"
        batch = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) else None
        for t in found:
            assert torch.isfinite(t).all()
            if batch is not None:
                assert t.shape[0] == batch


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_train_epoch_gives_every_parameter_a_gradient(family: Family, variant: str, family_data) -> None:
    model, _, _, metrics = fresh_epoch(family, variant, family_data(family))
    assert math.isfinite(float(metrics["train_loss"]))
    before_bn = _biases_before_batchnorm(model)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        if id(p) in before_bn:  # BatchNorm subtracts the batch mean: this bias's gradient is 0 up to rounding
            continue
        assert (p.grad != 0).any(), f"{name} has an all-zero gradient"


def _biases_before_batchnorm(model: torch.nn.Module) -> set[int]:
    """ids of the biases of convs/linears whose output goes straight into a BatchNorm (in a Sequential)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    out: set[int] = set()
    for seq in model.modules():
        if isinstance(seq, torch.nn.Sequential):
            layers = list(seq)
            for a, b in zip(layers, layers[1:]):
                if isinstance(a, torch.nn.Conv2d | torch.nn.Linear) and a.bias is not None and isinstance(b, _BatchNorm):
                    out.add(id(a.bias))
    return out


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_evaluate_reports_test_acc(family: Family, variant: str, family_data) -> None:
    model, cfg, trial_data, _ = fresh_epoch(family, variant, family_data(family))
    model.eval()
    with torch.no_grad():
        metrics = family.evaluate(model, trial_data, cfg, CPU)
    assert 0.0 <= float(metrics["test_acc"]) <= 1.0
    assert all(math.isfinite(float(v)) for v in metrics.values())


@pytest.mark.parametrize("family", REGISTRY.values(), ids=lambda f: f.name)
def test_declared_metrics_are_the_reported_ones(family: Family, family_data) -> None:
    """`Family.metrics` (what specs may name) is exactly what the variants report, all of them together."""
    reported: set[str] = set()
    for variant in family.variants or {"defaults": {}}:
        model, cfg, trial_data, metrics = fresh_epoch(family, variant, family_data(family))
        with torch.no_grad():
            metrics |= family.evaluate(model.eval(), trial_data, cfg, CPU)
        assert set(metrics) <= set(family.metrics), (variant, sorted(set(metrics) - set(family.metrics)))
        reported |= set(metrics)
    assert reported == set(family.metrics)


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_same_seed_gives_same_train_loss(family: Family, variant: str, family_data) -> None:
    data = family_data(family)
    first = fresh_epoch(family, variant, data, seed=7)[3]["train_loss"]
    second = fresh_epoch(family, variant, data, seed=7)[3]["train_loss"]
    assert first == second
