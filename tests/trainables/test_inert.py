"""`Family.inert_keys`: configurations that differ only in keys without effect are the same
experiment (bit-identical metrics for one seed); a key with an effect changes them."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trainables import REGISTRY
from trainables.common import make_optimizer, resolve_config

CPU = torch.device("cpu")


def one_epoch(family_name: str, data: Any, config: dict) -> dict:
    """One epoch's train and test metrics for `config` (seed 0, CPU), as run_trial computes them."""
    family = REGISTRY[family_name]
    cfg = resolve_config(family, {**family.smoke, **config, "seed": 0, "epochs": 1, "device": "cpu"})
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    trial_data = family.prepare(cfg, data)
    model = family.build(cfg)
    metrics = family.train_epoch(model.train(), make_optimizer(model, cfg), trial_data, cfg, generator, CPU)
    with torch.no_grad():
        metrics |= family.evaluate(model.eval(), trial_data, cfg, CPU)
    return {k: float(v) for k, v in metrics.items()}


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    return {name: REGISTRY[name].load_data("mnist-5k", None) for name in ("wsms", "digit_pairs")}


WSMS_PLAIN = {"backbone": "cifar_resnet", "depth": 8, "width": 4, "stages": 1, "batch_size": 16, "n_train": 32, "n_test": 32}
DIGITS_NOAUX = {"arch": "Siamese", "aux_loss": False, "n_train": 100, "n_test": 100, "batch_size": 25}

CASES = [
    # family, base config, changes of inert keys only, a change of a key with an effect
    ("wsms", WSMS_PLAIN,
     {"ms": True, "per_stage_bn": True, "integration": "none", "integration_width": 8, "downscale": "nearest"},
     {"stages": 2}),
    ("digit_pairs", DIGITS_NOAUX, {"aux_weight": 3.0}, {"aux_loss": True, "aux_weight": 3.0}),
]  # fmt: skip


@pytest.mark.parametrize(("family", "base", "inert", "active"), CASES, ids=[c[0] for c in CASES])
def test_inert_keys_change_nothing_and_active_keys_do(family: str, base: dict, inert: dict, active: dict, data) -> None:
    f = REGISTRY[family]
    cfg = resolve_config(f, {**f.smoke, **base})
    assert set(inert) <= f.inert_keys(cfg), sorted(set(inert) - f.inert_keys(cfg))
    assert not set(active) <= f.inert_keys(cfg)
    reference = one_epoch(family, data[family], base)
    assert one_epoch(family, data[family], {**base, **inert}) == reference  # bit-identical
    assert one_epoch(family, data[family], {**base, **active}) != reference


def test_inert_keys_follow_the_config() -> None:
    wsms, ssm, enc, share = (REGISTRY[n] for n in ("wsms", "ssm", "encapnet", "share_split"))
    assert "ms" in wsms.inert_keys({"stages": 1}) and "ms" not in wsms.inert_keys({"stages": 3})
    assert "integration_width" in wsms.inert_keys({"stages": 2, "integration": "none"})
    assert {"heads", "bn_relu", "scheme"} <= ssm.inert_keys({"head": "plain"})
    assert "heads" not in ssm.inert_keys({"head": "ssm"}) and "individual_reduce" in ssm.inert_keys({"head": "ssm"})
    assert "ensemble_combine" not in ssm.inert_keys({"ensemble": 2})
    assert {"ot_lambda", "sinkhorn_eps", "ot_units"} <= enc.inert_keys({"reg": "none"})
    assert "sinkhorn_eps" in enc.inert_keys({"reg": "kl"}) and "ot_lambda" not in enc.inert_keys({"reg": "kl"})
    assert "critic" in enc.inert_keys({"reg": "ot_no_extractor"}) and "critic" not in enc.inert_keys({"reg": "ot"})
    assert "box_weight" in share.inert_keys({"task": "cls"}) and "box_weight" not in share.inert_keys({"task": "cls_box"})
    # the common keys: momentum without SGD, the schedule when no milestone falls before the last epoch
    assert "momentum" in share.inert_keys({}) and "momentum" not in wsms.inert_keys({"optimizer": "sgd"})
    assert {"lr_gamma", "lr_milestones"} <= wsms.inert_keys({"epochs": 10, "lr_milestones": [10]})
    assert "lr_gamma" not in wsms.inert_keys({"epochs": 10, "lr_milestones": [5]})
