"""Kept for scripts that import ``study.runner``: running a study lives in `study.run`.

Also named by the callbacks older studies pickled into their ``tuner.pkl`` (``request_stop``,
``free_space_needed``), so those studies still resume.
"""

from __future__ import annotations

from study.run import stop as _stop
from study.run.callbacks import make_guard_callback
from study.run.cluster import autoscaling_cluster, check_reachable, check_resources, init_ray
from study.run.disk import MIN_FREE_MB, check_disk_space, free_space_needed
from study.run.orchestrate import RunOutcome, StudyRun, prepare_spec, run_study, write_report
from study.run.resume import EDITABLE, complete_counts, prune_finished, record_spec, repair_state, spec_difference
from study.run.stop import StopRequest, Terminated
from study.run.tuner import build_tuner, trial_dirname, trial_entry


def request_stop(reason: str, detail: str) -> None:
    """Stop the current run as Ctrl-C does (`study.run.stop.StopRequest.request`)."""
    _stop.current().request(reason, detail)


__all__ = [
    "EDITABLE", "MIN_FREE_MB", "RunOutcome", "StopRequest", "StudyRun", "Terminated", "autoscaling_cluster",
    "build_tuner", "check_disk_space", "check_reachable", "check_resources", "complete_counts", "free_space_needed",
    "init_ray", "make_guard_callback", "prepare_spec", "prune_finished", "record_spec", "repair_state",
    "request_stop", "run_study", "spec_difference", "trial_dirname", "trial_entry", "write_report",
]  # fmt: skip
