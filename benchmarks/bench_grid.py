"""Benchmark: the seed-002 grid (``digit_pairs_grid.yaml`` on mnist-5k) end to end, before and
after trial packing (issue 13).

Each setting is one real ``study run`` (a fresh process, local Ray on every core, report
included), timed from start to exit: ``pack=1`` is today's platform, the others pack the grid's
trials (``pack=N``: the 5 lr x seeds members of each net x batch size group, N at a time). The
settings run one after the other in the same invocation, so their ratio is measured under the
same (shared-machine) load; the load average is recorded before and after each.

Results must not change beyond noise: per net x lr x batch size, the mean final test accuracy over
seeds of every setting is compared with the first (largest absolute difference reported; packed
SGD equals unpacked training to float rounding, see tests/trainables/test_shapes.py).

Run: ``.venv/bin/python benchmarks/bench_grid.py`` (the whole grid: 800 trials per setting) or
``--repeats 2`` for a 160-trial subset; ``--pack 1 auto`` chooses the settings (``auto``: the spec
as shipped, no ``pack`` override, which is what a user runs). Writes ``benchmarks/results/grid.json``.

The equality check (``equality`` in the output), per setting against the baseline: trials are
paired by (net, lr, batch size, seed); for every grid cell a paired t-test of final test accuracy
(scipy), Holm-adjusted over the cells, must find no cell that differs (adjusted p < 0.05), and the
best (lr, batch size) per net by mean accuracy must be the same; where it moved, the baseline's
own gap between the two settings (Welch) tells a near tie from a changed result. Pairs without a
final accuracy on one side are counted, not compared (a diverged trial that reports one is compared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "search_spaces" / "digit_pairs_grid.yaml"


def run(storage: Path, name: str, pack: str, repeats: int | None, epochs: int | None) -> dict:
    sets = ["data.source=mnist-5k"] + ([] if pack == "auto" else [f"pack={pack}"])
    if repeats:
        sets.append(f"repeats={repeats}")
    if epochs:
        sets.append(f"fixed.epochs={epochs}")
    cmd = [sys.executable, "-m", "study.cli", "run", str(SPACE), "--name", name, "--storage", str(storage)]
    cmd += [x for s in sets for x in ("--set", s)]
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{name}: study run failed\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    trials = pd.read_parquet(storage / name / "results" / "trials.parquet")
    return {
        "setting": f"pack={pack}",
        "trials": len(trials),
        "statuses": trials["status"].value_counts().to_dict(),
        "seconds": round(seconds, 1),
        "minutes": round(seconds / 60, 2),
        "load_avg_1m": [round(load0, 1), round(os.getloadavg()[0], 1)],
        "_trials": trials,
    }


def equality(ref: pd.DataFrame, new: pd.DataFrame, key: list[str]) -> dict:
    """Paired per-seed comparison of two runs of the same grid (see the module docstring)."""
    from scipy import stats

    from analysis.stats import holm

    pair = [*key, "seed"]
    both = ref[[*pair, "final_test_acc"]].merge(new[[*pair, "final_test_acc"]], on=pair, suffixes=("_ref", "_new"))
    finite = both.dropna(subset=["final_test_acc_ref", "final_test_acc_new"])
    diff = (finite["final_test_acc_new"] - finite["final_test_acc_ref"]).abs()
    p_values = []
    for _, cell in finite.groupby(key):
        d = cell["final_test_acc_new"] - cell["final_test_acc_ref"]
        p_values.append(
            1.0
            if len(d) < 2 or float(d.abs().max()) == 0.0 or float(d.std()) == 0.0
            else float(stats.ttest_rel(cell["final_test_acc_new"], cell["final_test_acc_ref"]).pvalue)
        )
    m = len(p_values)
    adjusted = [float(q) for q in holm(p_values)] if p_values else []

    def best(frame: pd.DataFrame) -> dict:
        means = frame.groupby(key)["final_test_acc"].mean().reset_index()
        top = means.loc[means.groupby("arch")["final_test_acc"].idxmax()]
        return {r.arch: f"lr={r.lr} batch_size={int(r.batch_size)}" for r in top.itertuples()}

    best_ref, best_new = best(ref), best(new)
    # where the best setting moved: how far apart the two settings are in the baseline itself (a
    # near tie there means the move is within noise, not a changed result)
    moved = {}
    setting = "lr=" + ref["lr"].astype(str) + " batch_size=" + ref["batch_size"].astype(int).astype(str)
    for net in sorted(set(best_ref) & set(best_new)):
        if best_ref[net] != best_new[net]:
            of = [
                ref[(ref["arch"] == net) & (setting == best[net])]["final_test_acc"].dropna()
                for best in (best_ref, best_new)
            ]
            moved[net] = {
                "baseline_gap": round(float(of[0].mean() - of[1].mean()), 4),
                "baseline_welch_p": round(float(stats.ttest_ind(of[0], of[1], equal_var=False).pvalue), 4),
            }
    return {
        "pairs": len(both),
        "pairs_compared": len(finite),
        "pairs_without_a_final_accuracy": len(both) - len(finite),
        "identical_pairs": int((diff == 0).sum()),
        "max_abs_diff_per_trial": round(float(diff.max()), 4),
        "median_abs_diff_per_trial": round(float(diff.median()), 4),
        "cells": m,
        "cells_differing_holm_0.05": sum(q < 0.05 for q in adjusted),
        "min_holm_p": round(min(adjusted), 4) if adjusted else None,
        "best_per_net_baseline": best_ref,
        "best_per_net": best_new,
        "best_per_net_same": best_ref == best_new,
        "best_moved_in_baseline_terms": moved,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--pack", nargs="+", default=["1", "auto"], help="pack sizes, or auto for the spec as shipped")
    p.add_argument("--repeats", type=int, default=None, help="seeds (default: the spec's 10)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the spec's 25)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "grid.json"))
    p.add_argument(
        "--baseline",
        default=None,
        help="a *_trials.csv of an earlier run to compare accuracies with (default: the first setting)",
    )
    a = p.parse_args()
    rows = []
    out_path = Path(a.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    key = ["arch", "lr", "batch_size"]
    with tempfile.TemporaryDirectory() as tmp:
        for pack in a.pack:
            if pack != "auto" and not pack.isdigit():
                raise SystemExit(f"--pack: {pack!r} is neither a whole number nor auto")
            rows.append(run(Path(tmp), f"grid-pack{pack}", pack, a.repeats, a.epochs))
            print({k: v for k, v in rows[-1].items() if k != "_trials"}, flush=True)
            # every trial's final accuracy, so that runs made apart can be compared (--baseline)
            cols = [c for c in [*key, "repeat", "seed", "final_test_acc"] if c in rows[-1]["_trials"]]
            rows[-1]["_trials"][cols].to_csv(out_path.with_name(f"{out_path.stem}_pack{pack}_trials.csv"), index=False)
    ref_trials = pd.read_csv(a.baseline) if a.baseline else rows[0]["_trials"]
    ref = ref_trials.groupby(key)["final_test_acc"].mean()
    for r in rows:
        trials = r.pop("_trials")
        mean = trials.groupby(key)["final_test_acc"].mean()
        r["max_abs_diff_mean_test_acc_vs_baseline"] = round(float((mean - ref).abs().max()), 4)
        r["equality"] = equality(ref_trials, trials, key)
        r["speedup_vs_first"] = round(rows[0]["seconds"] / r["seconds"], 2)
    out = {"space": str(SPACE.relative_to(REPO)), "data": "mnist-5k", "cpus": os.cpu_count(),
           "repeats": a.repeats or 10, "epochs": a.epochs or 25, "settings": rows}  # fmt: skip
    if a.baseline:
        out["baseline"] = a.baseline
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
