"""A study's tables: `collect` reads a study directory (Ray Tune's state and trial logs) into the
trials table (one row per trial) and the epochs table (one row per trial and epoch); `write_results`
writes them as ``results/trials.parquet`` and ``results/epochs.parquet``, atomically.

`collect` works on finished, running and interrupted studies alike. Each metric ``m`` a trial
reported gets ``final_m`` (its last finite value) and ``best_m`` (its best epoch by the metric's
declared direction, `core.metrics.Metric`; a metric the family does not declare has a direction
only when it is the spec's ranking metric, with the spec's ``mode``; otherwise no ``best_`` column:
nothing is guessed from a name). The Parquet schema metadata key ``study`` holds the study's
description as JSON, with ``metric_semantics`` ({name: {direction, unit, deterministic}}) for the
analysis to read without the family.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.atomic import write_parquet
from core.errors import UserError
from core.layout import (
    EPOCHS_FILE,
    PARQUET_STUDY_KEY,
    RESULT_FILE,
    RESULTS_DIR,
    SPEC_SOURCE_FILE,
    TRIALS_FILE,
    results_dir,
)
from core.metrics import Metric, semantics_to_json
from core.safe_read import confined, notice
from study.results.rows import TrialRows, num, summarise, summarise_files
from study.results.trials import error_message, reported_status, trials_from_state
from study.spec.grid import collapse_record
from study.spec.model import Spec


def metric_semantics(spec: Spec, names: list[str]) -> dict[str, Metric]:
    """What each of `names` means, as the spec's family declares it (names it does not declare are
    left out)."""
    from trainables import get_family

    family = get_family(spec.trainable)
    out = {}
    for name in names:
        m = family.metric(name)
        if m is not None:
            out[name] = m
    return out


def directions(spec: Spec, names: list[str]) -> dict[str, str]:
    """{metric: "min" | "max"} for the metrics with a known direction: the family's declaration,
    else, for the spec's ranking metric only, the spec's ``mode``."""
    out = {name: m.direction for name, m in metric_semantics(spec, names).items()}
    if spec.metric in names and spec.metric not in out:
        out[spec.metric] = spec.mode
    return out


def collect(study_dir: Path, spec: Spec, *, parallel: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) tables of a study directory; see the module docstring.

    Each trial's rows are summarised (`study.results.rows`: its epochs, each metric as a float array)
    and the tables built column by column, not row by row: 10,000 trials of 100 epochs in seconds. `parallel`: a large study's result files are parsed by spawned worker processes (the
    CLI sets it; a spawned worker imports the caller's main module, so a script calling this with
    `parallel` needs the usual ``if __name__ == "__main__":`` guard)."""
    study_dir = Path(study_dir)
    from trainables import get_family

    family = get_family(spec.trainable)
    hp_cols = hyperparameter_columns(spec)
    epochs_default = family.all_defaults["epochs"]
    direction_of: dict[str, str | None] = {}  # per metric name, looked up once
    scheduler = spec.scheduler.type != "none"
    trials_state = trials_from_state(study_dir)
    files = [str(study_dir / t["logdir"] / RESULT_FILE) for t in trials_state if _reads_file(t)]
    from_files = iter(summarise_files(files, workers=None if parallel else 1))
    trial_rows: list[dict[str, Any]] = []
    tids: list[str] = []  # the epochs table, by column: per trial its epochs, times, flags, metrics
    counts: list[int] = []
    epoch_nums: list[int] = []
    times: list[np.ndarray] = []
    diverged: list[np.ndarray] = []
    metric_chunks: dict[str, list[tuple[int, np.ndarray]]] = {}
    epoch_cols: dict[str, None] = {}  # column order as a table built from row dicts would have it
    offset = 0
    for t in trials_state:
        trial_dir = study_dir / t["logdir"]
        if "rows" in t:  # pack members: their rows
            summary: TrialRows = summarise(t["rows"])
        else:
            summary = next(from_files) if _reads_file(t) else TrialRows()
        problem = t["meta"].get("problem") or summary.problem  # a directory or file not read: says why
        if summary.problem:
            notice(summary.problem)
        metric_names = list(summary.metrics)
        finals: dict[str, float] = {}
        bests: dict[str, float] = {}
        if summary.epochs:
            n = len(summary.epochs)
            if not epoch_cols:
                epoch_cols.update(dict.fromkeys(["trial_id", "epoch", *metric_names, "time_total_s", "diverged"]))
            else:
                epoch_cols.update(dict.fromkeys(metric_names))
            tids.append(t["trial_id"])
            counts.append(n)
            epoch_nums.extend(summary.epochs)
            times.append(summary.times)
            diverged.append(summary.diverged)
            for m, vals in summary.metrics.items():
                metric_chunks.setdefault(m, []).append((offset, vals))
                arr = vals[np.isfinite(vals)]
                if m not in direction_of:
                    direction_of[m] = directions(spec, [m]).get(m)
                finals[m] = float(arr[-1]) if arr.size else math.nan
                if direction_of[m] is not None:
                    bests[m] = float(arr.min() if direction_of[m] == "min" else arr.max()) if arr.size else math.nan
            offset += n
        last = summary.last
        config = t["config"]
        n_epochs = config.get("epochs", epochs_default)
        meta_t = {**t, "meta": {**t["meta"], "problem": problem}} if problem else t
        status, missing = reported_status(meta_t, trial_dir, summary.epochs, last, n_epochs, scheduler)
        row: dict[str, Any] = {"trial_id": t["trial_id"], "status": status}
        for c in hp_cols:
            row[c] = _cell(config.get(c))
        row["seed"] = config.get("seed")
        if row["seed"] is None and "__trial_index__" in config:  # Repeater (optuna): seed from the repeat index
            row["seed"] = spec.seed_list[int(config["__trial_index__"])]
        for m in metric_names:
            row[f"final_{m}"] = finals[m]
            if m in bests:
                row[f"best_{m}"] = bests[m]
        row["params"] = last.get("params")
        row["epochs_done"] = int(last.get("epoch", 0)) if last else 0
        row["wall_time_s"] = num(last.get("time_total_s")) if last else 0.0
        row["num_failures"] = int(t["meta"].get("num_failures", 0) or 0)
        err = error_message(trial_dir, t["meta"]) if status == "ERROR" else None
        row["error"] = missing or err or (last.get("error") if status == "DIVERGED" else None)
        trial_rows.append(row)
    trials = pd.DataFrame(sorted(trial_rows, key=lambda r: r["trial_id"]))
    if trials.empty:
        trials = pd.DataFrame(
            columns=["trial_id", "status", *hp_cols, "seed", "params", "epochs_done", "wall_time_s", "error"]
        )
    if not offset:
        return trials, pd.DataFrame(columns=["trial_id", "epoch", "time_total_s", "diverged"])
    columns: dict[str, Any] = {
        "trial_id": np.repeat(np.array(tids, dtype=object), counts),
        "epoch": np.asarray(epoch_nums, dtype=np.int64),
        "time_total_s": np.concatenate(times),
        "diverged": np.concatenate(diverged),
    }
    for m, chunks in metric_chunks.items():
        col = np.full(offset, np.nan)
        for start, vals in chunks:
            col[start : start + len(vals)] = vals
        columns[m] = col
    return trials, pd.DataFrame({c: columns[c] for c in epoch_cols})


def _reads_file(t: dict) -> bool:
    """A trial whose result.json is read: not a pack member (its rows come with it) and not one whose
    directory was ignored (a logdir leading outside the study)."""
    return "rows" not in t and not t["meta"].get("problem")


def hyperparameter_columns(spec: Spec) -> list[str]:
    """Columns named as in the YAML: data keys, fixed keys, then searched keys (no seed)."""
    cols = [*spec.data.config, *spec.fixed, *spec.space]
    return list(dict.fromkeys(c for c in cols if c != "seed"))


def study_metadata(
    spec: Spec, study_dir: Path, metrics: list[str] | None = None, trials: pd.DataFrame | None = None
) -> dict[str, Any]:
    """The ``study`` entry of the tables' schema metadata; `metrics`: the metric columns, whose
    declared semantics are included (``metric_semantics``). With the run's record (``spec.run``):
    ``overrides`` (the ``--set`` strings) and ``smoke``; with `trials`: ``inert_keys`` ({trial_id:
    [keys without effect in that trial]}) and, when the grid collapsed inert duplicates,
    ``collapsed`` ({trials, of, keys, at}: `study.spec.grid.collapse_record`)."""
    source = Path(study_dir) / SPEC_SOURCE_FILE
    extra: dict[str, Any] = {
        "overrides": list(spec.run.overrides) if spec.run else [],
        "smoke": bool(spec.run.smoke) if spec.run else False,
    }
    if trials is not None:
        extra["inert_keys"] = trial_inert_keys(spec, trials)
        record = collapse_record(spec)
        if record is not None and len(trials) <= spec.n_trials():  # an older study ran its duplicates
            extra["collapsed"] = record
    return {
        "name": spec.name,
        "spec_file": source.read_text().strip() if source.exists() else "",
        "trainable": spec.trainable,
        "data_source": spec.data.source,
        "metric": spec.metric,
        "mode": spec.mode,
        "hyperparameters": hyperparameter_columns(spec),
        "searched": list(spec.space),
        "grid_axes": spec.grid_axes,
        "metric_semantics": semantics_to_json(metric_semantics(spec, metrics or [])),
        **extra,
    }


def trial_inert_keys(spec: Spec, trials: pd.DataFrame) -> dict[str, list[str]]:
    """{trial_id: [hyperparameter columns the family declares inert in that trial]} (trials with
    none left out), from each row's configuration (``Family.inert_keys``)."""
    from trainables import get_family

    family = get_family(spec.trainable)
    defaults = family.all_defaults
    cols = [c for c in hyperparameter_columns(spec) if c in trials.columns]
    if "trial_id" not in trials.columns or not cols:
        return {}
    out: dict[str, list[str]] = {}
    for row in trials[["trial_id", *cols]].to_dict("records"):
        config = {}
        for c in cols:
            v = row[c]
            if isinstance(v, str) and isinstance(defaults.get(c), list | dict):  # `_cell` wrote it as JSON
                try:
                    v = json.loads(v)
                except ValueError:
                    continue
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            config[c] = v.item() if isinstance(v, np.generic) else v
        try:
            inert = family.inert_keys(config)
        except Exception:  # noqa: BLE001 - a row the family cannot read: no key is declared inert
            continue
        keys = [c for c in cols if c in inert]
        if keys:
            out[str(row["trial_id"])] = keys
    return out


def metric_columns(trials: pd.DataFrame, epochs: pd.DataFrame) -> list[str]:
    """The metrics of a study's tables: its ``final_*`` columns, the epochs' metric columns, params."""
    names = [c.removeprefix("final_") for c in trials.columns if str(c).startswith("final_")]
    names += [c for c in epochs.columns if c not in ("trial_id", "epoch", "time_total_s", "diverged", "data_source")]
    return list(dict.fromkeys([*names, "params"]))


def write_results(study_dir: Path, spec: Spec, trials: pd.DataFrame, epochs: pd.DataFrame) -> Path:
    """Write ``results/trials.parquet`` and ``results/epochs.parquet`` (atomically); returns the directory."""
    out = checked_results_dir(study_dir)
    out.mkdir(parents=True, exist_ok=True)
    described = study_metadata(spec, Path(study_dir), metric_columns(trials, epochs), trials)
    meta = {PARQUET_STUDY_KEY: json.dumps(described).encode()}
    source = {"data_source": spec.data.source}  # in every table: what the numbers were measured on
    write_parquet(_mixed_to_str(trials.assign(**source)), out / TRIALS_FILE, metadata=meta)
    write_parquet(epochs.assign(**source), out / EPOCHS_FILE, metadata=meta)
    return out


def checked_results_dir(study_dir: Path) -> Path:
    """``STUDY/results``, refused (`UserError`, one line naming it) when it is a link or not a
    directory, or leads outside the study: the tables and the report are never written through it
    into another study or anywhere else."""
    out = results_dir(study_dir)
    if out.is_symlink():
        raise UserError(f"{out}: a link (to {os.readlink(out)}), not the study's own directory: nothing is written "
                        "through it; remove the link and run the command again")  # fmt: skip
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: not a directory: nothing is written there; move it away and run the command again")
    if confined(study_dir, RESULTS_DIR) is None:  # the study directory reached through a link is fine; this is not
        raise UserError(f"{out}: leads outside the study directory {study_dir}: nothing is written there")
    return out


def _mixed_to_str(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: columns mixing types (e.g. None and lists) become text."""
    df = df.copy()
    for c in df.columns:
        types = {type(v) for v in df[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(types) > 1 and not types <= {int, float, bool}:
            df[c] = [None if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v) for v in df[c]]
    return df


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v
