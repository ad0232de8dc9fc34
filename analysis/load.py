"""Read a study's results (``results/trials.parquet``, ``results/epochs.parquet``, ``spec.yaml``).

The runner writes one row per trial and one row per (trial, epoch); the trials file carries the
study's description as JSON under the Parquet schema metadata key ``b"study"``. `study_meta`
fills in what that metadata lacks (older or hand-made files) from the spec and the columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import yaml

from study.errors import UserError

# Columns of trials.parquet that are neither hyperparameters nor metrics.
RESERVED_COLUMNS = (
    "trial_id",
    "data_source",
    "status",
    "seed",
    "params",
    "epochs_done",
    "wall_time_s",
    "num_failures",
    "error",
    "config_id",
)
# STOPPED: ended early by the scheduler (ASHA) before its last epoch; like DIVERGED, left out of means
# MISSING: finished, but its results are gone (trial directory or result.json deleted): left out of means
STATUSES = ("TERMINATED", "STOPPED", "DIVERGED", "ERROR", "MISSING", "RUNNING", "PAUSED", "PENDING")
UNFINISHED = ("RUNNING", "PAUSED", "PENDING")  # still to report: counted as running
FINISHED = "TERMINATED"


@dataclass(frozen=True)
class StudyMeta:
    """What the analysis needs to know about a study besides its tables.

    Args:
        name: study name (from the spec); free text, escape before display.
        description: the spec's description.
        spec_file: path of the YAML the study was started from.
        trainable: registered trainable name.
        data_source: the spec's ``data.source``.
        metric: the metric the study ranks by, e.g. ``test_acc`` (compared as ``final_<metric>``).
        mode: ``max`` or ``min``.
        hyperparameters: every config column except the seed.
        searched: the keys of the spec's ``space:``.
        grid_axes: searched keys that are grid axes.
        space: the spec's ``space:`` block ({key: {grid|choice|uniform|loguniform|randint: ...}}).
        paper: the spec's ``paper:`` block, or None.
        metrics: per-epoch metric names that have ``final_``/``best_`` columns.
    """

    name: str
    description: str = ""
    spec_file: str = ""
    trainable: str = ""
    data_source: str = ""
    metric: str = "test_acc"
    mode: str = "max"
    hyperparameters: tuple[str, ...] = ()
    searched: tuple[str, ...] = ()
    grid_axes: tuple[str, ...] = ()
    space: Mapping[str, Any] = field(default_factory=dict)
    paper: Mapping[str, Any] | None = None
    metrics: tuple[str, ...] = ()

    @property
    def metric_col(self) -> str:
        """The trials column the study is ranked by, ``final_<metric>``."""
        return f"final_{self.metric}"


@dataclass(frozen=True)
class StudyResults:
    """A loaded study: its metadata, its trials table and its per-epoch table."""

    meta: StudyMeta
    trials: pd.DataFrame
    epochs: pd.DataFrame
    study_dir: Path | None = None


def metric_names(columns: Sequence[str]) -> tuple[str, ...]:
    """Metric names m for which ``final_<m>`` is a column, in column order."""
    return tuple(c[len("final_") :] for c in columns if c.startswith("final_"))


def default_mode(metric: str) -> str:
    """``min`` for losses, errors and costs (step time, memory), else ``max`` (the runner's rule for best_)."""
    costs = ("loss", "error", "step_time", "peak_mem")
    return "min" if any(c in metric for c in costs) else "max"


def infer_hyperparameters(columns: Sequence[str]) -> tuple[str, ...]:
    """Columns that are not reserved and not ``final_``/``best_`` metrics."""
    return tuple(
        c for c in columns if c not in RESERVED_COLUMNS and not c.startswith("final_") and not c.startswith("best_")
    )


def study_meta(metadata: Mapping[str, Any], spec: Mapping[str, Any], trials: pd.DataFrame) -> StudyMeta:
    """Combine the Parquet ``study`` metadata, the spec and the columns; metadata wins, then spec."""
    columns = list(trials.columns)
    space = dict(spec.get("space") or {})
    hyper = tuple(metadata.get("hyperparameters") or infer_hyperparameters(columns))
    hyper = tuple(h for h in hyper if h in columns and h != "seed")
    metrics = metric_names(columns)
    searched = metadata.get("searched")
    if searched is None:
        searched = list(space) if space else [h for h in hyper if trials[h].nunique(dropna=False) > 1]
    searched = tuple(s for s in searched if s in columns)
    grid = metadata.get("grid_axes")
    if grid is None:
        grid = [k for k, v in space.items() if isinstance(v, Mapping) and "grid" in v]
    grid = tuple(g for g in grid if g in searched)
    metric = metadata.get("metric") or spec.get("metric") or ("test_acc" if "test_acc" in metrics else "")
    if not metric and metrics:
        metric = metrics[0]
    mode = metadata.get("mode") or spec.get("mode") or default_mode(metric)
    data = spec.get("data") or {}
    return StudyMeta(
        name=str(metadata.get("name") or spec.get("name") or "study"),
        description=str(spec.get("description") or ""),
        spec_file=str(metadata.get("spec_file") or spec.get("spec_file") or ""),
        trainable=str(metadata.get("trainable") or spec.get("trainable") or ""),
        data_source=str(metadata.get("data_source") or (data.get("source") if isinstance(data, Mapping) else "")),
        metric=str(metric),
        mode=str(mode),
        hyperparameters=hyper,
        searched=searched,
        grid_axes=grid,
        space=space,
        paper=spec.get("paper") or None,
        metrics=metrics,
    )


def read_study_metadata(path: Path) -> dict[str, Any]:
    """The JSON under the ``b"study"`` key of a Parquet file's schema metadata ({} if absent)."""
    raw = (pq.read_schema(path).metadata or {}).get(b"study")
    if not raw:
        return {}
    try:
        return dict(json.loads(raw))
    except (ValueError, TypeError):
        return {}


def load_study(study_dir: Path) -> StudyResults:
    """Load ``study_dir/results/{trials,epochs}.parquet`` and ``study_dir/spec.yaml``.

    Only the trials file is required; a study that has not reported epochs yet gets an empty
    epochs table, and a missing spec falls back to the Parquet metadata.
    """
    study_dir = Path(study_dir)
    trials_path = study_dir / "results" / "trials.parquet"
    if not trials_path.is_file():
        raise UserError(f"no results in {study_dir}: {trials_path} is missing (has `study run` reported any trial?)")
    trials = pd.read_parquet(trials_path)
    metadata = read_study_metadata(trials_path)
    spec_path = study_dir / "spec.yaml"
    spec: dict[str, Any] = {}
    if spec_path.is_file():
        try:
            spec = yaml.safe_load(spec_path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{spec_path}: not valid YAML ({e})") from None
        if not isinstance(spec, dict):
            raise UserError(f"{spec_path}: expected a mapping at the top level, got {type(spec).__name__}")
    epochs_path = study_dir / "results" / "epochs.parquet"
    epochs = pd.read_parquet(epochs_path) if epochs_path.is_file() else pd.DataFrame(columns=["trial_id", "epoch"])
    meta = study_meta(metadata, spec, trials)
    return StudyResults(meta=meta, trials=trials, epochs=epochs, study_dir=study_dir)
