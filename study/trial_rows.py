"""Kept for scripts that import ``study.trial_rows``: it is `study.results.rows`."""

from __future__ import annotations

from study.results.rows import (
    LAST_KEYS,
    NOT_METRIC_KEYS,
    NOT_METRICS,
    PARALLEL_MIN_TRIALS,
    RAY_KEYS,
    TrialRows,
    is_number,
    num,
    summarise,
    summarise_file,
    summarise_files,
)
from study.results.state import read_jsonl

__all__ = [
    "LAST_KEYS", "NOT_METRICS", "NOT_METRIC_KEYS", "PARALLEL_MIN_TRIALS", "RAY_KEYS", "TrialRows", "is_number", "num",
    "read_jsonl", "summarise", "summarise_file", "summarise_files",
]  # fmt: skip
