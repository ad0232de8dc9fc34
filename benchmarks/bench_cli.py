"""Benchmark: how fast the read-only commands answer (`study ls`, `study status NAME`).

Builds a storage of 20 small synthetic studies in Ray Tune's layout (``spec.yaml``, the experiment
state ``experiment_state-*.json`` with 8 trials each, their ``trial_*/result.json``), then times,
in the same run and interleaved, ``python -c pass`` (the interpreter's own start-up), ``study ls``
and ``study status NAME`` as fresh processes: several repetitions each, the median kept. Ratios to
``python -c pass`` make the figures comparable across machines; the load average is recorded
beside them (the machine may be shared).

Run: ``.venv/bin/python benchmarks/bench_cli.py`` (writes ``benchmarks/results/cli.json``).
``--before-repo DIR`` also times another checkout in the same run, against the same storage (e.g.
``git worktree add /tmp/before <older commit>``), and records it under ``before``. The studies
carry ``study.json`` as `study run` writes it (an older checkout ignores the file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STUDIES, TRIALS, EPOCHS = 20, 8, 4
FACTS: dict = {}  # study.json of a digit-pair study (set by write_storage)


def write_study(root: Path, name: str, trials: int = TRIALS, epochs: int = EPOCHS) -> Path:
    """A finished synthetic digit-pair study in Tune's layout: spec, state, one result.json per trial."""
    d = root / name
    d.mkdir(parents=True)
    spec = {
        "name": name, "trainable": "digit_pairs",
        "data": {"source": "mnist-5k", "n_train": 200, "n_test": 200},
        "fixed": {"batch_size": 50, "lr": 0.01},
        "space": {"arch": {"grid": ["ConvNet", "Siamese"]}}, "repeats": trials // 2,
    }  # fmt: skip
    (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    entries = []
    for i in range(trials):
        tid = f"{name[:5]}_{i:05d}"
        config = {"n_train": 200, "n_test": 200, "batch_size": 50, "lr": 0.01, "epochs": epochs,
                  "arch": ["ConvNet", "Siamese"][i % 2], "seed": i // 2}  # fmt: skip
        rows = [{"epoch": e, "test_acc": 0.5 + 0.1 * e, "train_loss": 1.0 / e, "params": 1000, "diverged": 0,
                 "time_total_s": 0.5 * e, "trial_id": tid, "config": config} for e in range(1, epochs + 1)]  # fmt: skip
        (d / f"trial_{tid}").mkdir()
        (d / f"trial_{tid}" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        trial = {"trial_id": tid, "status": "TERMINATED", "config": config, "relative_logdir": f"trial_{tid}"}
        meta = {"num_failures": 0, "last_result": rows[-1], "error_filename": None}
        entries.append([json.dumps(trial), json.dumps(meta)])
    (d / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": entries}))
    (d / "study.json").write_text(json.dumps(FACTS))
    return d


def write_storage(root: Path, studies: int = STUDIES) -> list[str]:
    global FACTS
    sys.path.insert(0, str(REPO))
    from study.results.facts import family_facts

    FACTS = family_facts("digit_pairs")
    names = [f"study{i:02d}" for i in range(studies)]
    for name in names:
        write_study(root, name)
    return names


def _time(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return elapsed


def measure(repo: Path, storage: Path, name: str, reps: int) -> dict[str, float]:
    """Median seconds of each command over `reps` interleaved repetitions (one warm-up each)."""
    py = sys.executable
    cmds = {
        "python_pass": [py, "-c", "pass"],
        "study_ls": [py, "-m", "study.cli", "ls", "--storage", str(storage)],
        "study_status": [py, "-m", "study.cli", "status", name, "--storage", str(storage)],
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for cmd in cmds.values():
        _time(cmd, repo)  # warm-up: the page cache, .pyc files
    for _ in range(reps):
        for k, cmd in cmds.items():
            times[k].append(_time(cmd, repo))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=REPO, help="checkout whose `study` is timed (default: this one)")
    p.add_argument("--before-repo", type=Path, help="an older checkout, timed in the same run for comparison")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cli.json")
    a = p.parse_args(argv)
    before = None
    with tempfile.TemporaryDirectory() as tmp:
        names = write_storage(Path(tmp))
        load_before = os.getloadavg()
        med = measure(a.repo.resolve(), Path(tmp), names[0], a.reps)
        if a.before_repo:
            before = measure(a.before_repo.resolve(), Path(tmp), names[0], max(3, a.reps // 2))
        load_after = os.getloadavg()
    result = {
        "studies": STUDIES, "trials_per_study": TRIALS, "epochs": EPOCHS, "repetitions": a.reps,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "ratio_to_python_pass": {k: round(v / med["python_pass"], 2) for k, v in med.items() if k != "python_pass"},
        "loadavg_1m": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpus": os.cpu_count(),
        "repo": str(a.repo),
    }  # fmt: skip
    if before:
        result["before"] = {
            "repo": str(a.before_repo),
            "median_s": {k: round(v, 4) for k, v in before.items()},
            "ratio_to_python_pass": {k: round(v / before["python_pass"], 2) for k, v in before.items() if k != "python_pass"},
            "speedup": {k: round(before[k] / med[k], 1) for k in med if k != "python_pass"},
        }  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
