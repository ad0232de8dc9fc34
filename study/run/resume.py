"""Running a study again resumes it: the recorded spec, the state Tune restores, what is complete.

`record_spec` saves the resolved spec (and the family facts, ``study.json``) and refuses a resume
whose trials would differ; `complete_counts` tells a study with nothing left to run (no Ray is
started for it); `repair_state` replaces a corrupt newest state by the newest good snapshot before
Tune restores it; `prune_finished` keeps each finished trial's last checkpoint only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import yaml

from core.atomic import write_text
from core.errors import UserError, short
from core.layout import FACTS_FILE, SPEC_FILE, SPEC_SOURCE_FILE
from study.results import state as tune_state
from study.results.counts import study_counts
from study.results.facts import write_facts
from study.run.callbacks import prune_checkpoints
from study.spec.load import spec_to_yaml
from study.spec.model import Spec
from study.storage import Store

# spec keys a resumed study may change (no trial uses them; the name is the study's directory anyway)
EDITABLE = {"name": None, "description": None, "paper": None, "run": None}  # run: how it was run (--set, --smoke)


def spec_difference(old: dict, new: dict, prefix: str = "") -> str | None:
    """The first key path where two spec dicts differ, with both values; None if equal."""
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            return spec_difference(a, b, f"{prefix}{key}.")
        return f"{prefix}{key} was {short(a)}, now {short(b)}"
    return None


def with_defaults(raw: dict) -> dict:
    """A recorded spec as the current model reads it: keys added to the model since the study was
    started take their defaults (an older study resumes); a spec the model no longer reads is left
    as it is (the difference is then reported)."""
    try:
        return yaml.safe_load(spec_to_yaml(Spec.model_validate(raw)))
    except (ValueError, TypeError):
        return raw


def record_spec(store: Store, name: str, spec: Spec, spec_path: str | Path) -> Path:
    """Save the resolved spec; refuse to resume a study whose trials would differ (`spec_difference`;
    `description` and `paper` may change, and are then saved). Returns the local dir."""
    text = spec_to_yaml(spec)
    from ray import tune

    existing = store.read_text(name, SPEC_FILE)
    local = store.local_dir(name)
    if existing is not None and tune.Tuner.can_restore(store.study_path(name)):
        if existing == text:
            record_facts(store, name, spec)
            return local
        # what the trials ran must not change; the description and the paper's numbers may
        old, new = with_defaults(yaml.safe_load(existing) or {}), yaml.safe_load(text)
        changed = spec_difference({**old, **EDITABLE}, {**new, **EDITABLE})
        if changed:
            raise UserError(
                f"{store.study_path(name)}: this study was started with a different spec ({changed}); "
                f"use --name to start a new study, or rerun with the same file and --set values"
            )
    local.mkdir(parents=True, exist_ok=True)
    (local / SPEC_FILE).unlink(missing_ok=True)
    write_text(text, local / SPEC_FILE)
    write_text(str(Path(spec_path).resolve()) + "\n", local / SPEC_SOURCE_FILE)
    store.push(name, SPEC_FILE, SPEC_SOURCE_FILE)
    record_facts(store, name, spec)
    return local


def record_facts(store: Store, name: str, spec: Spec) -> None:
    """Write ``study.json`` (`study.results.facts`) for the counts of `study ls` and `status`."""
    write_facts(store.local_dir(name), spec.trainable)
    store.push(name, FACTS_FILE)


def complete_counts(store: Store, name: str, spec: Spec) -> dict[str, int] | None:
    """Trials by status of a study whose every trial has finished (read from its saved state), else None."""
    if store.read_text(name, SPEC_FILE) is None:
        return None
    try:
        counts = study_counts(store.pull(name))
    except tune_state.StateError:  # a corrupt state: `repair_state` deals with it (or refuses)
        return None
    finished = sum(counts.get(s, 0) for s in ("TERMINATED", "DIVERGED", "STOPPED", "ERROR"))
    return counts if finished == sum(counts.values()) == spec.n_trials() else None


def repair_state(store: Store, name: str, out: TextIO, spec: Spec | None = None) -> None:
    """Before Tune restores a study: a corrupt newest state is replaced by the newest good snapshot (or
    the run is refused, exit 2), so Tune never fails to restore and silently starts the study over;
    trials that finished after the copy put back are kept finished (`tune_state.adopt_finished`)."""
    from ray import tune

    if not tune.Tuner.can_restore(store.study_path(name)):
        return
    if store.remote:  # checked on the local mirror; repairing shared storage is left to the user
        mirror = store.pull(name)
        files = tune_state.state_files(mirror)
        if files:
            tune_state.parse_state(tune_state.read_state_bytes(files[-1]), f"{store.study_path(name)}/{files[-1].name}")
        return
    default = None
    if spec is not None:
        from study.results.facts import epochs_default

        default = epochs_default(store.local_dir(name), spec.trainable)
    note = tune_state.repair_state(store.local_dir(name), default)
    if note:
        print(f"[study] {name}: {note}", file=out, flush=True)


def prune_finished(store: Store, name: str) -> None:
    """`prune_checkpoints` of the study's finished trials, after the run (never fails the study)."""
    try:
        prune_checkpoints(*store.fs_path(name))
    except (OSError, ValueError, KeyError):  # pruning only saves space: never fail a study over it
        pass
