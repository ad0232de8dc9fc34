"""`study validate --models`: parameter and FLOP counts of every distinct model, without data or Ray."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from study.cli import main
from study.models import count_flops, describe_models
from study.spec import load_spec
from tests.conftest import REPO

SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_every_shipped_space_lists_its_models(path, capsys) -> None:
    models = describe_models(load_spec(path))
    assert models and all(isinstance(m["params"], int) and m["params"] > 0 for m in models)
    assert all(m["flops"] is None or m["flops"] > 0 for m in models)
    idents = [json.dumps(m["config"], sort_keys=True) for m in models]
    assert len(set(idents)) == len(idents)  # distinct models only
    assert main(["validate", str(path), "--models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["params"] for m in listed] == [m["params"] for m in models]
    assert all(isinstance(m["config"], dict) for m in listed)


def test_digit_pair_counts_match_the_paper(capsys) -> None:
    assert main(["validate", str(REPO / "search_spaces/digit_pairs_grid.yaml"), "--models"]) == 0
    out = capsys.readouterr().out
    for arch, n in (("FconnNet", "377,826"), ("ConvNet", "37,005"), ("parallelConv", "69,886"), ("Siamese", "34,964")):
        assert f"arch={arch}, weight_sharing=None: {n} parameters" in out
    assert "4 distinct model(s)" in out


def test_flops_are_torchs_count_of_a_forward() -> None:
    # Linear(10 -> 4) on one example: 10 x 4 multiply-adds = 80 FLOPs
    assert count_flops(nn.Linear(10, 4), torch.zeros(1, 10)) == 80
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # 8x8 output, 8 channels, 27 MACs each
    assert count_flops(conv, torch.zeros(1, 3, 8, 8)) == 2 * 8 * 8 * 8 * 27


def test_json_needs_models(capsys) -> None:
    assert main(["validate", str(SPACES[0]), "--json"]) == 2
    assert "--json: only with --models" in capsys.readouterr().err


def test_platform_cost_metrics_are_known_to_every_family() -> None:
    from trainables import REGISTRY

    for family in REGISTRY.values():
        assert family.knows_metric("step_time_s") and family.knows_metric("peak_mem_mb"), family.name
        assert not family.knows_metric("no_such_metric")


def test_searched_choices_of_shaping_keys_are_combined(tmp_path, capsys) -> None:
    """`--models` lists every model of the space: choices of two shaping keys combine (not one key
    at a time): 2 backbones x 2 stage counts are 4 models."""
    from tests.conftest import write_spec

    space = {"backbone": {"choice": ["cifar_resnet", "cifar_densenet_bc"]}, "stages": {"choice": [1, 2]},
             "lr": {"grid": [0.01, 0.1]}}  # fmt: skip
    spec = write_spec(tmp_path / "s.yaml", trainable="wsms", space=space, data={"source": "mnist-5k"},
                      fixed={"epochs": 1, "batch_size": 16, "width": 2})  # fmt: skip
    assert main(["validate", str(spec), "--models"]) == 0
    out = capsys.readouterr().out
    assert "4 distinct model(s)" in out, out
    assert "backbone=cifar_densenet_bc" in out and "stages=2" in out
    listed = [ln for ln in out.splitlines() if "cifar_densenet_bc" in ln and "stages=2" in ln]
    assert len(listed) == 1, out
