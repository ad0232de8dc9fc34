"""The digit-pair grid's levers, measured as ratios in one run on a subset, and the full grid
extrapolated from them (an estimate, labelled as one).

The shared machine cannot time the 800-trial grid cleanly (15-40 minutes under other jobs' load),
so each lever is timed against its baseline side by side, interleaved, on the same subset:

1. ``compute``: per net x batch size (``--nets`` x ``--batches``), ``--members`` trials (lr x seed,
   the grid's own values) for ``--epochs`` epochs, in one process without Ray: one at a time
   (`run_trial`, a checkpoint every epoch: today's pack 1), packed (`run_pack_trial`) at each of
   ``--packs``, and one at a time with checkpoints only at the end (the time-based cadence when
   an epoch is shorter than its window). Seconds per member-epoch; the best pack per group.
2. ``tune``: the per-trial cost of Tune itself: ``--tune-trials`` one-epoch trials on 200 pairs
   through `run_study` on a local Ray, at pack 1 and at one pack holding them all; the difference
   per trial is the start, scheduling and result handling a pack saves.
3. ``threads``: a pack of ``--members`` at 1 and 2 intra-op threads (one process on both cores
   against two processes on one core each).

Writes ``benchmarks/results/grid_levers.json``; ``extrapolation`` combines the ratios with the
grid's shape (16 groups x 50 members x 25 epochs on 2 cores) and says what it assumes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GRID = REPO / "search_spaces" / "digit_pairs_grid.yaml"
LRS = (0.001, 0.005, 0.01, 0.05, 0.1)


class QuietTune:
    """``ray.tune.report`` / ``get_checkpoint`` without Ray: each checkpoint directory is copied once
    (what Tune does when it persists a checkpoint into the trial directory)."""

    def __init__(self) -> None:
        from ray import tune

        self.tune, self.saved = tune, (tune.report, tune.get_checkpoint)
        self.keep = Path(tempfile.mkdtemp(prefix="levers-"))
        self.reports = 0

    def __enter__(self) -> QuietTune:
        self.tune.report, self.tune.get_checkpoint = self.report, lambda: None
        return self

    def __exit__(self, *_: Any) -> None:
        self.tune.report, self.tune.get_checkpoint = self.saved
        shutil.rmtree(self.keep, ignore_errors=True)

    def report(self, metrics: dict, checkpoint: Any = None) -> None:
        self.reports += 1
        if checkpoint is not None:
            shutil.copytree(checkpoint.path, self.keep / f"c{self.reports}", dirs_exist_ok=True)


def shared_config(net: str, batch: int, epochs: int) -> dict:
    return {"arch": net, "batch_size": batch, "epochs": epochs, "n_train": 1000, "n_test": 1000, "optimizer": "sgd",
            "momentum": 0.9, "aux_loss": True, "device": "cpu", "threads": 1}  # fmt: skip


def members(n: int) -> list[dict]:
    return [{"lr": LRS[i % len(LRS)], "seed": i // len(LRS)} for i in range(n)]


def time_alone(data: Any, shared: dict, ms: list[dict], checkpoint_every_epoch: bool) -> float:
    from trainables import common, get_family

    family = get_family("digit_pairs")
    save = common.save_checkpoint
    if not checkpoint_every_epoch:  # only the last epoch's checkpoint: what a time window gives a short trial
        def save_last(state: dict, metrics: dict, report: Any = None) -> None:
            if metrics.get("epoch") == shared["epochs"]:
                return save(state, metrics, report=report)
            report(metrics)

        common.save_checkpoint = save_last
    try:
        with QuietTune():
            t = time.perf_counter()
            for m in ms:
                common.run_trial({**shared, **m}, data, family=family)
            return time.perf_counter() - t
    finally:
        common.save_checkpoint = save


def time_packed(data: Any, shared: dict, ms: list[dict], pack: int) -> float:
    from trainables import get_family
    from trainables.packing import run_pack_trial

    family = get_family("digit_pairs")
    with QuietTune():
        t = time.perf_counter()
        for i in range(0, len(ms), pack):
            run_pack_trial({"__pack__": {"shared": shared, "members": ms[i : i + pack], "metric": "test_acc",
                                         "mode": "max"}}, data, family=family)  # fmt: skip
        return time.perf_counter() - t


def compute_levers(nets: list[str], batches: list[int], n: int, epochs: int, packs: list[int]) -> list[dict]:
    from trainables import get_family

    data = get_family("digit_pairs").load_data("mnist-5k", None)
    torch.set_num_threads(1)
    rows = []
    for net in nets:
        for batch in batches:
            shared, ms = shared_config(net, batch, epochs), members(n)
            per = n * epochs  # member-epochs
            row: dict[str, Any] = {"net": net, "batch_size": batch, "members": n, "epochs": epochs,
                                   "load_avg_1m": round(os.getloadavg()[0], 1)}  # fmt: skip
            time_alone(data, {**shared, "epochs": 1}, ms[:1], True)  # warm-up (allocator, first-call costs)
            time_packed(data, {**shared, "epochs": 1}, ms[:2], 2)
            first = time_alone(data, shared, ms, True)
            for p in packs:
                row[f"pack{p}_s_per_member_epoch"] = time_packed(data, shared, ms, p) / per
            row["alone_ckpt_at_end_s_per_member_epoch"] = time_alone(data, shared, ms, False) / per
            # the baseline before and after the others (the machine's load drifts): their mean
            row["alone_s_per_member_epoch"] = (first + time_alone(data, shared, ms, True)) / 2 / per
            base = row["alone_s_per_member_epoch"]
            best = min(packs, key=lambda p: row[f"pack{p}_s_per_member_epoch"])
            row["best_pack"] = best if row[f"pack{best}_s_per_member_epoch"] < base else 1
            row["speedup_best_pack"] = round(base / min(base, row[f"pack{best}_s_per_member_epoch"]), 2)
            row["speedup_ckpt_at_end"] = round(base / row["alone_ckpt_at_end_s_per_member_epoch"], 2)
            for k in list(row):
                if k.endswith("member_epoch"):
                    row[k] = round(row[k], 4)
            rows.append(row)
            print(row, flush=True)
    return rows


def tune_levers(n: int) -> dict:
    import ray

    from study.run.orchestrate import run_study

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    out = {"trials": n}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for label, pack in (("pack1", 1), ("one_pack", n)):
                sets = ["data.source=mnist-5k", "data.n_train=200", "data.n_test=200", "fixed.epochs=1",
                        "space.arch.grid=[ConvNet]", "space.batch_size.grid=[50]", f"repeats={n // 5}",
                        f"pack={pack}", "paper.results=[]", "paper.claims=[]"]  # fmt: skip
                t = time.perf_counter()
                run_study(GRID, name=label, storage=tmp, overrides=sets, report=False, out=io.StringIO())
                out[f"{label}_s"] = round(time.perf_counter() - t, 1)
                print(label, out[f"{label}_s"], flush=True)
    finally:
        ray.shutdown()
    out["tune_s_per_trial_saved_by_packing"] = round((out["pack1_s"] - out["one_pack_s"]) / (n - 1), 3)
    return out


def thread_levers(n: int, epochs: int) -> dict:
    from trainables import get_family

    data = get_family("digit_pairs").load_data("mnist-5k", None)
    shared, ms = shared_config("Siamese", 50, epochs), members(n)
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out[f"pack{n}_threads{threads}_s"] = round(time_packed(data, {**shared, "threads": threads}, ms, n), 2)
    torch.set_num_threads(1)
    out["speedup_2_threads"] = round(out[f"pack{n}_threads1_s"] / out[f"pack{n}_threads2_s"], 2)
    return out


def extrapolate(compute: list[dict], tune: dict | None) -> dict:
    """The full grid (16 groups x 50 members x 25 epochs, 2 cores) from the measured per-member-epoch
    times (each measured group standing in for its net at every batch size it was not measured at)."""
    by = {(r["net"], r["batch_size"]): r for r in compute}
    member_epochs = 50 * 25
    cores = 2
    total_alone = total_best = 0.0
    for net in ("FconnNet", "ConvNet", "parallelConv", "Siamese"):
        for batch in (25, 50, 100, 200):
            r = by.get((net, batch)) or min((x for x in compute), key=lambda x: (x["net"] != net, abs(x["batch_size"] - batch)))
            total_alone += r["alone_s_per_member_epoch"] * member_epochs
            total_best += min(r["alone_s_per_member_epoch"], *(v for k, v in r.items() if k.startswith("pack") and k.endswith("member_epoch"))) * member_epochs
    per_trial = (tune or {}).get("tune_s_per_trial_saved_by_packing", 0.0)
    return {
        "label": "ESTIMATE (extrapolated from the subset, not a measured full run)",
        "assumes": "compute splits evenly over 2 cores; Tune's per-trial cost is paid for 800 trials at pack 1 and "
                   "16 at one pack per group; the study's fixed start is left out",
        "pack1_min": round((total_alone + 800 * per_trial) / cores / 60, 1),
        "best_pack_min": round((total_best + 16 * per_trial) / cores / 60, 1),
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", nargs="+", default=["FconnNet", "Siamese"])
    p.add_argument("--batches", type=int, nargs="+", default=[25, 200])
    p.add_argument("--members", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--packs", type=int, nargs="+", default=[5, 10])
    p.add_argument("--tune-trials", type=int, default=20)
    p.add_argument("--sections", nargs="+", choices=("compute", "tune", "threads"), default=["compute", "tune", "threads"])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "grid_levers.json"))
    a = p.parse_args()
    out: dict[str, Any] = {"cpus": os.cpu_count(), "args": vars(a), "load_avg_1m_at_start": round(os.getloadavg()[0], 1)}
    if "compute" in a.sections:
        out["compute"] = compute_levers(a.nets, a.batches, a.members, a.epochs, a.packs)
    if "threads" in a.sections:
        out["threads"] = thread_levers(a.members, a.epochs)
    if "tune" in a.sections:
        out["tune"] = tune_levers(a.tune_trials)
    if "compute" in out:
        out["extrapolation"] = extrapolate(out["compute"], out.get("tune"))
    out["load_avg_1m_at_end"] = round(os.getloadavg()[0], 1)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out.get("extrapolation"), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
