"""Studies in Ray Tune's layout, written in code (no Ray): spec.yaml, experiment_state-*.json and one
``result.json`` per trial, with the metric values of `analysis.synthetic`'s digit-pair grid; a
running study can be grown by a few epochs, as Tune appends to its files."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis.synthetic import digit_pairs_study

STATE = "experiment_state-2026-01-01_00-00-00.json"


def _row(tid: str, e: dict, config: dict, params: int) -> dict:
    row = {k: float(v) for k, v in e.items() if k not in ("trial_id", "epoch", "diverged") and v == v}
    return row | {"epoch": int(e["epoch"]), "diverged": int(e["diverged"]), "params": params, "trial_id": tid,
                  "training_iteration": int(e["epoch"]), "done": False, "config": config}  # fmt: skip


def write_tune_study(storage: Path, name: str, *, repeats: int = 2, epochs: int = 3, n_running: int = 0,
                     archs: tuple = ("Siamese", "ConvNet"), lrs: tuple = (0.01, 0.1), batch_sizes: tuple = (50,),
                     description: str | None = None, seed: int = 0) -> Path:  # fmt: skip
    """A study directory `storage/name` in Tune's layout; returns it."""
    study = digit_pairs_study(archs=archs, lrs=lrs, batch_sizes=batch_sizes, repeats=repeats, epochs=epochs,
                              n_running=n_running, p_diverged=0.0, p_error=0.1, name=name, seed=seed)  # fmt: skip
    d = storage / name
    d.mkdir(parents=True)
    spec = {**study.spec, "name": name, "data": {"source": "mnist-5k"}}
    spec["fixed"] = {**spec["fixed"], "epochs": epochs}
    if description is not None:
        spec["description"] = description
    grid = {k: v["grid"] for k, v in spec["space"].items()}
    paper = dict(spec.get("paper") or {})
    paper["results"] = [r for r in paper.get("results", [])  # paper rows the grid can select
                        if all(v in grid.get(k, [v]) for k, v in r["where"].items())]  # fmt: skip
    spec["paper"] = paper
    (d / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    hp = study.metadata["hyperparameters"]
    groups = dict(tuple(study.epochs.groupby("trial_id", sort=False)))
    entries = []
    for t in study.trials.to_dict("records"):
        tid = str(t["trial_id"])
        config = {k: t[k] for k in hp} | {"seed": int(t["seed"]), "epochs": epochs}
        params = int(t.get("params") or 0)
        ep = groups.get(t["trial_id"])
        rows = [_row(tid, e, config, params) for e in ep.to_dict("records")] if ep is not None else []
        (d / f"trial_{tid}").mkdir()
        (d / f"trial_{tid}" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        status = t["status"]
        if status == "ERROR":
            (d / f"trial_{tid}" / "error.txt").write_text("Traceback ...\nRuntimeError: synthetic failure\n")
        entries.append(_entry(tid, status, config, rows[-1] if rows else {}))
    _write_state(d, entries)
    return d


def _entry(tid: str, status: str, config: dict, last: dict) -> list[str]:
    trial = {"trial_id": tid, "status": status, "config": config, "relative_logdir": f"trial_{tid}"}
    meta = {"num_failures": 0, "last_result": last, "error_filename": "error.txt" if status == "ERROR" else None}
    return [json.dumps(trial), json.dumps(meta)]


def _write_state(d: Path, entries: list) -> None:
    tmp = d / f".{STATE}.tmp"
    tmp.write_text(json.dumps({"trial_data": entries}))
    os.replace(tmp, d / STATE)


def grow(d: Path, epochs: int = 1, finish: int = 0) -> int:
    """Append `epochs` epochs to every RUNNING trial of study `d` (as Tune appends result rows) and mark
    the first `finish` of them TERMINATED when they reach the last epoch; returns rows appended."""
    state = json.loads((d / STATE).read_text())
    spec = yaml.safe_load((d / "spec.yaml").read_text())
    n_epochs = spec["fixed"]["epochs"]
    appended, finished = 0, 0
    new = []
    for trial_json, meta_json in state["trial_data"]:
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        if trial["status"] in ("RUNNING", "PENDING"):
            path = d / trial["relative_logdir"] / "result.json"
            last = meta["last_result"] or {"epoch": 0, "test_acc": 0.5, "train_loss": 1.0, "test_loss": 1.1}
            with open(path, "a") as f:
                for _ in range(epochs):
                    e = int(last.get("epoch", 0)) + 1
                    if e > n_epochs:
                        break
                    last = {**last, "epoch": e, "test_acc": min(0.99, float(last.get("test_acc", 0.5)) + 0.05),
                            "train_loss": float(last.get("train_loss", 1.0)) * 0.8, "time_total_s": 1.5 * e,
                            "diverged": 0, "trial_id": trial["trial_id"], "config": trial["config"]}  # fmt: skip
                    f.write(json.dumps(last) + "\n")
                    appended += 1
            trial["status"] = "RUNNING"
            if int(last["epoch"]) >= n_epochs and finished < finish:
                trial["status"] = "TERMINATED"
                finished += 1
            meta["last_result"] = last
        new.append([json.dumps(trial), json.dumps(meta)])
    _write_state(d, new)
    return appended


def tree_hash(root: Path) -> dict[str, str]:
    """{relative path: sha256 of the bytes, or '->target' for a link} of every file under `root`."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "->" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """A storage with a complete study, a running one, damaged ones and hostile strings."""
    root = tmp_path / "studies"
    root.mkdir()
    write_tune_study(root, "done", lrs=(0.005, 0.1))  # the Siamese paper row selects lr 0.005, batch 50
    write_tune_study(root, "live", n_running=3, epochs=4, seed=1)
    # damaged: a truncated state file, a study without its state although trials have results
    bad = write_tune_study(root, "truncated", seed=2)
    (bad / STATE).write_bytes((bad / STATE).read_bytes()[:50])
    gone = write_tune_study(root, "no-state", seed=3)
    (gone / STATE).unlink()
    # a deleted trial directory of a finished study
    lost = write_tune_study(root, "lost-trial", seed=4)
    victim = sorted(lost.glob("trial_*"))[0]
    for f in victim.iterdir():
        f.unlink()
    victim.rmdir()
    # hostile strings: a study name and a description that are markup and a javascript: URL
    write_tune_study(root, "<script>alert(1)", seed=5)  # refused by the spec checker: a broken row
    write_tune_study(root, "hostile", description="<script>alert(2)</script><img src=x onerror=alert(3)>", seed=7)
    write_tune_study(root, "javascript:alert(3)", seed=6)
    return root


@pytest.fixture(autouse=True)
def _index_waits_for_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """The index answers with every row read (a test of ``reading`` rows sets the wait itself)."""
    from study.serve import catalog

    monkeypatch.setattr(catalog, "FIRST_LOAD_WAIT_S", 120.0)
