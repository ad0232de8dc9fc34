"""The contract of trainables/common.py, checked on every registered family and every one of its variants.

A new family is covered by registering it in `trainables.REGISTRY`: nothing to add here.

Each variant trains once (one epoch of its smoke config on CPU, cached for the module) and every
check reads that run: the forwards of its evaluation are finite with the batch's size, every
parameter got a gradient, the metrics are finite, declared and within their units' bounds, the
state survives a checkpoint round trip (a fresh model loaded from it evaluates identically), and
the same seed gives the same first steps (a second, two-step run, compared gradient by gradient).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from core.metrics import UNIT_BOUNDS, Metric
from trainables import REGISTRY
from trainables.common import RUN_METRICS, ConfigError, Family, make_optimizer, resolve_config, run_trial

DATA_SOURCE = "mnist-5k"  # the bundled offline sample, passed to each family's load_data
CPU = torch.device("cpu")
SEED = 7
DETERMINISM_STEPS = 2  # optimiser steps the second run repeats

CASES = [
    pytest.param(family, variant, id=f"{family.name}:{variant}")
    for family in REGISTRY.values()
    for variant in (family.variants or {"defaults": {}})
]


def variant_config(family: Family, variant: str, seed: int = SEED) -> dict:
    """The smoke config (small data) with the variant applied, one epoch, on CPU."""
    overrides = dict(family.variants.get(variant, {}))
    return resolve_config(family, {**family.smoke, **overrides, "seed": seed, "epochs": 1, "device": "cpu"})


class _Stop(Exception):
    """Ends a training epoch after the steps a test needs."""


class RecordingOptimizer:
    """The optimizer handed to ``train_epoch``: records each step's gradients (a per-parameter sum
    in float64, for the first `keep` steps) and raises `_Stop` after `stop_after` steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, keep: int, stop_after: int | None = None) -> None:
        self._opt, self.keep, self.stop_after = optimizer, keep, stop_after
        self.steps: list[list[float]] = []
        self.count = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._opt, name)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> Any:
        if self.count < self.keep:
            params = [p for g in self._opt.param_groups for p in g["params"]]
            self.steps.append([float(p.grad.double().sum()) if p.grad is not None else math.nan for p in params])
        out = self._opt.step(closure) if closure is not None else self._opt.step()
        self.count += 1
        if self.stop_after is not None and self.count >= self.stop_after:
            raise _Stop
        return out


@dataclass
class Run:
    """One variant's epoch and everything the checks read from it."""

    cfg: dict
    model: torch.nn.Module
    optimizer: RecordingOptimizer
    trial_data: Any
    train_metrics: dict
    eval_metrics: dict
    forwards: list[tuple[Any, Any]] = field(default_factory=list)  # (args, output) of each evaluate forward

    @property
    def metrics(self) -> dict:
        return {**self.train_metrics, **self.eval_metrics}


def start(family: Family, variant: str, data: Any, keep: int, stop_after: int | None = None):
    """What `run_trial` does before its first epoch: (cfg, model, optimizer, trial_data, generator)."""
    cfg = variant_config(family, variant)
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    trial_data = family.prepare(cfg, data)
    model = family.build(cfg)
    optimizer = RecordingOptimizer(make_optimizer(model, cfg), keep=keep, stop_after=stop_after)
    return cfg, model, optimizer, trial_data, generator


def train_and_evaluate(family: Family, variant: str, data: Any) -> Run:
    cfg, model, optimizer, trial_data, generator = start(family, variant, data, keep=DETERMINISM_STEPS)
    model.train()
    train_metrics = family.train_epoch(model, optimizer, trial_data, cfg, generator, CPU)
    forwards: list[tuple[Any, Any]] = []
    handle = model.register_forward_hook(lambda module, args, out: forwards.append((args, out)))
    model.eval()
    with torch.no_grad():
        eval_metrics = family.evaluate(model, trial_data, cfg, CPU)
    handle.remove()
    return Run(cfg, model, optimizer, trial_data, dict(train_metrics), dict(eval_metrics), forwards)


@pytest.fixture(scope="module")
def family_data() -> Callable[[Family], Any]:
    """Each family's raw data, loaded once per module."""
    cache: dict[str, Any] = {}

    def get(family: Family) -> Any:
        if family.name not in cache:
            cache[family.name] = family.load_data(DATA_SOURCE, None)
        return cache[family.name]

    return get


@pytest.fixture(scope="module")
def trained(family_data) -> Callable[[Family, str], Run]:
    """Each variant's run, trained once per module."""
    cache: dict[tuple[str, str], Run] = {}

    def get(family: Family, variant: str) -> Run:
        key = (family.name, variant)
        if key not in cache:
            cache[key] = train_and_evaluate(family, variant, family_data(family))
        return cache[key]

    return get


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a forward output (a tensor, or a dict/tuple/list of them)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in tensors_in(item)]
    return []


# ----------------------------------------------------------------------------- config


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


@pytest.mark.parametrize("family", REGISTRY.values(), ids=lambda f: f.name)
def test_inert_keys_are_config_keys(family: Family) -> None:
    known = set(family.all_defaults)
    for variant in family.variants or {"defaults": {}}:
        inert = family.inert_keys(variant_config(family, variant))
        assert isinstance(inert, frozenset) and inert <= known, sorted(inert - known)


# ----------------------------------------------------------------------------- one run per variant


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_forward_output_is_finite(family: Family, variant: str, trained) -> None:
    run = trained(family, variant)
    assert run.forwards, "evaluate never called the model"
    for args, out in run.forwards:
        found = tensors_in(out)
        assert found, f"forward returned no tensor: {type(out)}"
        batch = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) else None
        for t in found:
            assert torch.isfinite(t).all()
            if batch is not None:
                assert t.shape[0] == batch


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_train_epoch_gives_every_parameter_a_gradient(family: Family, variant: str, trained) -> None:
    run = trained(family, variant)
    assert math.isfinite(float(run.train_metrics["train_loss"]))
    assert run.optimizer.count >= 1, "train_epoch took no optimiser step"
    before_bn = _biases_before_batchnorm(run.model)
    for name, p in run.model.named_parameters():
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
def test_evaluate_reports_test_acc(family: Family, variant: str, trained) -> None:
    metrics = trained(family, variant).eval_metrics
    assert 0.0 <= float(metrics["test_acc"]) <= 1.0
    assert all(math.isfinite(float(v)) for v in metrics.values())


def _within_unit(m: Metric, value: float) -> bool:
    lo, hi = UNIT_BOUNDS[m.unit]
    return (lo is None or value >= lo - 1e-9) and (hi is None or value <= hi + 1e-9)


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_reported_metrics_are_declared_with_plausible_units(family: Family, variant: str, trained) -> None:
    for name, value in trained(family, variant).metrics.items():
        m = family.metric(name)
        assert m is not None, f"{name} is reported but not declared in {family.name}.metrics / metric_patterns"
        assert _within_unit(m, float(value)), f"{name} = {value} is outside the bounds of its unit {m.unit}"


@pytest.mark.parametrize("family", REGISTRY.values(), ids=lambda f: f.name)
def test_declared_metrics_are_the_reported_ones(family: Family, trained) -> None:
    """`Family.metrics` (what specs may name) is exactly what the variants report, all of them
    together, and what `run_trial` adds (`RUN_METRICS`)."""
    reported: set[str] = set()
    for variant in family.variants or {"defaults": {}}:
        reported |= set(trained(family, variant).metrics)
    assert reported | set(RUN_METRICS) == set(family.metrics), sorted(set(family.metrics) ^ (reported | set(RUN_METRICS)))
    assert all(isinstance(m, Metric) for m in (*family.metrics.values(), *family.metric_patterns.values()))


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_checkpoint_round_trip_restores_the_trained_state(family: Family, variant: str, trained) -> None:
    """Model and optimizer state through torch.save / torch.load(weights_only=True): a fresh model
    (another init) loaded from it evaluates exactly as the trained one."""
    run = trained(family, variant)
    buf = io.BytesIO()
    torch.save({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    torch.manual_seed(SEED + 1)
    fresh = family.build(run.cfg)
    fresh.load_state_dict(state["model"])
    make_optimizer(fresh, run.cfg).load_state_dict(state["optimizer"])
    with torch.no_grad():
        again = family.evaluate(fresh.eval(), run.trial_data, run.cfg, CPU)
    assert again == run.eval_metrics


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_same_seed_gives_the_same_steps(family: Family, variant: str, trained, family_data) -> None:
    """A second run with the same seed takes the first steps with the same gradients, bit for bit
    (same init, data order, augmentation and loss)."""
    run = trained(family, variant)
    steps = min(DETERMINISM_STEPS, run.optimizer.count)
    cfg, model, optimizer, trial_data, generator = start(family, variant, family_data(family), keep=steps, stop_after=steps)
    model.train()
    with pytest.raises(_Stop):
        family.train_epoch(model, optimizer, trial_data, cfg, generator, CPU)
    assert optimizer.steps == run.optimizer.steps[:steps]


# ----------------------------------------------------------------------------- run_trial


class FakeReports:
    """ray.tune.report / get_checkpoint without Ray: every report kept, checkpoints as state dicts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, resume_from: dict | None = None) -> None:
        from ray import tune

        self.reports: list[dict] = []
        self.states: list[bytes] = []
        self.resume_from = resume_from
        monkeypatch.setattr(tune, "report", self.report)
        monkeypatch.setattr(tune, "get_checkpoint", self.get_checkpoint)

    def report(self, metrics: dict, checkpoint: Any = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint is not None:
            with open(f"{checkpoint.path}/state.pt", "rb") as f:
                self.states.append(f.read())

    def get_checkpoint(self) -> Any:
        if self.resume_from is None:
            return None
        import tempfile

        from ray import tune

        d = tempfile.mkdtemp(prefix="contract-ckpt-")
        with open(f"{d}/state.pt", "wb") as f:
            f.write(self.resume_from)
        return tune.Checkpoint.from_directory(d)


@pytest.mark.parametrize("family", REGISTRY.values(), ids=lambda f: f.name)
def test_run_trial_resumes_exactly_and_reports_declared_metrics(family: Family, family_data, monkeypatch) -> None:
    """Two epochs straight, and one epoch then a resume from its checkpoint, report the same
    second epoch; every number run_trial reports is a declared metric."""
    variant = next(iter(family.variants or {"defaults": {}}))
    config = {**variant_config(family, variant), "epochs": 2, "threads": 1}
    straight = FakeReports(monkeypatch)
    run_trial(dict(config), family_data(family), family=family)
    resumed = FakeReports(monkeypatch, resume_from=straight.states[0])
    run_trial(dict(config), family_data(family), family=family)
    assert [r["epoch"] for r in straight.reports] == [1, 2] and [r["epoch"] for r in resumed.reports] == [2]
    timing = ("step_time_s", "peak_mem_mb")  # measured, not computed
    assert {k: v for k, v in resumed.reports[0].items() if k not in timing} == {
        k: v for k, v in straight.reports[1].items() if k not in timing
    }
    for name, value in straight.reports[-1].items():
        m = family.metric(name)
        assert m is not None, f"run_trial reports {name}, which {family.name} does not declare"
        assert _within_unit(m, float(value)), (name, value)
