"""A study's trials as its saved state records them, and the status each one is reported with.

`trials_from_state` lists the trials (packs expanded to their members) from the newest readable
experiment state; `final_status` and `missing_data` give each its status in the vocabulary of
`core.status` (a TERMINATED trial told apart as DIVERGED, STOPPED or MISSING). Used alike by the
tables (`study.results.tables`) and the counts (`study.results.counts`); standard library only.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import UserError
from core.layout import RESULT_FILE
from core.safe_read import confined, notice, read_tail
from study.results import state as tune_state
from study.results.packs import expand_packs


def error_line(path: str | Path | None, limit: int = 500) -> str | None:
    """The exception line of a trial's error file (Tune writes the whole traceback there): its last
    line, read from the file's end (`core.safe_read.read_tail`: a regular file only, never read whole)."""
    try:
        text = read_tail(path).decode("utf-8", errors="replace") if path else ""
    except (OSError, UserError):
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else None  # a traceback ends with the exception itself


def error_message(trial_dir: Path, meta: dict) -> str | None:
    """The exception line of a failed trial, from the error file its state entry names: a name
    inside the trial's directory (an absolute path, ``..`` or a link leading out of it is ignored
    with one line: the state file may come from anyone)."""
    name = meta.get("error_filename") or "error.txt"
    path = confined(trial_dir, name) if isinstance(name, str) and "\0" not in name else None
    if path is None:
        notice(f"{trial_dir}: error file {name!r} is outside the trial directory: ignored")
        return None
    try:
        return error_line(path) if path.is_file() else None
    except UserError as e:  # pragma: no cover - error_line catches it
        notice(str(e))
        return None


def trials_from_state(study_dir: Path) -> list[dict]:
    """[{trial_id, status, config, logdir, meta}] from the latest readable experiment state (read as
    JSON by `study.results.state`, never unpickled; a corrupt newer file is passed over), packs
    expanded to their members (`expand_packs`: those entries carry their ``rows``)."""
    out = []
    latest = tune_state.read_latest(Path(study_dir))
    if latest.path is None and latest.skipped:
        raise tune_state.StateError(latest.skipped[0][1])  # every state file is corrupt: say so, not "no trials"
    if latest.path is None and any(Path(study_dir).glob(f"trial_*/{RESULT_FILE}")):
        raise tune_state.StateError(
            f"{study_dir}: no {tune_state.STATE_PATTERN} (Tune's saved state) although trials have results: "
            "the state was deleted; the trials cannot be told apart from leftovers"
        )
    for t in latest.trials:
        meta = {"num_failures": t.num_failures, "last_result": t.last_result, "error_filename": t.error_filename}
        problem = t.problem
        if problem is None and confined(study_dir, t.logdir) is None:  # a link out of the study
            problem = f"{Path(study_dir) / t.logdir}: trial {t.trial_id}'s directory leads outside the study directory: ignored"
        if problem is not None:
            notice(problem)
            meta["problem"] = problem
        out.append({"trial_id": t.trial_id, "status": t.status, "config": t.config, "logdir": t.logdir, "meta": meta})
    # Trial dirs missing from the state were started after its last snapshot by a driver that was then
    # killed; the resumed run starts those trials again under new ids, so they are not counted here.
    return expand_packs(study_dir, out)


def final_status(status: str, last: dict, epochs: int, scheduler: bool = True) -> str:
    """Tune's status, with a TERMINATED trial told apart by its last result: DIVERGED (it stopped
    itself on a NaN/inf loss), STOPPED (a `scheduler` ended it before `epochs`) or, without a
    scheduler, MISSING (its last epochs are not on record: nothing but missing data ends it early)."""
    if status == "TERMINATED" and last.get("diverged"):
        return "DIVERGED"
    if status == "TERMINATED" and int(last.get("epoch", 0) or 0) < int(epochs):
        return "STOPPED" if scheduler else "MISSING"
    return status


def missing_data(trial_dir: Path, status: str, epochs: list[dict], n_epochs: int, final: str) -> str | None:
    """Why a finished trial's data is missing (its directory, its result.json, or epochs of a trial
    that ran them all), or None. Such a trial is reported as MISSING, never as stopped or complete."""
    if status not in ("TERMINATED", "ERROR"):
        return None
    if not trial_dir.is_dir():
        return f"{trial_dir.name}: trial directory missing (deleted or not synced); its results are lost"
    if status == "ERROR":
        return None
    if not epochs:
        return f"{trial_dir.name}/result.json: missing or empty; the trial finished but its results are lost"
    done = [int(r["epoch"]) for r in epochs]
    if final == "MISSING" or (final == "TERMINATED" and done != list(range(1, int(n_epochs) + 1))):
        gaps = sorted(set(range(1, int(n_epochs) + 1)) - set(done))
        return f"{trial_dir.name}/result.json: epochs {_ranges(gaps)} of {n_epochs} missing"
    return None


def _ranges(values: list[int]) -> str:
    if not values:
        return "none"
    out, start, prev = [], values[0], values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


def results_gone(trial_dir: Path) -> bool:
    """A finished trial's directory or result.json is missing or empty (what `missing_data` calls
    lost, told without reading the results)."""
    try:
        return (trial_dir / RESULT_FILE).stat().st_size == 0
    except OSError:
        return True
