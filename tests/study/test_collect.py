"""`study.results.tables.collect` builds its tables column by column (10,000 trials in seconds).

Checked here against a row-by-row oracle (the plain reading of the rules, written out below) on a
study directory in Tune's layout with every awkward case a real one has: a resumed trial that
reported epochs again, a line cut by a crash in the middle of a file, NaN and infinite values, a
metric some trials have and others not, a metric first reported in a later epoch, booleans and
strings that are not metrics, a failed trial without results, a running one, a packed one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from study.results.rows import NOT_METRIC_KEYS
from study.results.tables import collect, hyperparameter_columns
from study.results.trials import final_status
from study.spec import load_spec
from tests.conftest import write_spec

NAN, INF = float("nan"), float("inf")


def _row(tid: str, epoch: int, config: dict, **metrics: Any) -> dict:
    return {"epoch": epoch, "params": 100, "lr": config["lr"], "diverged": 0, **metrics,
            "time_total_s": 0.5 * epoch, "trial_id": tid, "done": False, "should_checkpoint": True,
            "hostname": "h", "config": config, "training_iteration": epoch}  # fmt: skip


def _write_study(root: Path) -> tuple[Path, Any]:
    study = root / "s"
    study.mkdir(parents=True)
    spec_path = write_spec(study / "spec.yaml", name="s", fixed={"epochs": 4, "batch_size": 50, "lr": 0.01})
    trials: dict[str, tuple[str, list[str]]] = {}

    def add(tid: str, status: str, lines: list[str] | None, arch: str = "ConvNet", seed: int = 0) -> None:
        trials[tid] = (status, lines if lines is not None else [])
        if lines is not None:
            (study / f"trial_{tid}").mkdir()
            (study / f"trial_{tid}" / "result.json").write_text("".join(f"{ln}\n" for ln in lines))

    def cfg(arch: str, seed: int) -> dict:
        return {"arch": arch, "seed": seed, "epochs": 4, "batch_size": 50, "lr": 0.01}

    def rows(tid: str, arch: str, seed: int, epochs: range, **per_epoch: Any) -> list[str]:
        return [json.dumps(_row(tid, e, cfg(arch, seed), **{k: f(e) for k, f in per_epoch.items()})) for e in epochs]

    acc = {"test_acc": lambda e: 0.5 + 0.1 * e, "train_loss": lambda e: 1.0 / e}
    add("a", "TERMINATED", rows("a", "ConvNet", 0, range(1, 5), **acc))
    # resumed after epoch 2: epochs 3-4 reported twice (the later report counts); a cut line in between
    first = rows("b", "Siamese", 0, range(1, 4), **acc, test_digit_acc=lambda e: 0.2 * e)
    again = rows("b", "Siamese", 0, range(3, 5), test_acc=lambda e: 0.9 + 0.01 * e, train_loss=lambda e: 0.1,
                 test_digit_acc=lambda e: 0.3)  # fmt: skip
    add("b", "TERMINATED", [*first, first[-1][: len(first[-1]) // 2], *again], arch="Siamese")
    # NaN and inf values; a metric first reported at epoch 3; a boolean and a string that are not metrics
    odd = rows("c", "ConvNet", 1, range(1, 5), test_acc=lambda e: [0.6, NAN, 0.7, INF][e - 1],
               train_loss=lambda e: [NAN, 2.0, -INF, 1.0][e - 1], flag=lambda e: True, note=lambda e: "x")  # fmt: skip
    odd = [json.dumps({**json.loads(ln), **({"late_metric": 3.0 * i} if i >= 2 else {})}) for i, ln in enumerate(odd)]
    add("c", "TERMINATED", odd, seed=1)
    add("d", "ERROR", None)  # failed before any result
    (study / "trial_d").mkdir()
    (study / "trial_d" / "error.txt").write_text("Traceback ...\nRuntimeError: boom\n")
    add("e", "RUNNING", rows("e", "Siamese", 1, range(1, 3), **acc), arch="Siamese", seed=1)
    add("f", "TERMINATED", rows("f", "ConvNet", 2, range(1, 3), **acc), seed=2)  # ran 2 of 4 epochs: missing
    add("g", "PENDING", None)
    add("h", "TERMINATED", [json.dumps({"epoch": 1, "test_acc": 1})], seed=3)  # an int metric, no config echo

    configs = {"a": cfg("ConvNet", 0), "b": cfg("Siamese", 0), "c": cfg("ConvNet", 1), "d": cfg("ConvNet", 2),
               "e": cfg("Siamese", 1), "f": cfg("ConvNet", 2), "g": cfg("Siamese", 2), "h": cfg("ConvNet", 3)}  # fmt: skip
    entries = []
    for tid, (status, _) in trials.items():
        trial = {"trial_id": tid, "status": status, "config": configs[tid], "relative_logdir": f"trial_{tid}"}
        meta = {"num_failures": 1 if tid == "b" else 0, "last_result": {},
                "error_filename": "error.txt" if status == "ERROR" else None}  # fmt: skip
        entries.append([json.dumps(trial), json.dumps(meta)])
    (study / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": entries}))
    return study, load_spec(spec_path)


def _oracle(study: Path, spec: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rules, one row at a time: last report of each epoch; metrics = numeric non-Ray keys; final =
    last finite value, best = max/min of the finite values by the direction the family declares (the
    spec's mode for its metric if undeclared; no best for other undeclared metrics); status and
    missing data as `collect`."""
    from study.results.state import read_jsonl
    from study.results.trials import error_message, missing_data, trials_from_state
    from trainables import get_family

    family = get_family(spec.trainable)

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    trial_rows, epoch_rows = [], []
    for t in trials_from_state(study):
        trial_dir = study / t["logdir"]
        by_epoch = {int(r["epoch"]): r for r in read_jsonl(trial_dir / "result.json") if "epoch" in r}
        epochs = [by_epoch[e] for e in sorted(by_epoch)]
        names = sorted({k for r in epochs for k, v in r.items() if k not in NOT_METRIC_KEYS and number(v)})
        for r in epochs:
            epoch_rows.append({"trial_id": t["trial_id"], "epoch": int(r["epoch"]),
                               **{m: float(r[m]) if number(r.get(m)) else math.nan for m in names},
                               "time_total_s": float(r["time_total_s"]) if number(r.get("time_total_s")) else math.nan,
                               "diverged": int(r.get("diverged", 0) or 0)})  # fmt: skip
        last = epochs[-1] if epochs else {}
        status = final_status(t["status"], last, t["config"]["epochs"], scheduler=False)
        missing = missing_data(trial_dir, t["status"], epochs, t["config"]["epochs"], status)
        status = "MISSING" if missing and status != "ERROR" else status
        row: dict[str, Any] = {"trial_id": t["trial_id"], "status": status}
        row |= {c: t["config"].get(c) for c in hyperparameter_columns(spec)}
        row["seed"] = t["config"].get("seed")
        for m in names:
            vals = [r[m] for r in epochs if number(r.get(m)) and math.isfinite(r[m])]
            row[f"final_{m}"] = vals[-1] if vals else math.nan
            declared = family.metric(m)
            direction = declared.direction if declared else spec.mode if m == spec.metric else None
            if direction is not None:
                row[f"best_{m}"] = (min if direction == "min" else max)(vals) if vals else math.nan
        row |= {"params": last.get("params"), "epochs_done": int(last.get("epoch", 0)) if last else 0,
                "wall_time_s": float(last["time_total_s"]) if number(last.get("time_total_s")) else (math.nan if last else 0.0),
                "num_failures": int(t["meta"].get("num_failures", 0) or 0),
                "error": missing or (error_message(trial_dir, t["meta"]) if status == "ERROR" else None)}  # fmt: skip
        trial_rows.append(row)
    return pd.DataFrame(sorted(trial_rows, key=lambda r: r["trial_id"])), pd.DataFrame(epoch_rows)


def test_collect_matches_the_row_by_row_rules(tmp_path: Path) -> None:
    study, spec = _write_study(tmp_path)
    trials, epochs = collect(study, spec)
    want_trials, want_epochs = _oracle(study, spec)
    pd.testing.assert_frame_equal(trials, want_trials)
    pd.testing.assert_frame_equal(epochs, want_epochs)

    t = trials.set_index("trial_id")
    # the resumed trial: its second reports of epochs 3-4 count, the cut line is skipped
    b = epochs[epochs["trial_id"] == "b"]
    assert list(b["epoch"]) == [1, 2, 3, 4] and list(b["test_acc"]) == pytest.approx([0.6, 0.7, 0.93, 0.94])
    assert t.loc["b", "final_test_acc"] == pytest.approx(0.94) and t.loc["b", "final_test_digit_acc"] == 0.3
    # non-finite values are kept per epoch and skipped by final/best
    assert t.loc["c", "final_test_acc"] == 0.7 and t.loc["c", "best_test_acc"] == 0.7
    assert t.loc["c", "final_train_loss"] == 1.0 and t.loc["c", "best_train_loss"] == 1.0
    assert t.loc["c", "final_late_metric"] == 9.0 and math.isnan(epochs.set_index(["trial_id", "epoch"]).loc[("c", 1), "late_metric"])
    assert "final_flag" not in trials and "final_note" not in trials and "flag" not in epochs
    # a metric only the two-branch trials have is NaN elsewhere
    assert math.isnan(t.loc["a", "final_test_digit_acc"])
    assert t.loc["d", "status"] == "ERROR" and "boom" in t.loc["d", "error"]
    assert t.loc["f", "status"] == "MISSING" and "epochs 3-4 of 4 missing" in t.loc["f", "error"]
    assert t.loc["e", "status"] == "RUNNING" and t.loc["g", "epochs_done"] == 0
    assert epochs["epoch"].dtype == "int64" and epochs["test_acc"].dtype == "float64"
    assert list(epochs.columns[:2]) == ["trial_id", "epoch"]


def test_collect_of_a_study_without_results(tmp_path: Path) -> None:
    study = tmp_path / "s"
    study.mkdir()
    spec = load_spec(write_spec(study / "spec.yaml", name="s"))
    trial = {"trial_id": "x", "status": "PENDING", "config": {"arch": "ConvNet", "seed": 0}, "relative_logdir": "trial_x"}
    state = {"trial_data": [[json.dumps(trial), json.dumps({})]]}
    (study / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    trials, epochs = collect(study, spec)
    assert list(trials["trial_id"]) == ["x"] and trials.loc[0, "epochs_done"] == 0
    assert epochs.empty and {"trial_id", "epoch"} <= set(epochs.columns)


def test_collect_in_worker_processes_is_the_same(tmp_path: Path, monkeypatch) -> None:
    """A large study's result files are parsed by worker processes (spawned): same tables."""
    import study.results.rows as tr

    study, spec = _write_study(tmp_path)
    serial = collect(study, spec)
    monkeypatch.setattr(tr, "PARALLEL_MIN_TRIALS", 1)  # every study counts as large
    calls = []
    from concurrent import futures

    class Spy(futures.ProcessPoolExecutor):
        def __init__(self, *a, **k):
            calls.append(a)
            super().__init__(*a, **k)

    monkeypatch.setattr(futures, "ProcessPoolExecutor", Spy)
    assert collect(study, spec) is not None and not calls  # the default reads in this process
    parallel = collect(study, spec, parallel=True)
    assert calls  # the pool was used
    pd.testing.assert_frame_equal(serial[0], parallel[0])
    pd.testing.assert_frame_equal(serial[1], parallel[1])
