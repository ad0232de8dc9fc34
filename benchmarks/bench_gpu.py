"""GPU benchmark: what each trial shape and precision buys on one GPU, and the per-step table
that ``study validate --cost --cost-gpu NAME`` reads.

1. ``grid``: trials per hour of one digit-pair group (``digit_pairs_grid.yaml`` on mnist-5k, one
   net x batch size: 5 lr x ``--seeds`` seeds x ``--epochs`` epochs), each setting one real
   `study.runner.run_study` on a local Ray with the node's GPU: pack 1 with a whole GPU per
   trial, fractional GPUs (``resources.gpu`` 0.25 and 0.125: 4 / 8 trials share the GPU), and
   pack 8 and pack 32 (one vectorised model of 8 / 32 members per GPU).
2. ``steps``: seconds per training step, images/s and MFU of
   - the four digit-pair nets at the grid's batch sizes (the precision a CUDA trial uses by
     default: bf16 autocast, channels-last), alone and packed 8 and 32;
   - the CIFAR ResNet-18 (width 64) and ResNet-50 of ``ssm_cifar.yaml`` (batch 128, 32 x 32) and
     the ImageNet ResNet-50 (batch ``--imagenet-batch``, 224 x 224), in fp32, bf16 autocast,
     channels-last and both;
   MFU = training FLOPs per step (torch's FlopCounterMode over forward and backward) / step time /
   the GPU's dense bf16 peak (`BF16_PEAK_TFLOPS`, by device name; unknown: null, with a note).

Runs (``scripts/gpu_check.sh`` does both):

    .venv/bin/python benchmarks/bench_gpu.py             # on a GPU: benchmarks/results/gpu.json
    .venv/bin/python benchmarks/bench_gpu.py --dry-run   # the same steps at toy sizes on the CPU:
                                                         # benchmarks/results/gpu_dry_run.json

The dry run declares one GPU to Ray (trials run on the CPU) so that the fractional settings go
through the same scheduling; its numbers only show that the script works.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched in order against the device name
BF16_PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 125.0), ("A10", 125.0),
    ("RTX 4090", 165.0), ("A6000", 155.0),
)  # fmt: skip
DIGIT_NETS = ("FconnNet", "ConvNet", "parallelConv", "Siamese")
DIGIT_BATCHES = (25, 50, 100, 200)
PRECISIONS = {  # label -> config keys (trainables/runtime.py)
    "fp32": {"amp": "off", "channels_last": False},
    "bf16": {"amp": "bf16", "channels_last": False},
    "channels_last": {"amp": "off", "channels_last": True},
    "bf16+channels_last": {"amp": "bf16", "channels_last": True},
}
GRID_SETTINGS = (  # label, pack, resources.gpu, trials sharing one GPU
    ("pack 1, gpu 1", 1, 1.0, 1), ("pack 1, gpu 0.25", 1, 0.25, 4), ("pack 1, gpu 0.125", 1, 0.125, 8),
    ("pack 8, gpu 1", 8, 1.0, 1), ("pack 32, gpu 1", 32, 1.0, 1),
)  # fmt: skip


def bf16_peak(device_name: str) -> tuple[float | None, str]:
    """(dense bf16 peak in FLOP/s, note) of a device by name; None for one not in the table."""
    for key, tflops in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12, f"{key}: {tflops:g} TFLOP/s dense bf16"
    return None, f"{device_name}: no bf16 peak in BF16_PEAK_TFLOPS, MFU not computed"


def grid_trials(*, gpu: bool, seeds: int, epochs: int, arch: str, batch: int) -> list[dict]:
    """Trials per hour of one digit-pair group under each of `GRID_SETTINGS`."""
    import ray

    from study.runner import run_study

    cpus = os.cpu_count() or 1
    ray.init(address="local", num_cpus=cpus, num_gpus=max(1, torch.cuda.device_count()),
             include_dashboard=False, log_to_driver=False)  # fmt: skip
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, (label, pack, share, at_once) in enumerate(GRID_SETTINGS):
                cpu = min(1.0, cpus / at_once)  # CPUs never the limit of the GPU's sharing
                sets = [
                    "data.source=mnist-5k", f"fixed.epochs={epochs}", f"repeats={seeds}", f"pack={pack}",
                    f"space.arch.grid=[{arch}]", f"space.batch_size.grid=[{batch}]",
                    f"resources.cpu={cpu:g}", f"resources.gpu={share:g}",
                    f"fixed.device={'cuda' if gpu else 'cpu'}",
                    "paper.results=[]", "paper.claims=[]",  # the paper's rows name the other nets
                ]  # fmt: skip
                t = time.perf_counter()
                out = run_study(REPO / "search_spaces" / "digit_pairs_grid.yaml", name=f"b{i}", storage=tmp,
                                overrides=sets, report=False, out=io.StringIO())  # fmt: skip
                seconds = time.perf_counter() - t
                n = sum(out.counts.values())
                rows.append({"setting": label, "pack": pack, "gpu": share, "cpu": cpu, "trials": n,
                             "statuses": out.counts, "seconds": round(seconds, 1),
                             "trials_per_hour": round(n / seconds * 3600)})  # fmt: skip
                print(rows[-1], flush=True)
    finally:
        ray.shutdown()
    base = rows[0]["trials_per_hour"]
    for r in rows:
        r["vs_pack1_gpu1"] = round(r["trials_per_hour"] / base, 2)
    return rows


def step_rows(device: torch.device, peak: float | None, *, dry: bool, imagenet_batch: int, budget_s: float) -> list[dict]:
    """The per-step table (see the module docstring)."""
    from study.cost import time_step
    from trainables import get_family
    from trainables.common import resolve_config

    rows = []

    def measure(family: str, model: str, over: dict, precision: str, members: int = 1) -> None:
        fam = get_family(family)
        cfg = resolve_config(fam, {**over, **PRECISIONS[precision], "device": str(device)})
        r = time_step(family, cfg, device, members=members, budget_s=budget_s, count_flops=True)
        images = int(cfg["batch_size"]) * members / r["step_s"]
        achieved = r["flops"] / r["step_s"] if r["flops"] else None
        config = {k: cfg.get(k) for k in fam.model_keys}
        rows.append({
            "family": family, "model": model, "config": config, "batch_size": int(cfg["batch_size"]),
            "members": members, "precision": precision, "step_s": r["step_s"], "steps_timed": r["steps"],
            "images_per_s": round(images, 1), "flops": r["flops"],
            "tflops": round(achieved / 1e12, 3) if achieved else None,
            "mfu": round(achieved / peak, 4) if achieved and peak else None,
        })  # fmt: skip
        print({k: rows[-1][k] for k in ("model", "batch_size", "members", "precision", "step_s", "mfu")}, flush=True)

    default = "bf16+channels_last"  # what a CUDA trial uses with amp: auto, channels_last: auto
    for net in DIGIT_NETS[:1] if dry else DIGIT_NETS:
        for batch in DIGIT_BATCHES[:1] if dry else DIGIT_BATCHES:
            over = {"arch": net, "batch_size": batch}
            measure("digit_pairs", net, over, default)
            for members in (8, 32):
                measure("digit_pairs", f"{net} x{members}", over, "fp32" if dry else default, members=members)
    width, size = (4, 32) if dry else (64, 32)
    cifar = {"cifar_stem": True, "width": width, "image_size": size, "head": "plain", "num_classes": 10}
    images = [
        ("cifar_resnet18_w64", {**cifar, "arch": "resnet18", "batch_size": 2 if dry else 128}),
        ("cifar_resnet50", {**cifar, "arch": "resnet50", "batch_size": 2 if dry else 128}),
        ("imagenet_resnet50", {"arch": "resnet50", "width": width, "image_size": 64 if dry else 224,
                               "head": "plain", "num_classes": 1000, "batch_size": 2 if dry else imagenet_batch}),
    ]  # fmt: skip
    for model, over in images:
        for precision in PRECISIONS:
            measure("ssm", model, over, precision)
    for r in rows:  # speed against the same model's fp32 (or default) row
        ref = next((x for x in rows if x["model"] == r["model"] and x["batch_size"] == r["batch_size"]), r)
        r["vs_first_precision"] = round(ref["step_s"] / r["step_s"], 2)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (gpu_dry_run.json)")
    p.add_argument("--sections", nargs="+", choices=("grid", "steps"), default=["grid", "steps"])
    p.add_argument("--seeds", type=int, default=None, help="seeds of the digit-pair group (default 4; dry run 1)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the digit-pair group (default 3; dry run 1)")
    p.add_argument("--arch", default="Siamese")
    p.add_argument("--batch-size", type=int, default=50, help="the digit-pair group's batch size")
    p.add_argument("--imagenet-batch", type=int, default=256)
    p.add_argument("--budget-s", type=float, default=None, help="timed seconds per table row (default 0.5; dry 0.05)")
    p.add_argument("--out", default=None, help="output JSON (default benchmarks/results/gpu.json or gpu_dry_run.json)")
    a = p.parse_args(argv)
    gpu = torch.cuda.is_available() and not a.dry_run
    if not gpu and not a.dry_run:
        print("bench_gpu: no CUDA device; run with --dry-run for the CPU version", file=sys.stderr)
        return 2
    device = torch.device("cuda" if gpu else "cpu")
    name = torch.cuda.get_device_name(0) if gpu else "cpu (dry run)"
    peak, peak_note = bf16_peak(name) if gpu else (None, "dry run on the CPU: MFU not computed")
    seeds, epochs = a.seeds or (4 if gpu else 1), a.epochs or (3 if gpu else 1)
    budget = a.budget_s if a.budget_s is not None else (0.5 if gpu else 0.05)
    if gpu:
        torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()
    out: dict = {
        "device": name,
        "dry_run": not gpu,
        "gpus": torch.cuda.device_count() if gpu else 0,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16_peak_flops": peak,
        "peak_note": peak_note,
        "load_avg_1m_at_start": round(os.getloadavg()[0], 1),
        "args": {**vars(a), "seeds": seeds, "epochs": epochs, "budget_s": budget},
    }
    if "steps" in a.sections:
        out["steps"] = step_rows(device, peak, dry=not gpu, imagenet_batch=a.imagenet_batch, budget_s=budget)
    if "grid" in a.sections:
        out["grid_trials"] = grid_trials(gpu=gpu, seeds=seeds, epochs=epochs, arch=a.arch, batch=a.batch_size)
    out["load_avg_1m_at_end"] = round(os.getloadavg()[0], 1)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    default = REPO / "benchmarks" / "results" / ("gpu.json" if gpu else "gpu_dry_run.json")
    path = Path(a.out) if a.out else default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)) + "\n")
    print(f"wrote {path} ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
