"""How good is ``study validate --cost``? Its estimate against real runs, in one invocation.

Each case is estimated (`study.cost.estimate`, the calibration included, on this machine) and then
run as a user runs it (``study run ... --no-report``, a fresh process, local Ray on every core),
timed from start to exit; the ratio estimate / measured is the error (goal: within 30%).

Cases (``--cases`` picks some):

- ``quickstart``: ``search_spaces/quickstart.yaml`` as shipped (12 trials x 25 epochs);
- ``grid``: ``digit_pairs_grid.yaml`` reduced to one net (Siamese) x 2 batch sizes x 5 lr x 2 seeds,
  5 epochs (20 trials), pack 1; ``grid_pack10``: the same with ``pack=10`` (2 packs);
- ``ssm_smoke``: ``ssm_cifar.yaml --smoke`` on the bundled sample (an image family).

The machine is shared: the load average before and after each run is recorded with it.
Writes ``benchmarks/results/cost.json``.

``--shapes``: no runs; the estimates of ``digit_pairs_grid.yaml`` (on mnist-5k) and
``ssm_cifar.yaml`` as shipped under each trial shape, on this machine's CPUs and, when
``benchmarks/results/gpu.json`` holds a measured GPU, on 1 and 8 of it; written to
``benchmarks/results/cost_shapes.json`` and as a table into ``docs/guide/performance.md``
(between its ``cost-shapes`` markers).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GRID_SUBSET = ["data.source=mnist-5k", "space.arch.grid=[Siamese]", "space.batch_size.grid=[50, 100]", "repeats=2",
               "fixed.epochs=5", "paper.results=[]", "paper.claims=[]"]  # fmt: skip (the paper's rows name other nets)
CASES = {  # name -> (spec, overrides, smoke)
    "quickstart": ("quickstart.yaml", [], False),
    "grid": ("digit_pairs_grid.yaml", [*GRID_SUBSET, "pack=1"], False),
    "grid_pack10": ("digit_pairs_grid.yaml", [*GRID_SUBSET, "pack=10"], False),
    "ssm_smoke": ("ssm_cifar.yaml", ["data.source=mnist-5k"], True),
}


def measure(name: str, storage: Path) -> dict:
    from study.cost import estimate
    from study.run.orchestrate import prepare_spec

    file, sets, smoke = CASES[name]
    path = REPO / "search_spaces" / file
    t = time.perf_counter()
    est = estimate(prepare_spec(path, sets, smoke))
    calibration_s = time.perf_counter() - t
    cmd = [sys.executable, "-m", "study.cli", "run", str(path), "--name", name, "--storage", str(storage), "--no-report"]
    cmd += [x for s in sets for x in ("--set", s)] + (["--smoke"] if smoke else [])
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{name}: study run failed\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    row = {
        "case": name,
        "command": "study run " + " ".join(cmd[cmd.index("run") + 1 :]).replace(str(REPO) + "/", ""),
        "trials": est["trials"],
        "tune_trials": est["tune_trials"],
        "slots": est["slots"],
        "estimate_s": round(est["study_s"], 1),
        "measured_s": round(seconds, 1),
        "ratio": round(est["study_s"] / seconds, 2),
        "calibration_s": round(calibration_s, 1),
        "load_avg_1m": [round(load0, 1), round(os.getloadavg()[0], 1)],
        "groups": [{k: g[k] for k in ("model", "trials", "step_s", "trial_s")} for g in est["groups"]],
    }
    print({k: v for k, v in row.items() if k != "groups"}, flush=True)
    return row


CPU_SHAPES = (  # label, overrides
    ("pack auto (as shipped)", ["pack=auto", "resources.cpu=1"]),
    ("pack 1, 1 CPU per trial", ["pack=1", "resources.cpu=1"]),
    ("pack 1, 2 CPUs per trial", ["pack=1", "resources.cpu=2"]),
    ("pack 10", ["pack=10", "resources.cpu=1"]),
    ("pack 50 (a whole net x batch size group)", ["pack=50", "resources.cpu=1"]),
)
GPU_SHAPES = (
    ("pack 1, gpu 1", ["pack=1", "resources.gpu=1", "resources.cpu=1"]),
    ("pack 1, gpu 0.25", ["pack=1", "resources.gpu=0.25", "resources.cpu=1"]),
    ("pack 1, gpu 0.125", ["pack=1", "resources.gpu=0.125", "resources.cpu=1"]),
    ("pack 8, gpu 1", ["pack=8", "resources.gpu=1", "resources.cpu=1"]),
    ("pack 32, gpu 1", ["pack=32", "resources.gpu=1", "resources.cpu=1"]),
)
SHAPE_SPACES = (("digit_pairs_grid.yaml", ["data.source=mnist-5k"]), ("ssm_cifar.yaml", []))
PAGE = REPO / "docs" / "guide" / "performance.md"
MARKERS = ("<!-- cost-shapes: start (benchmarks/bench_cost.py --shapes) -->", "<!-- cost-shapes: end -->")


def shapes() -> dict:
    """Estimates of the shipped grid and ssm_cifar under each trial shape (no runs)."""
    from study import cost
    from study.run.orchestrate import prepare_spec
    from study.spec import load_spec

    rows, load0 = [], os.getloadavg()[0]
    try:
        table = json.loads(cost.GPU_TABLE.read_text()) if cost.GPU_TABLE.is_file() else None
    except json.JSONDecodeError:
        table = None
    for file, base in SHAPE_SPACES:
        path = REPO / "search_spaces" / file
        packable = load_spec(path, base).trainable == "digit_pairs"
        if file.startswith("digit_pairs"):  # CPUs: the ResNets of ssm_cifar take days per trial there
            for label, sets in CPU_SHAPES:
                est = cost.estimate(prepare_spec(path, [*base, *sets], False))
                rows.append({"space": file, "shape": label, "where": est["where"], **_summary(est)})
                print(rows[-1], flush=True)
        if table is None:
            continue
        for n in (1, 8):
            for label, sets in GPU_SHAPES:
                if not packable and not label.startswith("pack 1"):
                    continue
                est = cost.estimate(prepare_spec(path, [*base, *sets], False), gpu=table["device"], gpus=n)
                rows.append({"space": file, "shape": label, "where": est["where"], **_summary(est)})
                print(rows[-1], flush=True)
    note = None if table is not None else "no measured GPU table (benchmarks/results/gpu.json): run scripts/gpu_check.sh on a GPU, then this again"
    load = [round(load0, 1), round(os.getloadavg()[0], 1)]
    return {"cpus": os.cpu_count(), "load_avg_1m": load, "gpu": table["device"] if table else None, "note": note,
            "rows": rows}  # fmt: skip


def _summary(est: dict) -> dict:
    trial = [g["trial_s"] for g in est["groups"] if g["trial_s"] is not None]
    return {"trials": est["trials"], "tune_trials": est["tune_trials"], "at_once": est["slots"],
            "trial_s_range": [round(min(trial), 1), round(max(trial), 1)] if trial else None,
            "study_s": round(est["study_s"], 1) if est["study_s"] is not None else None}  # fmt: skip


def shapes_markdown(d: dict) -> str:
    def dur(s: float | None) -> str:
        if s is None:
            return "n/a"
        return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"

    lines = ["| space | shape | on | trials (Tune trials) | at once | per trial | study |", "|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        per = "n/a" if r["trial_s_range"] is None else " - ".join(dur(x) for x in r["trial_s_range"])
        lines.append(f"| `{r['space']}` | {r['shape']} | {r['where']} | {r['trials']} ({r['tune_trials']}) | "
                     f"{r['at_once']} | {per} | {dur(r['study_s'])} |")  # fmt: skip
    load = "/".join(f"{x:g}" for x in d.get("load_avg_1m", []))
    lines += ["", f"CPU rows: calibrated on {d['cpus']} cores at load average {load} (other jobs on the machine); "
              "pack auto and pack 50 are the same packs here, so their difference shows the calibration's noise."]  # fmt: skip
    if d["note"]:
        lines += ["", f"GPU rows: {d['note']}."]
    return "\n".join(lines) + "\n"


def write_page_block(text: str, page: Path = PAGE) -> None:
    current = page.read_text()
    start, end = current.index(MARKERS[0]) + len(MARKERS[0]), current.index(MARKERS[1])
    page.write_text(current[:start] + "\n" + text + current[end:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--shapes", action="store_true", help="estimates per trial shape only (cost_shapes.json, docs)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cost.json"))
    a = p.parse_args()
    from study import cost

    if a.shapes:
        d = shapes()
        (REPO / "benchmarks" / "results" / "cost_shapes.json").write_text(json.dumps(d, indent=1) + "\n")
        write_page_block(shapes_markdown(d))
        print(shapes_markdown(d))
        return 0

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.cases:
            rows.append(measure(name, Path(tmp)))
    out = {
        "cpus": os.cpu_count(),
        "constants": {k: getattr(cost, k) for k in ("STUDY_START_S", "TRIAL_START_S", "EPOCH_S", "EVAL_FRACTION")},
        "goal": "estimate within 30% of the measured wall time (0.7 <= ratio <= 1.3)",
        "within_goal": all(0.7 <= r["ratio"] <= 1.3 for r in rows),
        "cases": rows,
    }
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "cases"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
