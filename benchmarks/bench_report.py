"""Benchmark: build the report of a synthetic study of 10,000 trials x 100 epochs.

Target (issue "Performance"): under 30 s and under 20 MB of HTML on the reference machine
(2 shared CPU cores). Two shapes are measured:

- ``grid``: 4 nets x 5 lr x 5 batch sizes x 2 momenta = 200 configurations x 50 seeds;
- ``random``: the same grid with 1 seed each plus a log-uniform ``weight_decay``, i.e. 10,000
  configurations without repeats (binned effect plots, the largest summary table).

Run: ``.venv/bin/python benchmarks/bench_report.py`` (writes ``benchmarks/results/report.json``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.report import TABLES, write_study_outputs
from analysis.synthetic import SyntheticStudy, digit_pairs_study

LIMIT_S = 30.0
LIMIT_MB = 20.0


def write_study(study_dir: Path, study: SyntheticStudy) -> None:
    """Write the synthetic tables as the runner would (trials with b"study" metadata, epochs, spec)."""
    results = study_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(study.trials, preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"study": json.dumps(study.metadata).encode()}
    pq.write_table(table.replace_schema_metadata(meta), results / "trials.parquet")
    pq.write_table(pa.Table.from_pandas(study.epochs, preserve_index=False), results / "epochs.parquet")
    (study_dir / "spec.yaml").write_text(yaml.safe_dump(study.spec, sort_keys=False))


def shapes() -> dict[str, SyntheticStudy]:
    batch = (25, 50, 100, 200, 400)
    grid = {"momentum": [0.0, 0.9]}
    return {
        "grid": digit_pairs_study(batch_sizes=batch, extra_grid=grid, repeats=50, epochs=100, n_running=20),
        "random": digit_pairs_study(
            batch_sizes=batch,
            extra_grid=grid,
            repeats=50,
            epochs=100,
            random_space={"weight_decay": (1e-6, 1e-2)},
            n_running=20,
        ),
    }


def measure(name: str, study: SyntheticStudy, root: Path) -> dict:
    study_dir = root / name
    write_study(study_dir, study)
    start = time.perf_counter()
    report = write_study_outputs(study_dir)
    seconds = time.perf_counter() - start
    size_mb = report.stat().st_size / 1e6
    return {
        "trials": len(study.trials),
        "epoch_rows": len(study.epochs),
        "configurations": int(study.trials[study.metadata["hyperparameters"]].drop_duplicates().shape[0]),
        "build_seconds": round(seconds, 2),
        "html_mb": round(size_mb, 2),
        "output_parquet_mb": round(
            sum((study_dir / "results" / f"{t}.parquet").stat().st_size for t in TABLES) / 1e6, 2
        ),
        "ok": seconds < LIMIT_S and size_mb < LIMIT_MB,
    }


def main() -> int:
    out = Path(__file__).resolve().parent / "results" / "report.json"
    figures = {"limits": {"build_seconds": LIMIT_S, "html_mb": LIMIT_MB}, "machine": _machine()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, study in shapes().items():
            figures[name] = measure(name, study, Path(tmp))
            print(name, figures[name], flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(v.get("ok", True) for v in figures.values() if isinstance(v, dict)) else 1


def _machine() -> dict:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


if __name__ == "__main__":
    raise SystemExit(main())
