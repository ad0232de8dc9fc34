"""The trial status vocabulary every table, count and page uses.

TERMINATED: ran every epoch. STOPPED: ended early by the scheduler (ASHA) before its last epoch.
DIVERGED: its loss became NaN or infinite. ERROR: it raised. MISSING: finished, but its results
are gone (trial directory or result.json deleted). RUNNING, PAUSED, PENDING: still to report.
Only TERMINATED trials enter means, CIs, tests and verdicts; the others are counted beside them.
"""

from __future__ import annotations

FINISHED = "TERMINATED"
STATUSES = ("TERMINATED", "STOPPED", "DIVERGED", "ERROR", "MISSING", "RUNNING", "PAUSED", "PENDING")
UNFINISHED = ("RUNNING", "PAUSED", "PENDING")  # still to report: counted as running
LEFT_OUT = ("STOPPED", "DIVERGED", "ERROR", "MISSING")  # ended without a usable final result

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
