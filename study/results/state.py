"""Ray Tune's saved experiment state and trial logs, read as plain JSON (never unpickled), for the Ray
version pinned.

Why by hand: Ray's public readers (``ray.tune.ExperimentAnalysis``, ``ResultGrid`` from
``Tuner.restore``) rebuild ``Trial`` objects with ``Trial.from_json_state``, and
``Trial.__setstate__`` runs ``cloudpickle.loads`` on five hex fields of every trial (``results``,
``placement_group_factory``, ...) and ``_TrainingRunMetadata.from_json_state`` unpickles each
trial's checkpoint manager (ray 2.60.0: ``ray/tune/experiment/trial.py``,
``ray/tune/experiment/experiment_analysis.py``). Reading results that way would run code from the
study directory in `study status`, `ls`, `report` and `compare`. So this module reads only the
JSON fields below and checks their shape: when a Ray upgrade changes them, every reader fails with
one line naming the file and `RAY_TESTED`, not with wrong tables (tests/study/test_hardening.py).

The state is ``experiment_state-<session>.json`` in the study directory, rewritten in place by Tune
(not atomically) every few seconds; files of older sessions stay. Next to it Tune saves the
searcher's and the callbacks' state of the same session (``basic-variant-state-<session>.json``,
``search_gen_state-...``, ``searcher-state-...pkl``, ``callback-states-...pkl``): a snapshot is
that set of files. `backup_snapshot` keeps the newest complete snapshot in ``.state-backup/`` and
`repair_state` falls back to it (or to an older session) when the newest state file is corrupt.
`read_jsonl` reads a trial's ``result.json`` (one JSON line per report).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.layout import EXPERIMENT_STATE_GLOB, RESULT_FILE, TUNER_FILE
from core.safe_read import RESULT_LIMIT, STATE_LIMIT, UnsafeFile, confined, loads_json, read_bounded, safe_relpath

RAY_TESTED = "2.60.0"  # the Ray release this reader was tested against (pyproject pins it)
STATE_PATTERN = EXPERIMENT_STATE_GLOB
BACKUP_DIR = ".state-backup"
CORRUPT_SUFFIX = ".corrupt"  # a set-aside file no longer matches Tune's patterns (*.json, *.pkl)
_SESSION = re.compile(r"^experiment_state-(?P<session>.+)\.json$")


class StateError(UserError):
    """The saved experiment state is unreadable or not in the format of `RAY_TESTED`."""


@dataclass(frozen=True)
class TrialState:
    """One trial as the saved state records it (JSON fields only)."""

    trial_id: str
    status: str  # PENDING RUNNING PAUSED TERMINATED ERROR
    config: dict[str, Any]
    logdir: str  # relative to the study directory
    num_failures: int = 0
    last_result: dict[str, Any] = field(default_factory=dict)
    error_filename: str | None = None
    problem: str | None = None  # why its directory is not read (a logdir leading outside the study)


def parse_state(text: str | bytes, where: str) -> list[TrialState]:
    """The trials of one experiment state file; `StateError` (one line) if it is not valid JSON or
    not in the format this reader knows."""
    deep = f"{where}: not valid JSON (nested too deeply to be read): the file is truncated or corrupt"
    try:
        state = loads_json(text, where)
    except UnsafeFile:
        raise StateError(deep) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise StateError(f"{where}: not valid JSON ({short_reason(e)}): the file is truncated or corrupt") from None
    fmt = f"{where}: not an experiment state of Ray {RAY_TESTED} (see README, 'Upgrading Ray')"
    if not isinstance(state, dict) or not isinstance(state.get("trial_data"), list):
        raise StateError(f"{fmt}: no trial_data list")
    trials = []
    for i, item in enumerate(state["trial_data"]):
        try:
            trial_json, meta_json = item
            t = loads_json(trial_json, f"{where}: trial_data[{i}]")
            meta = (
                loads_json(meta_json, f"{where}: trial_data[{i}]") if isinstance(meta_json, str) else (meta_json or {})
            )
            trial_id, status = t["trial_id"], t.get("status", "PENDING")
            config = t.get("config") or {}
            if not (isinstance(trial_id, str) and isinstance(status, str) and isinstance(config, dict)):
                raise TypeError("trial_id, status or config of the wrong type")
            logdir, problem = t.get("relative_logdir") or f"trial_{trial_id}", None
            if not safe_relpath(logdir):  # "../other", "/etc", "a\\b": never read or deleted
                logdir, problem = (
                    "",
                    f"{where}: trial {trial_id}: relative_logdir {logdir!r} leads outside the study directory: ignored",
                )
            last_result = meta.get("last_result") or {}
            error_filename = meta.get("error_filename")
            trials.append(
                TrialState(
                    trial_id=trial_id,
                    status=status,
                    config=config,
                    logdir=logdir,
                    num_failures=int(meta.get("num_failures", 0) or 0),
                    last_result=last_result if isinstance(last_result, dict) else {},
                    error_filename=error_filename if isinstance(error_filename, str) else None,
                    problem=problem,
                )
            )
        except UnsafeFile:
            raise StateError(deep) from None
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            raise StateError(f"{fmt}: trial_data[{i}]: {short_reason(e)}") from None
    return trials


def short_reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:120] + "...") if len(text) > 120 else text or type(e).__name__


def state_files(study_dir: Path) -> list[Path]:
    """Experiment state files, oldest first (by the session timestamp in the name, as Tune orders them);
    a link leading out of the study directory is not one of them."""
    return sorted(
        p for p in Path(study_dir).glob(STATE_PATTERN) if p.is_file() and confined(study_dir, p.name) is not None
    )


def read_state_bytes(path: Path) -> bytes:
    """A state file's bytes (a regular file of at most `STATE_LIMIT` bytes: `UnsafeFile` otherwise)."""
    return read_bounded(path, STATE_LIMIT)


@dataclass(frozen=True)
class LatestState:
    trials: list[TrialState]
    path: Path | None  # the file read (None: no state yet)
    skipped: list[tuple[Path, str]]  # newer files that could not be read, with why


def read_latest(study_dir: Path) -> LatestState:
    """The newest readable state: a corrupt newer file is skipped for an older session's file or the
    backup snapshot, whichever is newer (`skipped` says which were passed over). A format error of
    the newest readable file is raised (a Ray upgrade must not give silently wrong tables)."""
    study_dir = Path(study_dir)
    skipped: list[tuple[Path, str]] = []
    backup = _backup_state(study_dir)
    # newest session first (session names are timestamps); within a session the file in the study
    # directory is newer than the backup copy of it
    candidates = sorted(
        [*state_files(study_dir), *([backup] if backup else [])],
        key=lambda p: (session_of(p) or "", p != backup),
        reverse=True,
    )
    first_format_error = None
    for path in candidates:
        try:
            return LatestState(parse_state(read_state_bytes(path), str(path)), path, skipped)
        except StateError as e:
            if "not valid JSON" not in str(e) and first_format_error is None:
                first_format_error = e
            skipped.append((path, str(e)))
        except UnsafeFile as e:  # a FIFO, a device, a file too large: passed over as a corrupt one
            skipped.append((path, str(e)))
        except OSError as e:
            skipped.append((path, f"{path}: cannot be read ({e.strerror or e})"))
    if first_format_error is not None:
        raise first_format_error
    return LatestState([], None, skipped)


def _backup_state(study_dir: Path) -> Path | None:
    found = state_files(Path(study_dir) / BACKUP_DIR)
    return found[-1] if found else None


def session_of(path: str | Path) -> str | None:
    m = _SESSION.match(Path(path).name)
    return m.group("session") if m else None


def _snapshot_files(directory: Path, session: str) -> list[Path]:
    """The files Tune wrote for one session's snapshot (state, searcher, callbacks)."""
    return [
        p
        for p in Path(directory).iterdir()
        if p.is_file() and (p.name.endswith(f"-{session}.json") or p.name.endswith(f"-{session}.pkl"))
    ]


def backup_snapshot(staging_dir: str | Path, study_dir: Path) -> bool:
    """Copy the newest snapshot in Tune's driver staging directory (written synchronously by the
    driver's loop, so complete when a callback runs) to ``STUDY/.state-backup/`` atomically, if its
    state parses. Local storage only; returns True when a backup was written."""
    staging = Path(staging_dir)
    states = state_files(staging) if staging.is_dir() else []
    if not states:
        return False
    newest = states[-1]
    try:
        parse_state(read_state_bytes(newest), str(newest))
    except (StateError, OSError, UserError):
        return False
    session = session_of(newest)
    target = Path(study_dir) / BACKUP_DIR
    target.mkdir(parents=True, exist_ok=True)
    for src in _snapshot_files(staging, session):
        tmp = target / f".{src.name}.tmp"
        tmp.write_bytes(src.read_bytes())
        os.replace(tmp, target / src.name)
    for old in target.iterdir():  # keep one snapshot: the newest
        if old.is_file() and not old.name.endswith((f"-{session}.json", f"-{session}.pkl")):
            old.unlink(missing_ok=True)
    return True


def repair_state(study_dir: Path, epochs_default: int | None = None) -> str | None:
    """Before Tune restores a study: if the newest state file is corrupt, set aside that session's
    files (renamed ``*.corrupt``) and put back the newest good snapshot (the backup, or an older
    session's files), so Tune never fails to restore and silently starts the study over. Returns a
    one-line note of what was done, None when the state is fine; `StateError` (exit 2) when no good
    snapshot exists. Trials that finished after the copy put back are kept finished (`adopt_finished`;
    `epochs_default`: the family's epochs when a trial's config has none)."""
    study_dir = Path(study_dir)
    files = state_files(study_dir)
    if not files:
        return _no_state(study_dir, epochs_default)
    newest = files[-1]
    try:
        parse_state(read_state_bytes(newest), str(newest))
        return None
    except (StateError, UnsafeFile) as e:
        problem = str(e)
    bad = [f for f in files if not _parses(f)]
    good = [f for f in files if f not in bad]
    backup = _backup_state(study_dir)
    if backup is not None and not _parses(backup):
        backup = None
    use_backup = backup is not None and (not good or session_of(backup) >= session_of(good[-1]))
    if not use_backup and not good:
        raise StateError(
            f"{problem}; no earlier good copy of the state exists, so the study cannot be resumed safely: "
            "start it again under a new --name (its finished trials stay in this directory)"
        )
    for f in bad:
        for companion in _snapshot_files(study_dir, session_of(f)):
            os.replace(companion, companion.with_name(companion.name + CORRUPT_SUFFIX))
    if use_backup:
        session = session_of(backup)
        for src in _snapshot_files(backup.parent, session):
            os.replace(_copy_tmp(src, study_dir), study_dir / src.name)
        source = f"the backup copy saved at {_clock(backup)}"
        restored = study_dir / backup.name
    else:
        source = f"{good[-1].name} (saved at {_clock(good[-1])})"
        restored = good[-1]
    return (
        f"{newest.name} is corrupt ({problem.split(': ', 1)[-1]}); set aside as {newest.name}{CORRUPT_SUFFIX}, "
        f"resuming from {source}{_adopted(study_dir, restored, epochs_default)}"
    )


def adopt_finished(study_dir: Path, state_path: Path, epochs_default: int | None) -> list[str]:
    """Mark TERMINATED, in a restored (older) state, every unfinished trial whose result.json already
    holds all its epochs (1..``epochs`` of its config, else `epochs_default`) or ends with a diverged
    epoch, with that last row as its last result: a copy of the state older than the trials' work
    must never make Tune train them again and rewrite their results. Returns their ids."""
    study_dir = Path(study_dir)
    state = loads_json(read_state_bytes(state_path), str(state_path))
    adopted = []
    for item in state.get("trial_data") or []:
        trial, meta = loads_json(item[0], str(state_path)), loads_json(item[1], str(state_path))
        if trial.get("status") in ("TERMINATED", "ERROR"):
            continue
        logdir = trial.get("relative_logdir") or f"trial_{trial.get('trial_id')}"
        config = trial.get("config") or {}
        n = config.get("epochs", epochs_default)
        if not safe_relpath(logdir) or not isinstance(n, int) or "__pack__" in config:
            continue
        result = confined(study_dir, f"{logdir}/{RESULT_FILE}")
        try:
            rows = read_jsonl(result) if result is not None else []
        except UserError:
            continue
        done = sorted({int(r["epoch"]) for r in rows if isinstance(r.get("epoch"), int)})
        last = max((r for r in rows if isinstance(r.get("epoch"), int)), key=lambda r: r["epoch"], default=None)
        if last is None or not (done == list(range(1, n + 1)) or last.get("diverged")):
            continue
        trial["status"] = "TERMINATED"
        meta["last_result"] = {**(meta.get("last_result") or {}), **last}
        item[0], item[1] = json.dumps(trial), json.dumps(meta)
        adopted.append(str(trial.get("trial_id")))
    if adopted:
        tmp = state_path.with_name(f".{state_path.name}.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, state_path)
    return adopted


def _adopted(study_dir: Path, state_path: Path, epochs_default: int | None) -> str:
    """`adopt_finished` as the tail of a repair note ("" when none)."""
    try:
        ids = adopt_finished(study_dir, state_path, epochs_default)
    except (OSError, UserError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return ""
    return f"; {len(ids)} trial(s) finished after that copy kept as finished from their results" if ids else ""


def _no_state(study_dir: Path, epochs_default: int | None = None) -> str | None:
    """Tune's ``tuner.pkl`` is there but no state file (a run stopped within seconds of starting, or the
    file was deleted): put back the backup, or start afresh when no trial has saved anything yet."""
    backup = _backup_state(study_dir)
    if backup is not None and _parses(backup):
        for src in _snapshot_files(backup.parent, session_of(backup)):
            os.replace(_copy_tmp(src, study_dir), study_dir / src.name)
        adopted = _adopted(study_dir, study_dir / backup.name, epochs_default)
        return f"no {STATE_PATTERN} in {study_dir}; resuming from the backup copy saved at {_clock(backup)}{adopted}"
    saved = [p for p in study_dir.glob("trial_*/*") if p.name.startswith("checkpoint_") or p.name == RESULT_FILE]
    if saved:
        raise StateError(
            f"{study_dir}: no {STATE_PATTERN} (Tune's saved state) although trials saved results "
            f"(e.g. {saved[0].relative_to(study_dir)}); the study cannot be resumed safely: start it again "
            "under a new --name"
        )
    pkl = study_dir / TUNER_FILE
    if pkl.exists():
        os.replace(pkl, pkl.with_name(pkl.name + CORRUPT_SUFFIX))
    return f"no state was saved before the last run stopped (no trial had saved anything): starting {study_dir.name} afresh"


def _copy_tmp(src: Path, directory: Path) -> Path:
    tmp = Path(directory) / f".{src.name}.tmp"
    tmp.write_bytes(read_state_bytes(src))
    return tmp


def _parses(path: Path) -> bool:
    try:
        parse_state(read_state_bytes(path), str(path))
        return True
    except (StateError, OSError, UserError):
        return False


def _clock(path: Path) -> str:
    import time

    return time.strftime("%H:%M:%S", time.localtime(path.stat().st_mtime))


def matches_state(name: str) -> bool:
    return fnmatch.fnmatch(name, STATE_PATTERN)


def read_jsonl(path: Path, limit: int = RESULT_LIMIT) -> list[dict]:
    """The rows of a JSON-lines file (Tune's result.json); a line cut by a crash (or nested too deeply
    to parse) is skipped. `UnsafeFile` (one line) for a FIFO, a device or a file over `limit` bytes."""
    try:
        data = read_bounded(path, limit)
    except FileNotFoundError:
        return []
    return rows_of_jsonl(data)


def rows_of_jsonl(data: bytes) -> list[dict]:
    """The rows of a JSON-lines file's bytes, as `read_jsonl` reads them."""
    text = data.decode("utf-8", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    try:  # one parse of the whole file: a tenth of the per-line calls' cost on 100-epoch files
        rows = json.loads("[" + ",".join(lines) + "]")
        if all(isinstance(r, dict) for r in rows):
            return rows
    except (json.JSONDecodeError, RecursionError):
        pass
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):  # a line cut by a crash, or a crafted one
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
