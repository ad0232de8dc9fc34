"""A study's trials as its saved state records them, and the status each one is reported with.

`trials_from_state` lists the trials (packs expanded to their members) from the newest readable
experiment state; `reported_status` (`final_status`, then `missing_data`) gives each its status in
the vocabulary of `core.status` (a TERMINATED trial told apart as DIVERGED, STOPPED or MISSING),
one rule for the counts and the tables alike. Used alike by the
tables (`study.results.tables`) and the counts (`study.results.counts`); standard library only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from core.errors import UserError
from core.layout import RESULT_FILE
from core.safe_read import RESULT_LIMIT, UnsafeFile, confined, notice, read_bounded, read_tail
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


def reported_status(
    t: dict, trial_dir: Path, epochs: list[int], last: dict, n_epochs: int, scheduler: bool
) -> tuple[str, str | None]:
    """(status, why its data is missing or not read, or None) of one trial as every reader reports it
    (`study status`, `study ls`, trials.parquet): `final_status` of its last epoch on record, then
    MISSING when `missing_data` (or the trial's ``problem``: a directory or file not read) says so.
    `epochs` and `last`: its epochs on record and the last one's fields (`epochs_on_record`)."""
    status = final_status(t["status"], last, n_epochs, scheduler=scheduler)
    missing = t["meta"].get("problem") or missing_data(
        trial_dir, t["status"], [{"epoch": e} for e in epochs], n_epochs, status
    )
    if missing and status != "ERROR":
        status = "MISSING"
    return status, missing


def epochs_on_record(study_dir: Path, t: dict) -> tuple[list[int], dict, str | None]:
    """(epochs in order, the last epoch's row, why the file was not read) of a trial of
    `trials_from_state`, from its result.json or, for a pack member, its rows: the same rule as
    `study.results.rows.summarise` (a resumed trial's later report of an epoch counts)."""
    if "rows" in t:
        rows, problem = t["rows"], None
    elif t["meta"].get("problem"):
        return [], {}, t["meta"]["problem"]
    else:
        path = Path(study_dir) / t["logdir"] / RESULT_FILE
        try:
            if path.is_symlink() and confined(path.parent, path.name) is None:
                raise UnsafeFile(f"{path}: a link leading outside its trial directory: not read")
            data = read_bounded(path, RESULT_LIMIT)
        except FileNotFoundError:
            data = b""
        except UnsafeFile as e:
            return [], {}, str(e)
        quick = _epochs_in_order(data)
        if quick is not None:
            return list(range(1, quick[0] + 1)), quick[1], None
        rows, problem = tune_state.rows_of_jsonl(data), None
    by_epoch: dict[int, dict] = {}
    for r in rows:
        e = r.get("epoch")
        if isinstance(e, (int, float)) and not isinstance(e, bool):
            by_epoch[int(e)] = r
    order = sorted(by_epoch)
    return order, (by_epoch[order[-1]] if order else {}), problem


_EPOCH_KEY = re.compile(rb'"epoch"\s*:\s*([1-9]\d*)\s*[,}]')
_OTHER_BREAKS = (b"\r", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e")  # str.splitlines breaks an ASCII text there too


def _epochs_in_order(data: bytes) -> tuple[int, dict] | None:
    """(n, the last row) when a result file's lines are the epochs 1..n, one per line in order (a
    trial that ran without a restore): told from its bytes, with only the first and the last line
    parsed. None when that is not certain (a resumed trial's repeated epochs, a cut line, a blank
    one, a nested ``epoch`` key, braces in strings, non-ASCII text): then the file is parsed whole.
    A line crafted to be invalid JSON with balanced braces and its epoch in place is not detected."""
    body = data[:-1] if data.endswith(b"\n") else data
    if not body or not body.isascii() or not body.startswith(b"{") or not body.endswith(b"}"):
        return None
    if any(b in body for b in _OTHER_BREAKS):
        return None
    n = body.count(b"\n") + 1
    if body.count(b"}\n{") != n - 1:  # every line a braced object: no blank line
        return None
    if body.count(b"{") != body.count(b"}"):  # a line cut by a crash, then written on, opens more than it closes
        return None
    found = _EPOCH_KEY.findall(body)  # the only place "epoch": can stand is a key (a quote in a string is escaped)
    if len(found) != n or any(int(v) != i for i, v in enumerate(found, 1)):
        return None
    first_end = body.find(b"\n")
    try:
        first = json.loads(body if first_end < 0 else body[:first_end])
        last = first if first_end < 0 else json.loads(body[body.rfind(b"\n") + 1 :])
    except (ValueError, RecursionError):
        return None
    if not isinstance(first, dict) or not isinstance(last, dict):
        return None
    if _int_epoch(first.get("epoch")) != 1 or _int_epoch(last.get("epoch")) != n:
        return None
    return n, last


def _int_epoch(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def results_gone(trial_dir: Path) -> bool:
    """A finished trial's directory or result.json is missing or empty (what `missing_data` calls
    lost, told without reading the results)."""
    try:
        return (trial_dir / RESULT_FILE).stat().st_size == 0
    except OSError:
        return True
