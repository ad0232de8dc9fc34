"""First-epoch cost of a CIFAR-shaped ResNet-18 (width 64, CIFAR stem, 32x32) on the bundled sample.

Run by hand (not a test):  .venv/bin/python benchmarks/bench_ssm_epoch.py [--slice 200] [--threads 2]
Times the first training pass over a `--slice`-image subset of mnist-5k (batch 50, the SSM family's
own train_epoch, digits padded to 32x32 and replicated to 3 channels) and the evaluation of as many
test images, for the plain and the SSM head, then extrapolates linearly to one epoch of the
2,500 training and 2,500 test images of the sample (the first step, with its one-off allocations,
is included, so the estimate is of a first epoch). Writes benchmarks/results/ssm_epoch.json,
with the machine's load average, since the 2 cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))

from trainables.common import make_optimizer, resolve_config
from trainables.ssm import FAMILY

OUT = Path(__file__).parent / "results" / "ssm_epoch.json"
FULL = 2500  # training (and test) images of mnist-5k


def time_head(head: str, n: int, threads: int, data) -> dict:
    cfg = resolve_config(
        FAMILY,
        {"arch": "resnet18", "width": 64, "cifar_stem": True, "head": head, "n_train": n, "n_test": n,
         "batch_size": 50, "eval_batch_size": 250, "num_classes": 10, "threads": threads, "device": "cpu"},
    )  # fmt: skip
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    trial = FAMILY.prepare(cfg, data)
    model = FAMILY.build(cfg)
    opt = make_optimizer(model, cfg)
    t0 = time.perf_counter()
    FAMILY.train_epoch(model.train(), opt, trial, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        FAMILY.evaluate(model.eval(), trial, cfg, torch.device("cpu"))
    eval_s = time.perf_counter() - t0
    return {
        "head": head,
        "slice_images": n,
        "train_slice_s": round(train_s, 2),
        "eval_slice_s": round(eval_s, 2),
        "train_ms_per_image": round(1000 * train_s / n, 2),
        "eval_ms_per_image": round(1000 * eval_s / n, 2),
        "epoch_estimate_s": round((train_s + eval_s) * FULL / n, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--slice", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    data = FAMILY.load_data("mnist-5k", None)
    load = os.getloadavg()
    rows = [time_head(h, a.slice, a.threads, data) for h in ("plain", "ssm")]
    result = {
        "what": "first epoch of ResNet-18 (width 64, CIFAR stem, 32x32) on mnist-5k: 2,500 train + 2,500 test "
        f"images, extrapolated from a timed {a.slice}-image slice",
        "threads": a.threads,
        "load_average_1_5_15": [round(x, 1) for x in load],
        "torch": torch.__version__,
        "results": rows,
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
