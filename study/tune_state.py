"""Kept for scripts (and the callbacks older studies pickled) that import ``study.tune_state``: Ray
Tune's saved state is read by `study.results.state`."""

from __future__ import annotations

from study.results.state import (
    BACKUP_DIR,
    CORRUPT_SUFFIX,
    RAY_TESTED,
    STATE_PATTERN,
    LatestState,
    StateError,
    TrialState,
    backup_snapshot,
    matches_state,
    parse_state,
    read_jsonl,
    read_latest,
    repair_state,
    session_of,
    short_reason,
    state_files,
)

__all__ = [
    "BACKUP_DIR", "CORRUPT_SUFFIX", "RAY_TESTED", "STATE_PATTERN", "LatestState", "StateError", "TrialState",
    "backup_snapshot", "matches_state", "parse_state", "read_jsonl", "read_latest", "repair_state", "session_of",
    "short_reason", "state_files",
]  # fmt: skip
