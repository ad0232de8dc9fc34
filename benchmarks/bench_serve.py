"""Benchmark: `study ls`, `study status` and `study serve` on large storages, in two parts.

1. The index: a storage of 200 small studies (the 200-trial digit-pair grid, 5 epochs each):
   ``GET /api/studies`` first load (rows not read within ``catalog.FIRST_LOAD_WAIT_S`` come marked
   ``reading``), the time until every row is read (as the page polls), and a refresh, against
   ``study ls`` on the same storage.
2. The large study: one study of ``--repeats`` x 200 trials of 100 epochs (50: 10,000 trials,
   780 MB of result.json) with 20 trials still running: its page's first load
   (``/api/study/NAME``, ``/trials`` and ``/report``: every result file read once, the tables and
   figures built) and its refresh while written (a writer appends an epoch to each running trial's
   result.json and rewrites the experiment state once a second, as Tune does; each refresh is what
   the page polls; ``/report`` answers with the last report while a new one is built in the
   background), against ``study status NAME`` on the same data, in the same run.

Both built by `bench_report_tune.write_tune_study` (files in Tune's own format, cloned from a real
one-trial run). Goals: index first load < 1 s, study first load < 10 s, refresh < 1 s. Writes
``benchmarks/results/serve.json``.

Run: ``nice .venv/bin/python benchmarks/bench_serve.py [--repeats 50]`` (most of it writing the study).
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
SMALL = 200


def use_one_template() -> None:
    """One real one-trial run, cloned into every study below."""
    with tempfile.TemporaryDirectory() as tmp:
        template = tune.template(Path(tmp))
    tune.template = lambda root: template  # noqa: ARG005


def build_small(storage: Path) -> dict:
    """200 copies of a small study."""
    small = storage / "small-000"
    tune.write_tune_study(small, repeats=1, epochs=5)
    for i in range(1, SMALL):
        d = storage / f"small-{i:03d}"
        shutil.copytree(small, d)
        spec = yaml.safe_load((d / "spec.yaml").read_text())
        (d / "spec.yaml").write_text(yaml.safe_dump({**spec, "name": d.name}, sort_keys=False))
    spec = yaml.safe_load((small / "spec.yaml").read_text())
    (small / "spec.yaml").write_text(yaml.safe_dump({**spec, "name": small.name}, sort_keys=False))
    return {"studies": SMALL, "trials_each": 200, "epochs": 5}


def build_big(storage: Path, repeats: int) -> dict:
    """The large study: `repeats` x 200 trials of 100 epochs."""
    t0 = time.perf_counter()
    sizes = tune.write_tune_study(storage / BIG, repeats=repeats)
    return {**sizes, "write_s": round(time.perf_counter() - t0, 1)}


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
    p.add_argument(
        "--repeats", type=int, default=50, help="seeds per configuration of the large study (50: 10,000 trials)"
    )
    a = p.parse_args()
    out = REPO / "benchmarks" / "results" / "serve.json"
    figures: dict = {"load_avg_1m": {"start": round(os.getloadavg()[0], 2)}, "cpus": os.cpu_count()}
    use_one_template()
    with tempfile.TemporaryDirectory() as tmp:
        small, big = Path(tmp) / "small", Path(tmp) / "big"
        small.mkdir()
        big.mkdir()
        figures["index"] = measure_index(small, build_small(small))
        shutil.rmtree(small)
        figures["study"] = measure_study(big, build_big(big, a.repeats))
    if a.repeats != 50:
        figures["note"] = f"the large study has {a.repeats * 200} trials (--repeats {a.repeats}), not 10,000"
    figures["load_avg_1m"]["end"] = round(os.getloadavg()[0], 2)
    figures["goals"] = GOALS
    met = {
        "index_first_s": figures["index"]["first_s"] < GOALS["index_first_s"],
        "study_first_load_s": figures["study"]["first_load_s"] < GOALS["study_first_load_s"],
        "refresh_max_s": figures["study"]["refresh_while_written"]["max_s"] < GOALS["refresh_max_s"],
    }
    figures["met"], figures["ok"] = met, all(met.values())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0 if figures["ok"] else 1


def measure_index(storage: Path, sizes: dict) -> dict:
    """The index over the small studies, against `study ls`."""
    from starlette.testclient import TestClient

    from study.serve import create_app

    figures: dict = {"storage": sizes, "load_avg_1m": round(os.getloadavg()[0], 2)}
    os.sync()
    figures["study_ls_s"] = cli_seconds("ls", "--storage", str(storage))
    import study.serve.app  # noqa: F401 - imports are not part of a page load
    import trainables  # noqa: F401

    with TestClient(create_app(storage), base_url="http://127.0.0.1") as c:
        t0 = time.perf_counter()
        rows = c.get("/api/studies").json()
        figures["first_s"] = round(time.perf_counter() - t0, 3)
        assert len(rows) == SMALL
        figures["first_rows_reading"] = sum(r["status"] == "reading" for r in rows)
        while any(r["status"] == "reading" for r in rows):
            time.sleep(0.2)
            rows = c.get("/api/studies").json()
        figures["all_read_s"] = round(time.perf_counter() - t0, 2)
        figures["refresh_s"] = round(timed(lambda: c.get("/api/studies"))[0], 3)
    figures["all_read_vs_study_ls"] = round(figures["all_read_s"] / figures["study_ls_s"], 2)
    return figures


def measure_study(storage: Path, sizes: dict) -> dict:
    """The large study's page: first load and refresh while written, against `study status`."""
    from starlette.testclient import TestClient

    from study.serve import create_app

    figures: dict = {"storage": sizes, "load_avg_1m": round(os.getloadavg()[0], 2)}
    os.sync()
    figures["study_status_s"] = cli_seconds("status", BIG, "--storage", str(storage))
    with TestClient(create_app(storage), base_url="http://127.0.0.1") as c:
        base = f"/api/study/{BIG}"
        t0 = time.perf_counter()
        summary = c.get(base).json()
        trials = c.get(f"{base}/trials")
        report = c.get(f"{base}/report").json()
        figures["first_load_s"] = round(time.perf_counter() - t0, 2)
        figures["first_load_bytes"] = len(trials.content) + len(json.dumps(report))
        assert len(trials.json()["rows"]) == sizes["trials"] and report["figures"]

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
    figures["first_load_vs_study_status"] = round(figures["first_load_s"] / figures["study_status_s"], 2)
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
