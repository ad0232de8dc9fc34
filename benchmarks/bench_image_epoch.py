"""Cost of a first epoch of a CIFAR-shaped ResNet-18 on the bundled sample (the image data layer).

Run by hand (not a test):  .venv/bin/python benchmarks/bench_image_epoch.py [--images 256] [--threads 2]
Writes benchmarks/results/image_epoch.json: seconds to train and evaluate `--images` images of the
offline stand-in (mnist-5k at 3 x 32 x 32, cifar recipe) with a width-64 ResNet-18 (CIFAR stem),
extrapolated to the sample's 2,500 training / 2,500 test images; the model's FLOPs per image
(torch's flop_counter, x3 for a training step), and the same run's fp32 GEMM throughput as the
baseline, so the achieved fraction is a ratio measured under the same load.
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

from study.models import count_flops
from trainables.backbones import ResNet
from trainables.common import COMMON_DEFAULTS, count_params
from trainables.images import IMAGE_DEFAULTS, evaluate_images, load_images, prepare_images, train_epoch_images

OUT = Path(__file__).parent / "results" / "image_epoch.json"


def gemm_gflops(n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--width", type=int, default=64)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cpu = torch.device("cpu")
    data = load_images("mnist-5k")
    cfg = {**COMMON_DEFAULTS, **IMAGE_DEFAULTS, "batch_size": 128, "n_train": a.images, "n_test": a.images,
           "num_classes": 10}  # fmt: skip
    trial = prepare_images(cfg, data, channels=3, size=32, recipe="cifar")
    torch.manual_seed(0)
    model = ResNet("resnet18", 10, width=a.width, cifar_stem=True)
    flops = count_flops(model, torch.zeros(1, 3, 32, 32))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    peak_before = gemm_gflops()
    t0 = time.perf_counter()
    train_epoch_images(model, opt, trial, cfg, torch.Generator().manual_seed(0), cpu)
    train_s = time.perf_counter() - t0
    model.eval()
    t0 = time.perf_counter()
    evaluate_images(model, trial, cfg, cpu)
    eval_s = time.perf_counter() - t0
    peak = max(peak_before, gemm_gflops())
    achieved = 3 * flops * a.images / train_s / 1e9
    result = {
        "model": f"resnet18 width {a.width}, CIFAR stem, 3x32x32 (mnist-5k stand-in)",
        "params": count_params(model),
        "forward_flops_per_image": flops,
        "images_timed": a.images,
        "threads": a.threads,
        "train_s": round(train_s, 2),
        "eval_s": round(eval_s, 2),
        "epoch_2500_train_s_extrapolated": round(train_s / a.images * 2500, 1),
        "eval_2500_test_s_extrapolated": round(eval_s / a.images * 2500, 1),
        "train_gflops_achieved": round(achieved, 2),
        "gemm_gflops_same_run": round(peak, 2),
        "fraction_of_gemm": round(achieved / peak, 3),
        "load_average_1min": os.getloadavg()[0],
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
