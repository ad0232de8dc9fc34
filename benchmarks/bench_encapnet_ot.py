"""Cost of EncapNet's OT units per training step: the same net with and without them.

Run by hand (not a test):  .venv/bin/python benchmarks/bench_encapnet_ot.py [--steps 15]
Writes benchmarks/results/encapnet_ot.json: median seconds per optimiser step (forward, margin
loss + lambda x OT loss, backward, Adam) of EncapNet master with no regulariser and with the two
OT units of the authors' code (`ot_units: two`, capsule generator, critic, cosine cost, bias fix,
eps 0.1) at 2, 10 and 50 Sinkhorn iterations, and their ratio to the net without OT. The
variants' steps alternate in one process on one thread, so a busy shared machine slows them
alike (the step_time_s of separate studies is not comparable when the load changes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))

from trainables.common import resolve_config
from trainables.encapnet import FAMILY, base_loss, build, enable_train_only

OUT = Path(__file__).parent / "results" / "encapnet_ot.json"
CONFIGS = {
    "w4_master_1sub_batch16": {"width": 4, "core": "master", "sub_layers": 1, "batch_size": 16},  # the offline study
    "w32_master_batch32": {"width": 32, "core": "master", "batch_size": 32},  # the paper's width
}


def stepper(**overrides):
    cfg = resolve_config(FAMILY, {"num_classes": 10, **overrides})
    torch.manual_seed(0)
    model = build(cfg)
    enable_train_only(model)
    model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn, lam = base_loss(cfg), float(cfg["ot_lambda"])
    x = torch.rand(cfg["batch_size"], 3, 32, 32)
    y = torch.randint(0, 10, (cfg["batch_size"],))

    def step() -> float:
        t0 = time.perf_counter()
        out = model(x)
        loss = loss_fn(out, y) + (lam * out["reg"] if isinstance(out, dict) else 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    step()  # warm-up
    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name, common in CONFIGS.items():
        variants = {"none": stepper(**common)}
        for iters in (2, 10, 50):
            variants[f"ot_two_iters_{iters}"] = stepper(**common, reg="ot", sinkhorn_iters=iters, sinkhorn_eps=0.1)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.steps if name.startswith("w4") else max(3, args.steps // 3)):
            for k, f in variants.items():
                times[k].append(f())
        base = statistics.median(times["none"])
        results[name] = {
            "config": common,
            "median_step_s": {k: statistics.median(v) for k, v in times.items()},
            "ratio_to_none": {k: statistics.median(v) / base for k, v in times.items()},
        }
        print(name, {k: round(v, 2) for k, v in results[name]["ratio_to_none"].items()})
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
