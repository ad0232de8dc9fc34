"""Benchmark: `study serve` on a storage of 200 studies, one of them 10,000 trials being written.

The storage: 199 small studies (the 200-trial digit-pair grid, 5 epochs) and one 10,000-trial
study of 100 epochs (780 MB of result.json) with 20 trials still running, all built by
`bench_report_tune.write_tune_study` (files in Tune's own format, cloned from a real one-trial run).

Timed, in process (Starlette's TestClient, no network):

- the index (``GET /api/studies``): first load over the 200 studies, then a refresh;
- the 10,000-trial study page, first load: ``/api/study/NAME``, ``/trials`` and ``/report`` (every
  result file read once, the tables and figures built);
- its refresh while the study is written: a writer appends an epoch to each running trial's
  result.json and rewrites the experiment state (as Tune does) once a second; each refresh is
  what the page polls (``/api/study/NAME``, then ``/trials`` when the version changed, and
  ``/report``, which answers with the last report built while a new one is built in the
  background); and how long the background rebuild takes;

each against ``study status NAME`` (and ``study ls``) on the same data, in the same run.
Goals: index < 1 s, first load < 10 s, refresh < 1 s. Writes ``benchmarks/results/serve.json``.

Run: ``nice .venv/bin/python benchmarks/bench_serve.py`` (a few minutes; most of it writing the study).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_report_tune as tune  # noqa: E402

GOALS = {"index_first_s": 1.0, "study_first_load_s": 10.0, "refresh_max_s": 1.0}
BIG = tune.NAME
SMALL = 199


def build(storage: Path) -> dict:
    """The 10,000-trial study and 199 copies of a small one (the template study is run once)."""
    with tempfile.TemporaryDirectory() as tmp:
        template = tune.template(Path(tmp))
    tune.template = lambda root: template  # noqa: ARG005 - one real run for every study below
    t0 = time.perf_counter()
    sizes = tune.write_tune_study(storage / BIG)
    big_s = time.perf_counter() - t0
    small = storage / "small-000"
    tune.write_tune_study(small, repeats=1, epochs=5)
    for i in range(1, SMALL):
        d = storage / f"small-{i:03d}"
        shutil.copytree(small, d)
        spec = yaml.safe_load((d / "spec.yaml").read_text())
        (d / "spec.yaml").write_text(yaml.safe_dump({**spec, "name": d.name}, sort_keys=False))
    spec = yaml.safe_load((small / "spec.yaml").read_text())
    (small / "spec.yaml").write_text(yaml.safe_dump({**spec, "name": small.name}, sort_keys=False))
    return {**sizes, "studies": SMALL + 1, "write_big_study_s": round(big_s, 1)}


class Writer(threading.Thread):
    """Appends an epoch to every running trial and rewrites the state, once a second (as Tune does)."""

    def __init__(self, study: Path) -> None:
        super().__init__(daemon=True)
        self.study, self.stop, self.rounds = study, threading.Event(), 0
        self.state_path = sorted(study.glob("experiment_state-*.json"))[-1]

    def run(self) -> None:
        state = json.loads(self.state_path.read_text())
        while not self.stop.is_set():
            for i, (trial_json, meta_json) in enumerate(state["trial_data"]):
                trial, meta = json.loads(trial_json), json.loads(meta_json)
                if trial["status"] != "RUNNING":
                    continue
                last = dict(meta["last_result"] or {"epoch": 0, "test_acc": 0.5})
                last.update(epoch=int(last.get("epoch", 0)) + 1, time_total_s=float(last.get("time_total_s", 0)) + 1.5)
                with open(self.study / trial["relative_logdir"] / "result.json", "a") as f:
                    f.write(json.dumps(last) + "\n")
                meta["last_result"] = last
                state["trial_data"][i] = [trial_json, json.dumps(meta)]
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.state_path)
            self.rounds += 1
            self.stop.wait(1.0)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def cli_seconds(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "study.cli", *args], cwd=REPO, check=True, capture_output=True, timeout=900)
    return round(time.perf_counter() - t0, 2)


def main() -> int:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--storage", help="build the storage here and keep it (reused when it is there already)")
    a = p.parse_args()
    out = REPO / "benchmarks" / "results" / "serve.json"
    if a.storage:
        storage = Path(a.storage)
        if not (storage / BIG).is_dir():
            storage.mkdir(parents=True, exist_ok=True)
            sizes = build(storage)
            (storage / "sizes.json").write_text(json.dumps(sizes))
        figures = measure(storage, json.loads((storage / "sizes.json").read_text()))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            storage = Path(tmp) / "studies"
            storage.mkdir()
            figures = measure(storage, build(storage))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0 if figures["ok"] else 1


def measure(storage: Path, sizes: dict) -> dict:
    """Every timing of the module docstring on a built storage."""
    from starlette.testclient import TestClient

    from study.serve import create_app

    if True:
        figures: dict = {"storage": sizes}
        os.sync()
        load_start = os.getloadavg()
        figures["study_status_s"] = cli_seconds("status", BIG, "--storage", str(storage))
        figures["study_ls_s"] = cli_seconds("ls", "--storage", str(storage))
        import study.serve.app  # noqa: F401 - imports are not part of a page load
        import trainables  # noqa: F401

        with TestClient(create_app(storage), base_url="http://127.0.0.1") as c:
            s, rows = timed(lambda: c.get("/api/studies").json())
            assert len(rows) == SMALL + 1
            figures["index_first_s"] = round(s, 3)
            figures["index_refresh_s"] = round(timed(lambda: c.get("/api/studies"))[0], 3)
            base = f"/api/study/{BIG}"
            t0 = time.perf_counter()
            summary = c.get(base).json()
            trials = c.get(f"{base}/trials")
            report = c.get(f"{base}/report").json()
            figures["study_first_load_s"] = round(time.perf_counter() - t0, 2)
            figures["study_first_load_bytes"] = len(trials.content) + len(json.dumps(report))
            assert len(trials.json()["rows"]) == 10_000 and report["figures"]

            writer = Writer(storage / BIG)
            writer.start()
            refreshes, version, etag, report_version = [], summary["version"], trials.headers["etag"], report["version"]
            rebuilt, t_change = [], None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                s = c.get(base).json()
                if s["version"] != version:
                    r = c.get(f"{base}/trials", headers={"if-none-match": etag})
                    etag = r.headers.get("etag", etag)
                    version = s["version"]
                    t_change = t_change or time.perf_counter()
                rep = c.get(f"{base}/report").json()
                refreshes.append(time.perf_counter() - t0)
                if rep["version"] != report_version:
                    rebuilt.append(time.perf_counter() - (t_change or t0))
                    report_version, t_change = rep["version"], None
                time.sleep(max(0.0, 1.0 - (time.perf_counter() - t0)))
            writer.stop.set()
            writer.join()
            figures["refresh_while_written"] = {
                "refreshes": len(refreshes), "writer_rounds": writer.rounds,
                "median_s": round(statistics.median(refreshes), 3), "max_s": round(max(refreshes), 3),
                "report_rebuilt_times": len(rebuilt),
                "report_rebuild_median_s": round(statistics.median(rebuilt), 1) if rebuilt else None,
            }  # fmt: skip
            figures["refresh_max_s"] = figures["refresh_while_written"]["max_s"]
        figures["load_avg_1m"] = {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)}
        figures["cpus"] = os.cpu_count()
        figures["goals"] = GOALS
        figures["ok"] = all(figures[k] < v for k, v in GOALS.items())
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
