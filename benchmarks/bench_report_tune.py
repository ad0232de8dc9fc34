"""Benchmark: `study report` end to end on a study directory as Ray Tune writes it (issue 13).

`bench_report.py` starts from the tables; this one starts where a real study leaves off:
10,000 trial directories ``trial_<id>/`` with their ``result.json`` (100 epochs each, every
row with Ray's own keys and the trial's config, as Tune writes them), the experiment state
(``experiment_state-*.json``: one entry per trial with its config, status and last result) and
``spec.yaml``. The files are cloned from a real one-trial study run first on the local Ray (so
their format is Tune's, not ours), with the metric values of `analysis.synthetic`'s digit-pair
grid (4 nets x 5 lr x 5 batch sizes x 2 momenta x 50 seeds, some diverged, errored and running).

Timed: ``study report NAME --storage DIR`` in a fresh process (imports, reading every
result.json, both Parquet tables, the summary tables and the HTML). Goal: < 30 s, HTML < 20 MB.

Run: ``.venv/bin/python benchmarks/bench_report_tune.py`` (writes ``benchmarks/results/report_tune.json``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LIMIT_S, LIMIT_MB = 30.0, 20.0
NAME = "bench_tune"


def template(root: Path) -> tuple[dict, list, dict, dict]:
    """A real one-trial, one-epoch study: (spec, experiment state, trial entry, result row)."""
    spec = {
        "name": "template", "trainable": "digit_pairs",
        "data": {"source": "mnist-5k", "n_train": 100, "n_test": 100},
        "fixed": {"epochs": 1, "batch_size": 50, "optimizer": "sgd"},
        "space": {"arch": {"grid": ["Siamese"]}}, "repeats": 1,
    }  # fmt: skip
    path = root / "template.yaml"
    path.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "study.cli", "run", str(path), "--storage", str(root / "t"), "--no-report"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=900)
    d = root / "t" / "template"
    state = json.loads(sorted(d.glob("experiment_state-*.json"))[-1].read_text())
    (row,) = [json.loads(ln) for ln in next(d.glob("trial_*/result.json")).read_text().splitlines() if ln.strip()]
    return spec, state, state["trial_data"][0], row


def write_tune_study(study_dir: Path, repeats: int = 50, epochs: int = 100) -> dict:
    """Clone the template into a 10,000-trial study with synthetic metrics; returns its sizes."""
    from analysis.synthetic import digit_pairs_study

    with tempfile.TemporaryDirectory() as tmp:
        spec_t, state, (trial_json, meta_json), row_t = template(Path(tmp))
    study = digit_pairs_study(
        batch_sizes=(25, 50, 100, 200, 400), extra_grid={"momentum": [0.0, 0.9]}, repeats=repeats, epochs=epochs,
        n_running=20,
    )  # fmt: skip
    trials, per_epoch = study.trials, study.epochs
    hp = study.metadata["hyperparameters"]
    spec = {**study.spec, "name": NAME, "data": {"source": "mnist-5k"}}  # a source `study` accepts
    spec["fixed"] = {**spec["fixed"], "epochs": epochs}
    study_dir.mkdir(parents=True)
    (study_dir / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    trial_t, meta_t = json.loads(trial_json), json.loads(meta_json) if isinstance(meta_json, str) else meta_json
    metric_cols = [c for c in per_epoch.columns if c not in ("trial_id", "epoch", "time_total_s", "diverged")]
    groups = dict(tuple(per_epoch.groupby("trial_id", sort=False)))
    entries, n_rows, n_bytes = [], 0, 0
    for t in trials.itertuples(index=False):
        t = t._asdict()
        tid = str(t["trial_id"])
        config = {k: t[k] for k in hp if k in t} | {"seed": int(t["seed"]), "epochs": epochs}
        lines = []
        ep = groups.get(t["trial_id"])
        last = {}
        if ep is not None:
            for i, e in enumerate(ep.itertuples(index=False)):
                e = e._asdict()
                row = {k: v for k, v in row_t.items() if k not in ("config",)}
                row.update({m: float(e[m]) for m in metric_cols if e[m] == e[m]})
                row.update({
                    "epoch": int(e["epoch"]), "diverged": int(e["diverged"]), "params": int(t.get("params") or 0),
                    "training_iteration": i + 1, "trial_id": tid, "time_total_s": float(e["time_total_s"]),
                    "checkpoint_dir_name": f"checkpoint_{i:06d}", "config": config, "iterations_since_restore": i + 1,
                })  # fmt: skip
                lines.append(json.dumps(row))
                last = row
        trial_dir = study_dir / f"trial_{tid}"
        trial_dir.mkdir()
        text = "\n".join(lines) + ("\n" if lines else "")
        (trial_dir / "result.json").write_text(text)
        n_rows, n_bytes = n_rows + len(lines), n_bytes + len(text)
        status = {"DIVERGED": "TERMINATED", "STOPPED": "TERMINATED"}.get(t["status"], t["status"])
        if status == "ERROR":
            (trial_dir / "error.txt").write_text("Traceback ...\nRuntimeError: synthetic failure\n")
        trial = {**trial_t, "trial_id": tid, "status": status, "config": config, "relative_logdir": f"trial_{tid}"}
        meta = {**meta_t, "last_result": last, "error_filename": "error.txt" if status == "ERROR" else None}
        entries.append([json.dumps(trial), json.dumps(meta)])
    state["trial_data"] = entries
    (study_dir / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    (study_dir / "spec_file.txt").write_text("search_spaces/synthetic.yaml\n")
    return {"trials": len(entries), "result_rows": n_rows, "result_json_mb": round(n_bytes / 1e6, 1)}


def phases(study_dir: Path) -> dict:
    """In-process split of the same work: reading the trials (collect), the two tables, the report."""
    from analysis.report import write_study_outputs
    from study.results import collect, write_results
    from study.spec import load_spec

    spec = load_spec(study_dir / "spec.yaml")
    t = [time.perf_counter()]
    trials, epochs = collect(study_dir, spec, parallel=True)
    t.append(time.perf_counter())
    write_results(study_dir, spec, trials, epochs)
    t.append(time.perf_counter())
    write_study_outputs(study_dir)
    t.append(time.perf_counter())
    return {"collect_s": round(t[1] - t[0], 1), "write_tables_s": round(t[2] - t[1], 1),
            "report_s": round(t[3] - t[2], 1)}  # fmt: skip


def main() -> int:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=50, help="seeds per configuration (50: 10,000 trials)")
    a = p.parse_args()
    out = REPO / "benchmarks" / "results" / ("report_tune.json" if a.repeats == 50 else f"report_tune_{a.repeats}.json")
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        t0 = time.perf_counter()
        sizes = write_tune_study(storage / NAME, repeats=a.repeats)
        written_s = time.perf_counter() - t0
        os.sync()  # a study's files are on disk before anyone reports on it: no writeback during the timing
        load = os.getloadavg()
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "study.cli", "report", NAME, "--storage", str(storage)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-3000:])
            return 1
        html = storage / NAME / "results" / "report.html"
        figures = {
            **sizes,
            "write_study_s": round(written_s, 1),
            "study_report_s": round(seconds, 1),
            "html_mb": round(html.stat().st_size / 1e6, 2),
            "load_avg_1m_at_start": round(load[0], 1),
            "phases_in_process": phases(storage / NAME),
            "cpus": os.cpu_count(),
            "limits": {"study_report_s": LIMIT_S, "html_mb": LIMIT_MB},
        }
        figures["ok"] = figures["study_report_s"] < LIMIT_S and figures["html_mb"] < LIMIT_MB
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
