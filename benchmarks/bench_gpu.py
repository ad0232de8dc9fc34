"""GPU benchmark (issue 13), with a CPU fallback: how trial shapes pay off on real hardware.

1. Trials per hour of the digit-pair grid (``digit_pairs_grid.yaml`` on mnist-5k, one net x batch
   size group: 5 lr x ``--seeds`` seeds, ``--epochs`` epochs), run end to end through
   `study.runner.run_study` on a local Ray with every GPU of the node:
   - ``pack 1, gpu 1``: one trial per GPU (today's default on a GPU node);
   - ``pack 1, gpu 0.25`` and ``gpu 0.125``: fractional GPUs, 4 / 8 trials share a GPU, no packing;
   - ``pack 8`` and ``pack 32`` (``gpu 1`` per pack): one vectorised model per GPU.
2. Images/s of a ResNet-50 training step (torchvision's, ImageNet shape 224 x 224, batch
   ``--batch``): fp32; AMP (bf16 where supported, else fp16 with a grad scaler); channels-last;
   both.

Without a GPU it runs the same measurements on the CPU, small (``pack`` with ``cpu: 1`` per
trial or pack; fractional becomes 1 CPU per trial; ResNet-50 at batch 8, 112 x 112): the numbers
only show that the script works, not GPU behaviour. On a GPU node (e.g. the cluster's g5.xlarge):

    .venv/bin/python benchmarks/bench_gpu.py               # writes benchmarks/results/gpu.json
    .venv/bin/python benchmarks/bench_gpu.py --seeds 10 --epochs 25 --batch 256   # the full group

Results go to ``benchmarks/results/gpu.json`` (``gpu_cpu_fallback.json`` without a GPU).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def trials_per_hour(gpu: bool, seeds: int, epochs: int, arch: str, batch: int) -> list[dict]:
    import ray

    from study.runner import run_study

    n_gpus = torch.cuda.device_count()
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=n_gpus, include_dashboard=False,
             log_to_driver=False)  # fmt: skip
    settings = (
        [("pack 1, gpu 1", 1, {"gpu": 1}), ("pack 1, gpu 0.25", 1, {"gpu": 0.25}),
         ("pack 1, gpu 0.125", 1, {"gpu": 0.125}), ("pack 8, gpu 1", 8, {"gpu": 1}),
         ("pack 32, gpu 1", 32, {"gpu": 1})]
        if gpu
        else [("pack 1, cpu 1", 1, {}), ("pack 8, cpu 1", 8, {}), ("pack 32, cpu 1", 32, {})]
    )  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, pack, res) in enumerate(settings):
            sets = [
                "data.source=mnist-5k", f"fixed.epochs={epochs}", f"repeats={seeds}", f"pack={pack}",
                f"space.arch.grid=[{arch}]", f"space.batch_size.grid=[{batch}]",
                "resources.cpu=1", f"resources.gpu={res.get('gpu', 0)}",
            ]  # fmt: skip
            if gpu:
                sets.append("fixed.device=cuda")
            t = time.perf_counter()
            out = run_study(REPO / "search_spaces" / "digit_pairs_grid.yaml", name=f"b{i}", storage=tmp,
                            overrides=sets, report=False, out=io.StringIO())  # fmt: skip
            seconds = time.perf_counter() - t
            n = sum(out.counts.values())
            rows.append({"setting": label, "trials": n, "seconds": round(seconds, 1),
                         "trials_per_hour": round(n / seconds * 3600)})  # fmt: skip
            print(rows[-1], flush=True)
    ray.shutdown()
    return rows


def resnet50_images_per_s(device: torch.device, batch: int, size: int, steps: int) -> list[dict]:
    from trainables.backbones import ResNet

    rows = []
    amp_dtype = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    for label, amp, channels_last in (("fp32", False, False), ("amp", True, False),
                                      ("channels_last", False, True), ("amp+channels_last", True, True)):  # fmt: skip
        torch.manual_seed(0)
        model = ResNet("resnet50", num_classes=1000).to(device)
        x = torch.randn(batch, 3, size, size, device=device)
        y = torch.randint(0, 1000, (batch,), device=device)
        if channels_last:
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)

        def step(model=model, x=x, y=y, opt=opt, scaler=scaler, amp=amp) -> None:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        step()  # warm-up (cuDNN autotuning, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - t) / steps
        rows.append({"setting": label, "amp_dtype": str(amp_dtype) if amp else None, "batch": batch, "size": size,
                     "images_per_s": round(batch / seconds, 1)})  # fmt: skip
        print(rows[-1], flush=True)
    base = rows[0]["images_per_s"]
    for r in rows:
        r["vs_fp32"] = round(r["images_per_s"] / base, 2)
    return rows


def main() -> int:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=10 if gpu else 2)
    p.add_argument("--epochs", type=int, default=5 if gpu else 1)
    p.add_argument("--arch", default="Siamese")
    p.add_argument("--batch-size", type=int, default=50, help="the digit-pair group's batch size")
    p.add_argument("--batch", type=int, default=256 if gpu else 8, help="ResNet-50 batch")
    p.add_argument("--size", type=int, default=224 if gpu else 112)
    p.add_argument("--steps", type=int, default=20 if gpu else 2)
    a = p.parse_args()
    load0 = os.getloadavg()[0]
    device = torch.device("cuda" if gpu else "cpu")
    out = {
        "device": torch.cuda.get_device_name(0) if gpu else "cpu (fallback: no GPU on this machine)",
        "gpus": torch.cuda.device_count(),
        "cpus": os.cpu_count(),
        "load_avg_1m_at_start": round(load0, 1),
        "args": vars(a),
        "grid_trials": trials_per_hour(gpu, a.seeds, a.epochs, a.arch, a.batch_size),
        "resnet50": resnet50_images_per_s(device, a.batch, a.size, a.steps),
    }
    base = out["grid_trials"][0]["trials_per_hour"]
    for r in out["grid_trials"]:
        r["vs_first"] = round(r["trials_per_hour"] / base, 2)
    out["load_avg_1m_at_end"] = round(os.getloadavg()[0], 1)
    path = REPO / "benchmarks" / "results" / ("gpu.json" if gpu else "gpu_cpu_fallback.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
