"""Benchmark: model FLOP utilisation (MFU) of digit-pair trials and of a CIFAR ResNet-18 (issue 13).

MFU = the FLOPs a trial does (``torch.utils.flop_counter.FlopCounterMode``: matmuls and
convolutions, forward and backward, training and evaluation) over its wall time, against the
single-thread fp32 GEMM peak measured in the same run (``torch.mm`` of 1024 x 1024 matrices,
best of several), right before and after each row (mean of the two): on a shared machine the
peak itself moves with the load. Every trial runs on one thread, as in a study.

- every net x batch size of ``digit_pairs_grid.yaml`` (1,000 train / 1,000 test pairs): the bare
  contract loop (`run_trial` without Ray), one trial at a time, and the same trials packed
  (`trainables.packing`, 8 members: per-member time); FLOPs of a 25-epoch trial from one counted
  epoch, wall time from ``--epochs`` measured epochs (x 25 / epochs);
- a CIFAR-shaped ResNet-18 (torchvision's, CIFAR stem, batch 128, 32 x 32): FLOPs of one
  training step, wall time of ``--steps`` steps, and the epoch (50,000 images = 391 steps) they
  imply; fp32, bf16 autocast and channels-last.

The machine is shared: the load average is recorded, and the peak is measured in the same run so
that MFU is a ratio of two measurements made under the same load.

Run: ``.venv/bin/python benchmarks/bench_mfu.py`` (writes ``benchmarks/results/mfu.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARCHS = ("FconnNet", "ConvNet", "parallelConv", "Siamese")
BATCHES = (25, 50, 100, 200)
TRIAL_EPOCHS = 25


def gemm_peak_gflops(n: int = 1024, repeats: int = 7) -> float:
    """Single-thread fp32 GEMM rate, best of `repeats` (GFLOP/s)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * n**3 / best / 1e9


class _Quiet:
    """ray.tune.report / get_checkpoint stand-ins: the bare loop without Ray."""

    def __enter__(self) -> _Quiet:
        from ray import tune

        self.saved = tune.report, tune.get_checkpoint
        tune.report, tune.get_checkpoint = (lambda *a, **k: None), (lambda: None)
        return self

    def __exit__(self, *exc: object) -> None:
        from ray import tune

        tune.report, tune.get_checkpoint = self.saved


def epoch_flops(family, data, cfg: dict) -> float:
    """FLOPs of one training epoch plus one evaluation of a digit-pair trial."""
    from torch.utils.flop_counter import FlopCounterMode

    from trainables.common import make_optimizer, resolve_config

    cfg = resolve_config(family, cfg)
    torch.manual_seed(0)
    td = family.prepare(cfg, data)
    model = family.build(cfg)
    opt = make_optimizer(model, cfg)
    with FlopCounterMode(display=False) as counter:
        model.train()
        family.train_epoch(model, opt, td, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
        model.eval()
        with torch.no_grad():
            family.evaluate(model, td, {**cfg, "__epoch__": 1}, torch.device("cpu"))
    return float(counter.get_total_flops())


def digit_pairs_rows(epochs: int, members: int) -> list[dict]:
    from trainables import get_family
    from trainables.common import run_trial
    from trainables.packing import run_pack_trial

    family = get_family("digit_pairs")
    data = family.load_data("mnist-5k", None)
    rows = []
    with _Quiet():
        run_trial({"arch": "Siamese", "epochs": 1, "batch_size": 50}, data, family=family)  # warm-up
        for arch in ARCHS:
            for batch in BATCHES:
                base = {"arch": arch, "batch_size": batch, "momentum": 0.9, "lr": 0.01}
                flops = epoch_flops(family, data, {**base, "seed": 0})
                peak = gemm_peak_gflops(repeats=3)  # the load changes by the minute: a peak next to each row
                t = time.perf_counter()
                run_trial({**base, "seed": 0, "epochs": epochs}, data, family=family)
                alone = (time.perf_counter() - t) / epochs
                pack = {"shared": {**base, "epochs": epochs}, "members": [{"seed": s} for s in range(members)],
                        "metric": "test_acc", "mode": "max"}  # fmt: skip
                t = time.perf_counter()
                run_pack_trial({"__pack__": pack}, data, family=family)
                packed = (time.perf_counter() - t) / epochs / members
                rows.append({
                    "net": arch, "batch_size": batch,
                    "trial_flops": flops * TRIAL_EPOCHS,
                    "trial_s": round(alone * TRIAL_EPOCHS, 2),
                    "trial_s_packed": round(packed * TRIAL_EPOCHS, 2),
                    "peak_gflops": round((peak + gemm_peak_gflops(repeats=3)) / 2, 1),
                })  # fmt: skip
                print(rows[-1], flush=True)
    return rows


def resnet18_rows(steps: int, batch: int = 128) -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    from trainables.backbones import ResNet

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return ResNet("resnet18", num_classes=10, width=64, cifar_stem=True)

    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    rows = []
    for name, amp, channels_last in (("fp32", None, False), ("bf16", torch.bfloat16, False),
                                     ("bf16+channels_last", torch.bfloat16, True)):  # fmt: skip
        model = build()
        xs = x
        if channels_last:
            model, xs = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step(model=model, xs=xs, opt=opt, amp=amp) -> None:
            with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
                loss = torch.nn.functional.cross_entropy(model(xs), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        with FlopCounterMode(display=False) as counter:
            step()
        flops = float(counter.get_total_flops())
        peak = gemm_peak_gflops(repeats=3)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        per_step = (time.perf_counter() - t) / steps
        rows.append({"net": "resnet18-cifar", "precision": name, "batch_size": batch, "step_flops": flops,
                     "step_s": round(per_step, 3), "epoch_steps": 391,
                     "epoch_s_implied": round(per_step * 391, 1),
                     "peak_gflops": round((peak + gemm_peak_gflops(repeats=3)) / 2, 1)})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2, help="epochs measured per digit-pair trial")
    p.add_argument("--members", type=int, default=8, help="members of the packed measurement")
    p.add_argument("--steps", type=int, default=2, help="ResNet-18 steps measured")
    a = p.parse_args()
    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    peak = gemm_peak_gflops()
    print(f"single-thread fp32 GEMM peak {peak:.1f} GFLOP/s (load {load0:.1f})", flush=True)
    rows = digit_pairs_rows(a.epochs, a.members)
    for r in rows:  # against the peak measured just before and after the row
        r["mfu"] = round(r["trial_flops"] / r["trial_s"] / 1e9 / r["peak_gflops"], 3)
        r["mfu_packed"] = round(r["trial_flops"] / r["trial_s_packed"] / 1e9 / r["peak_gflops"], 3)
    res = resnet18_rows(a.steps)
    for r in res:
        r["mfu"] = round(r["step_flops"] / r["step_s"] / 1e9 / r["peak_gflops"], 3)
    peak_end = gemm_peak_gflops()
    out = {
        "gemm_peak_gflops": round(peak, 1),
        "gemm_peak_gflops_at_end": round(peak_end, 1),
        "load_avg_1m": [round(load0, 1), round(os.getloadavg()[0], 1)],
        "cpus": os.cpu_count(),
        "threads_per_trial": 1,
        "epochs_measured": a.epochs,
        "packed_members": a.members,
        "digit_pairs": rows,
        "resnet18_cifar": res,
    }
    path = REPO / "benchmarks" / "results" / "mfu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
