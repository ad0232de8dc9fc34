"""One trial's result rows in compact form, for `study.results.tables.collect` (10,000 trials).

`summarise` turns a trial's rows (Tune's ``result.json`` lines, or a pack member's rows) into a
`TrialRows`: the epochs (the last report of each), each metric's values as one float array, and the
few fields of the last epoch the trial table needs. `summarise_files` does it for many files, in
worker processes when there are many (parsing JSON is most of the time of reading a large study;
the workers return arrays, not rows). This module imports only the standard library, numpy and `study.results.state`, so
that a worker starts in a fraction of a second.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.safe_read import UnsafeFile, confined
from study.results.state import read_jsonl

# columns Ray adds to every result row that are not metrics, and ours that are not metrics either
RAY_KEYS = {
    "timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "training_iteration", "trial_id", "date",
    "time_this_iter_s", "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
    "experiment_tag", "error", "time_total_s",
}  # fmt: skip
NOT_METRICS = {"epoch", "params", "diverged", "lr"}
NOT_METRIC_KEYS = RAY_KEYS | NOT_METRICS
LAST_KEYS = ("epoch", "diverged", "params", "time_total_s", "error")  # of the last epoch, for the trial table
# this many trials or more are read by worker processes (below it, starting them costs more than it saves)
PARALLEL_MIN_TRIALS = 2000


@dataclass
class TrialRows:
    """A trial's epochs: `epochs` in order, `times` (time_total_s) and `diverged` per epoch, `metrics`
    (name -> values per epoch, NaN where an epoch lacks it: the names are those with a number in some
    epoch, sorted), `last` (`LAST_KEYS` of the last epoch; empty without epochs), `problem` (why
    the file was not read: a FIFO, a device, too large; None when it was)."""

    epochs: list[int] = field(default_factory=list)
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    diverged: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


def is_number(v: Any) -> bool:
    t = type(v)
    return t is float or t is int or (t is not bool and isinstance(v, (int, float)))


def num(v: Any) -> float:
    if type(v) is float:
        return v
    return float(v) if is_number(v) else math.nan


def summarise(rows: Iterable[dict]) -> TrialRows:
    """`TrialRows` of a trial's rows; a resumed trial may report an epoch again: the last report counts."""
    by_epoch: dict[int, dict] = {}
    for r in rows:
        e = r.get("epoch")
        if e is not None:
            by_epoch[int(e)] = r
    if not by_epoch:
        return TrialRows()
    order = sorted(by_epoch)
    epochs = [by_epoch[e] for e in order]
    keys = set().union(*epochs) - NOT_METRIC_KEYS
    names = sorted(k for k in keys if any(is_number(r.get(k)) for r in epochs))
    last = epochs[-1]
    return TrialRows(
        epochs=order,
        times=np.array([num(r.get("time_total_s")) for r in epochs], dtype=float),
        diverged=np.array([int(r.get("diverged", 0) or 0) for r in epochs], dtype=np.int64),
        metrics={m: np.array([num(r.get(m)) for r in epochs], dtype=float) for m in names},
        last={k: last[k] for k in LAST_KEYS if k in last},
    )


def summarise_file(path: str) -> TrialRows:
    """`summarise` of a result file; a file that is not read (`core.safe_read`) gives no epochs and its `problem`."""
    path = Path(path)
    if path.is_symlink() and confined(path.parent, path.name) is None:
        return TrialRows(problem=f"{path}: a link leading outside its trial directory: not read")
    try:
        return summarise(read_jsonl(path))
    except UnsafeFile as e:
        return TrialRows(problem=str(e))


def summarise_files(paths: Sequence[str | Path], workers: int | None = None) -> list[TrialRows]:
    """`summarise_file` of every path, in order; with `PARALLEL_MIN_TRIALS` paths or more (or
    `workers` > 1 given), in worker processes (spawned: the caller may be a Ray driver, whose
    threads a fork would copy), one per CPU."""
    paths = [str(p) for p in paths]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(paths) >= PARALLEL_MIN_TRIALS else 1
    if workers <= 1 or len(paths) < 2:
        return [summarise_file(p) for p in paths]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunk = max(1, len(paths) // (workers * 8))
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(summarise_file, paths, chunksize=chunk))
    except (OSError, RuntimeError):  # no processes to be had (limits, a sandbox): read them here
        return [summarise_file(p) for p in paths]
