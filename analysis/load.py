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

from core.errors import UserError
from core.layout import PARQUET_STUDY_KEY, SPEC_FILE, epochs_path, trials_path
from core.metrics import Metric, semantics_from_json
from core.status import FINISHED, RESERVED_COLUMNS, STATUSES, UNFINISHED

__all__ = [  # the status vocabulary is re-exported for older callers (it lives in core.status)
    "FINISHED", "RESERVED_COLUMNS", "STATUSES", "UNFINISHED", "StudyMeta", "StudyResults", "default_mode",
    "infer_hyperparameters", "load_study", "metric_names", "read_study_metadata", "study_meta",
]  # fmt: skip


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
        semantics: each metric's declared direction, unit and determinism (metadata
            ``metric_semantics``); a metric missing here is shown raw and gets no verdict that
            needs a direction or unit.
        inert_keys: per trial id, the config keys without effect in that trial (metadata
            ``inert_keys``): trials differing only in them are one configuration.
        overrides: the run's ``--set`` changes against the spec file (metadata ``overrides``).
        smoke: a ``--smoke`` run (metadata ``smoke``).
        fixed: the spec's ``fixed:`` block (for the paper's recipe check).
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
    semantics: Mapping[str, Metric] = field(default_factory=dict)
    inert_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    smoke: bool = False
    fixed: Mapping[str, Any] = field(default_factory=dict)

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
    """Deprecated name rule, kept only for `study.results`' collector until it reads the family's
    declared direction; the analysis never calls it (it reads `StudyMeta.semantics`)."""
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
    semantics = _semantics(metadata.get("metric_semantics"))
    declared = semantics.get(str(metric))
    mode = metadata.get("mode") or spec.get("mode") or (declared.direction if declared else "max")
    data = spec.get("data") or {}
    source = metadata.get("data_source") or (data.get("source") if isinstance(data, Mapping) else "")
    if not source and "data_source" in trials.columns and trials["data_source"].nunique() == 1:
        source = str(trials["data_source"].iloc[0])
    inert = metadata.get("inert_keys") or {}
    return StudyMeta(
        name=str(metadata.get("name") or spec.get("name") or "study"),
        description=str(spec.get("description") or ""),
        spec_file=str(metadata.get("spec_file") or spec.get("spec_file") or ""),
        trainable=str(metadata.get("trainable") or spec.get("trainable") or ""),
        data_source=str(source or ""),
        metric=str(metric),
        mode=str(mode),
        hyperparameters=hyper,
        searched=searched,
        grid_axes=grid,
        space=space,
        paper=spec.get("paper") or None,
        metrics=metrics,
        semantics=semantics,
        inert_keys={str(k): tuple(map(str, v)) for k, v in inert.items()} if isinstance(inert, Mapping) else {},
        overrides=tuple(map(str, metadata.get("overrides") or ())),
        smoke=bool(metadata.get("smoke")),
        fixed=dict(spec.get("fixed") or {}),
    )


def _semantics(value: Any) -> dict[str, Metric]:
    """The metadata's ``metric_semantics`` ({} when absent or malformed: every metric shown raw)."""
    if not isinstance(value, Mapping):
        return {}
    try:
        return semantics_from_json(value)
    except (KeyError, TypeError, ValueError):
        return {}


def read_study_metadata(path: Path) -> dict[str, Any]:
    """The JSON under the ``b"study"`` key of a Parquet file's schema metadata ({} if absent)."""
    raw = (pq.read_schema(path).metadata or {}).get(PARQUET_STUDY_KEY)
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
    trials_file = trials_path(study_dir)
    if not trials_file.is_file():
        raise UserError(f"no results in {study_dir}: {trials_file} is missing (has `study run` reported any trial?)")
    trials = pd.read_parquet(trials_file)
    metadata = read_study_metadata(trials_file)
    spec_path = study_dir / SPEC_FILE
    spec: dict[str, Any] = {}
    if spec_path.is_file():
        try:
            spec = yaml.safe_load(spec_path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{spec_path}: not valid YAML ({e})") from None
        if not isinstance(spec, dict):
            raise UserError(f"{spec_path}: expected a mapping at the top level, got {type(spec).__name__}")
    epochs_file = epochs_path(study_dir)
    epochs = pd.read_parquet(epochs_file) if epochs_file.is_file() else pd.DataFrame(columns=["trial_id", "epoch"])
    meta = study_meta(metadata, spec, trials)
    return StudyResults(meta=meta, trials=trials, epochs=epochs, study_dir=study_dir)
