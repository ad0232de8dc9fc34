"""Trial counts by status, without the result files, for `study ls` and `study status`.

Read from the saved experiment state, ``spec.yaml`` (as plain YAML, not validated), ``study.json``
(`study.results.facts`) and the finished trials' result files (their epochs on record): no torch,
Ray, pandas or plotly is imported, so both commands answer in a fraction of a second. The counts
are those of ``trials.parquet``: both come from `study.results.trials.reported_status`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from core.errors import UserError, one_line
from core.layout import SPEC_FILE
from core.safe_read import SMALL_LIMIT, read_bounded
from core.status import STATUSES
from study.results.facts import epochs_default
from study.results.trials import epochs_on_record, reported_status, trials_from_state


def format_counts(counts: dict[str, int]) -> str:
    """``3 terminated, 1 error`` in the order of `core.status.STATUSES`; ``no trials`` for none."""
    parts = [f"{counts[s]} {s.lower()}" for s in STATUSES if counts.get(s)]
    return ", ".join(parts) if parts else "no trials"


def study_counts(study_dir: Path) -> dict[str, int]:
    """Trials by status from the saved state (no result files read): as in trials.parquet."""
    spec_file = Path(study_dir) / SPEC_FILE
    try:
        raw = yaml.safe_load(read_bounded(spec_file, SMALL_LIMIT).decode()) if spec_file.exists() else {}
    except UserError:
        raise
    except (yaml.YAMLError, OSError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(f"{spec_file}: cannot be read ({one_line(e, 200)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{spec_file}: not a study spec (a mapping of keys)")
    try:  # a trial's config holds its fixed and searched keys: only the family default is missing
        default = epochs_default(Path(study_dir), str(raw.get("trainable", "")))
    except UserError:  # no spec (yet): epochs unknown, so no STOPPED
        default = 0
    scheduler = (raw.get("scheduler") or {}).get("type", "none") != "none"
    counts: dict[str, int] = {}
    for t in trials_from_state(study_dir):
        n_epochs = t["config"].get("epochs", default)
        if t["status"] == "TERMINATED":  # the epochs on record decide, as in trials.parquet
            epochs, last, problem = epochs_on_record(Path(study_dir), t)
            if problem:
                t = {**t, "meta": {**t["meta"], "problem": problem}}
        else:
            epochs, last = [], t["meta"].get("last_result") or {}
        status, _ = reported_status(t, Path(study_dir) / t["logdir"], epochs, last, n_epochs, scheduler)
        counts[status] = counts.get(status, 0) + 1
    return counts


def list_studies(storage: str | Path) -> list[dict[str, Any]]:
    """Studies under a storage root with trial counts by status (reads the state, not Ray)."""
    from study.storage import Store

    store = Store.open(storage)
    out = []
    for name in store.names():
        try:  # one broken study (bad spec.yaml, unreadable state) is marked, the others still listed
            study_dir = store.pull(name)
            out.append({"name": name, "dir": study_dir, "counts": study_counts(study_dir), "error": None})
        except Exception as e:  # noqa: BLE001
            out.append({"name": name, "dir": None, "counts": {}, "error": one_line(e, 300)})
    return out
