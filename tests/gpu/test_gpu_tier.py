"""The GPU tier: the platform's contract and trial shapes on a CUDA device.

- every family's contract checks (the variants of tests/trainables/test_contract.py) in fp32,
  bf16 autocast and channels-last;
- a packed digit-pair run on the device equals the same pack on the CPU within tolerance;
- fractional GPUs: four trials sharing one GPU (``resources.gpu: 0.25``) run to completion on a
  local Ray, with plausible ``step_time_s`` and ``peak_mem_mb`` in the study's tables;
- the ImageNet-folder loader with pinned memory and loader workers, on a tiny generated tree;
- a checkpoint written on the device resumes on the CPU, and the CPU's resumes on the device.

Skipped without CUDA; ``STUDY_GPU_TIER_DEVICE=cpu`` runs it on the CPU (see conftest.py).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import write_spec
from tests.gpu.conftest import quick
from tests.trainables.test_contract import CASES, tensors_in, variant_config
from tests.trainables.test_shapes import FakeTune, pack_config
from trainables import REGISTRY, get_family, runtime
from trainables.common import make_optimizer, run_trial
from trainables.packing import run_pack_trial

PRECISIONS = {  # name -> the config keys that select it (trainables/runtime.py)
    "fp32": {"amp": "off", "channels_last": False},
    "bf16": {"amp": "bf16", "channels_last": False},
    "channels_last": {"amp": "off", "channels_last": True},
}
# |device - CPU| of a pack's losses after two epochs: cuDNN convolutions use TF32 by default, and
# kernels sum in other orders (on the CPU both runs are the same computation: equal)
DEVICE_LOSS_TOL = 2e-2
DEVICE_ACC_TOL = 0.03  # test pairs of 200 that may flip
pytestmark = pytest.mark.gpu
FIRST_VARIANT = {f.name: next(iter(f.variants or {"defaults": {}})) for f in REGISTRY.values()}


def contract_cases() -> list:
    cases = [c for c in CASES if not quick() or c.values[1] == FIRST_VARIANT[c.values[0].name]]
    return [
        pytest.param(*c.values, precision, id=f"{c.id}:{precision}") for c in cases for precision in PRECISIONS
    ]


@pytest.fixture(scope="module")
def family_data():
    cache: dict = {}

    def get(family):
        if family.name not in cache:
            cache[family.name] = family.load_data("mnist-5k", None)
        return cache[family.name]

    return get


@pytest.mark.parametrize(("family", "variant", "precision"), contract_cases())
def test_contract_on_the_device(family, variant: str, precision: str, device: torch.device, family_data) -> None:
    """One epoch as `run_trial` runs it on the device (the runtime's autocast and memory format):
    a finite loss, a finite gradient for every parameter, finite outputs, test_acc in [0, 1]."""
    cfg = {**variant_config(family, variant), "device": str(device), **PRECISIONS[precision]}
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    trial_data = family.prepare(cfg, family_data(family))
    if cfg.get("num_classes") == 0 and getattr(trial_data, "num_classes", None):
        cfg["num_classes"] = int(trial_data.num_classes)
    rt = runtime.for_trial(cfg, device)
    assert rt.channels_last == PRECISIONS[precision]["channels_last"]
    assert rt.amp_dtype == (torch.bfloat16 if precision == "bf16" else None)
    model = rt.prepare_model(family.build(cfg).to(device))
    optimizer = make_optimizer(model, cfg)
    model.train()
    with rt.train():
        metrics = family.train_epoch(model, rt.optimizer(optimizer), trial_data, cfg, generator, device)
    assert math.isfinite(float(metrics["train_loss"]))
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.device.type == device.type
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    outputs: list = []
    model.register_forward_hook(lambda module, args, out: outputs.append(out))
    model.eval()
    with torch.no_grad(), rt.eval():
        evals = family.evaluate(model, trial_data, {**cfg, "__epoch__": 1}, device)
    assert outputs and all(torch.isfinite(t.float()).all() for out in outputs for t in tensors_in(out))
    assert 0.0 <= float(evals["test_acc"]) <= 1.0
    assert all(math.isfinite(float(v)) for v in evals.values())


DIGITS = get_family("digit_pairs")
PACK_SHARED = {"n_train": 200, "n_test": 200, "batch_size": 25, "epochs": 2, "momentum": 0.9, "arch": "Siamese"}
PACK_MEMBERS = [{"seed": 0, "lr": 0.01}, {"seed": 1, "lr": 0.05}, {"seed": 2, "lr": 0.005}]


def test_packed_digit_pairs_on_the_device_equal_the_cpu(monkeypatch, device: torch.device) -> None:
    data = DIGITS.load_data("mnist-5k", None)
    runs = {}
    for where in ("cpu", str(device)):
        fake = FakeTune(monkeypatch)
        shared = {**PACK_SHARED, "device": where, "amp": "off"}
        run_pack_trial(pack_config(shared, PACK_MEMBERS), data, family=DIGITS)
        runs[where] = fake.reports
    cpu, dev = runs["cpu"], runs[str(device)]
    assert [r["epoch"] for r in dev] == [1, 2]
    for a, b in zip(cpu, dev):
        for i in map(str, range(len(PACK_MEMBERS))):
            for k in ("train_loss", "test_loss"):
                assert abs(a["members"][i][k] - b["members"][i][k]) < DEVICE_LOSS_TOL, (i, k, a["members"][i][k])
            assert abs(a["members"][i]["test_acc"] - b["members"][i]["test_acc"]) <= DEVICE_ACC_TOL
    assert cpu[-1]["members"]["0"]["train_loss"] != cpu[-1]["members"]["1"]["train_loss"]  # members differ


@pytest.fixture(scope="module")
def ray_with_a_gpu(device: torch.device):
    """A local Ray with one GPU (on the CPU dry run: a declared GPU resource, trials on the CPU)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_four_trials_share_one_gpu_with_plausible_cost_metrics(ray_with_a_gpu, tmp_path: Path, device) -> None:
    import pandas as pd

    from study.runner import run_study

    fixed = {"epochs": 2, "batch_size": 50, "lr": 0.01, "device": "cuda" if device.type == "cuda" else "cpu"}
    spec = write_spec(tmp_path / "frac.yaml", name="frac", fixed=fixed, resources={"cpu": 0.5, "gpu": 0.25})
    out = io.StringIO()
    got = run_study(spec, storage=tmp_path, report=False, out=out)
    assert got.counts == {"TERMINATED": 4}, out.getvalue()
    trials = pd.read_parquet(tmp_path / "frac" / "results" / "trials.parquet")
    assert len(trials) == 4 and (trials["epochs_done"] == 2).all()
    limit_mb = torch.cuda.get_device_properties(0).total_memory / 2**20 if device.type == "cuda" else 64 * 2**10
    assert ((trials["final_peak_mem_mb"] > 0) & (trials["final_peak_mem_mb"] < limit_mb)).all()
    assert ((trials["final_step_time_s"] > 0) & (trials["final_step_time_s"] < 5)).all()
    epochs = pd.read_parquet(tmp_path / "frac" / "results" / "epochs.parquet")
    assert epochs.groupby("trial_id")["epoch"].apply(list).map(lambda e: e == [1, 2]).all()


def test_imagenet_folder_loader_pins_memory_with_workers(tmp_path: Path, device: torch.device) -> None:
    from tests.trainables.test_images import write_folder
    from trainables import images as im
    from trainables.common import COMMON_DEFAULTS

    write_folder(tmp_path, per_class=4)
    data = im.load_images("imagenet", str(tmp_path))
    cfg = {**COMMON_DEFAULTS, **im.IMAGE_DEFAULTS, "batch_size": 4, "loader_workers": 2}
    t = im.prepare_images(cfg, data, channels=3, size=24, recipe="imagenet")
    g = torch.Generator().manual_seed(0)
    seen = 0
    for x, y in t.batches("train", 4, device, g):
        assert x.device.type == device.type and y.device.type == device.type
        assert x.shape[1:] == (3, 24, 24) and 0 <= float(x.min()) and float(x.max()) <= 1
        seen += len(y)
    assert seen == 12
    loader = t._loaders["train:4"]
    assert loader.num_workers == 2 and loader.pin_memory == (device.type == "cuda")
    again = torch.cat([y for _, y in t.batches("train", 4, device, torch.Generator().manual_seed(0))])
    first = torch.cat([y for _, y in t.batches("train", 4, device, torch.Generator().manual_seed(0))])
    assert torch.equal(again, first)  # persistent workers, same order per seed


def test_checkpoint_moves_between_the_device_and_the_cpu(monkeypatch, device: torch.device) -> None:
    """Epoch 1 on the device, epoch 2 resumed on the CPU, epoch 3 resumed on the device: each resume
    continues (no restart, no fallback note) and matches an uninterrupted run up to device rounding."""
    data = DIGITS.load_data("mnist-5k", None)
    base = {"arch": "ConvNet", "n_train": 200, "n_test": 200, "batch_size": 25, "epochs": 3, "lr": 0.01,
            "momentum": 0.9, "seed": 4, "amp": "off", "channels_last": False}  # fmt: skip
    here = str(device)
    straight = FakeTune(monkeypatch)
    run_trial({**base, "device": here}, data, family=DIGITS)
    assert [r["epoch"] for r in straight.reports] == [1, 2, 3]

    first = FakeTune(monkeypatch)
    run_trial({**base, "epochs": 1, "device": here}, data, family=DIGITS)
    on_cpu = FakeTune(monkeypatch, resume_from=first.checkpoints[-1])
    run_trial({**base, "epochs": 2, "device": "cpu"}, data, family=DIGITS)
    back = FakeTune(monkeypatch, resume_from=on_cpu.checkpoints[-1])
    run_trial({**base, "device": here}, data, family=DIGITS)
    assert [r["epoch"] for r in on_cpu.reports] == [2] and [r["epoch"] for r in back.reports] == [3]
    for r in (*on_cpu.reports, *back.reports):
        assert "restore_note" not in r, r["restore_note"]
    for got, ref in ((on_cpu.reports[0], straight.reports[1]), (back.reports[0], straight.reports[2])):
        assert abs(got["train_loss"] - ref["train_loss"]) < DEVICE_LOSS_TOL
        assert got["step_time_s"] > 0 and got["peak_mem_mb"] > 0
