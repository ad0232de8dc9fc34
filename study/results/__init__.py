"""A study's results, read from its directory (the reading side: no Ray Tune object is built).

- `study.results.state`: Ray Tune's saved experiment state and trial logs, read as JSON;
- `study.results.packs`: a packed trial expanded to its members;
- `study.results.trials`: the trials of the state with the status each is reported with;
- `study.results.rows`: one trial's result rows in compact form (numpy);
- `study.results.tables`: `collect` (the trials and epochs tables, pandas) and `write_results`;
- `study.results.facts`: ``study.json``, the family facts the counts need without the family;
- `study.results.counts`: `study_counts`, `list_studies`, `format_counts` (standard library only).

The names ``study.results`` has always had are re-exported here, each imported on first use (so
importing one light submodule never pulls in pandas); code in the package imports the submodules.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "study.results.counts": ("format_counts", "list_studies", "study_counts"),
    "study.results.facts": ("family_facts", "read_facts", "write_facts"),
    "study.results.packs": ("expand_packs", "member_count"),
    "study.results.rows": ("NOT_METRIC_KEYS", "RAY_KEYS", "TrialRows", "is_number", "num", "summarise", "summarise_files"),
    "study.results.state": ("read_jsonl",),
    "study.results.tables": (
        "collect", "directions", "hyperparameter_columns", "metric_semantics", "study_metadata", "write_results",
    ),
    "study.results.trials": (
        "epochs_on_record", "error_line", "error_message", "final_status", "missing_data", "reported_status",
        "trials_from_state",
    ),
    # the progress and checkpoint callbacks live with the run (a study's pickled callbacks name them here)
    "study.run.callbacks": (
        "MAX_PROGRESS_STEPS", "MAX_TRIAL_LINES", "make_progress_callback", "make_prune_callback", "prune_checkpoints",
    ),
}  # fmt: skip
_OLD = {  # private names scripts and pickled callbacks of older studies use
    "_NOT_METRIC_KEYS": ("study.results.rows", "NOT_METRIC_KEYS"),
    "_is_number": ("study.results.rows", "is_number"),
    "_num": ("study.results.rows", "num"),
    "_read_jsonl": ("study.results.state", "read_jsonl"),
    "_error_message": ("study.results.trials", "error_message"),
    "_trials_from_state": ("study.results.trials", "trials_from_state"),
    "_results_gone": ("study.results.trials", "results_gone"),
    "_short_value": ("study.run.callbacks", "short_value"),
    "_fmt_duration": ("study.run.callbacks", "fmt_duration"),
}
_WHERE = {**{n: (mod, n) for mod, names in _NAMES.items() for n in names}, **_OLD}
__all__ = sorted(n for names in _NAMES.values() for n in names)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _WHERE[name]
    return getattr(importlib.import_module(module), attr)
