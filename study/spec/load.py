"""A spec file in, a validated `Spec` out: `load_spec` (read, ``--set``, validate, check) and
`parse_spec` for a raw dict; `spec_to_yaml` writes the resolved spec a study records."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.errors import UserError, short
from core.layout import EXPERIMENT_STATE_GLOB, FACTS_FILE, RESULTS_DIR, SPEC_FILE, SPEC_SOURCE_FILE, TUNER_FILE
from core.safe_read import notice
from study.spec.checks import check_configs, check_keys, check_limits, check_paper, check_shape, reference_problems
from study.spec.model import Spec
from study.spec.overrides import apply_overrides
from study.spec.yamlfile import read_yaml

# pydantic's names of union members without a class name: float, constrained-float, function-after[...]
_UNION_MEMBER = re.compile(r"(float|int|str|bool|none|constrained-\w+|function-\w+\[.*\])")


def _loc(loc: tuple[Any, ...]) -> str:
    # pydantic adds the union member's name (e.g. "Grid") to the location: drop those
    parts: list[str] = []
    for p in map(str, loc):
        if p[:1].isupper() or (parts and parts[-1] == p) or _UNION_MEMBER.fullmatch(p):  # not keys of the file
            continue
        parts.append(p)
    return ".".join(parts) or "(top level)"


def _format_error(path: str, err: ValidationError) -> str:
    errors = err.errors()
    # a union failure reports every member; the most useful is the one deepest into the value
    first = max(errors, key=lambda e: len(e["loc"])) if errors else None
    if first is None:
        return f"{path}: invalid spec"
    msg = first["msg"].removeprefix("Value error, ")
    where = _loc(first["loc"])
    value = first.get("input")
    shown = "" if first["type"] == "missing" or "got" in msg or not first["loc"] else f" (got {short(value)})"
    if msg.startswith(f"{where}."):  # the validator named the exact key path itself
        where, msg = msg.split(": ", 1)
    extra = len({_loc(e["loc"]) for e in errors}) - 1
    more = f" [+{extra} more error(s)]" if extra > 0 else ""
    return f"{path}: {where}: {msg}{shown}{more}"


def parse_spec(
    raw: dict[str, Any], path: str | Path = "<spec>", *, references: bool = True, recorded: bool = False
) -> Spec:
    """Validate a raw dict into a `Spec`, including the trainable's known keys; `references`: also
    that every paper row and claim selects a configuration the study runs (`check_paper`; a smoke
    spec, whose grid leaves out what its data cannot hold, is checked as the full spec was).
    `recorded`: `raw` is a study's own ``spec.yaml``: without ``search.inert`` it predates
    collapsing and ran every grid point (``keep``); a spec file without it collapses."""
    search = raw.get("search", {})
    if isinstance(search, dict) and "inert" not in search and not recorded:  # a spec file's default
        raw = {**raw, "search": {**search, "inert": "collapse"}}
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        raise UserError(_format_error(str(path), e)) from None
    check_limits(spec, path)
    check_keys(spec, path)
    check_configs(spec, path)
    check_paper(spec, path, references=references)
    check_shape(spec, path)
    return spec


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read, override (``--set``) and validate a spec file. A study's recorded ``spec.yaml``
    (`is_recorded`) is read as what the study ran (`parse_spec`'s `recorded`): an older study still
    reads and reports, its paper references not checked again."""
    path = Path(path)
    file_raw = read_yaml(path)
    raw = apply_overrides(file_raw, overrides or [])
    recorded = is_recorded(path)
    if overrides and not recorded:
        raw = _leave_out_narrowed(raw, file_raw, path)
    return parse_spec(raw, path, references=not recorded, recorded=recorded)


def _leave_out_narrowed(raw: dict[str, Any], file_raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """`raw` without the paper rows and claims of the file that this run's ``--set`` left with
    nothing to select (a grid narrowed to one net leaves the other nets' rows unjudged): each left
    out with one line. A row or claim the overrides changed or added is checked as written (a
    stale reference is refused), and so is every reference when the file is read alone."""
    spec = parse_spec(raw, path, references=False)
    paper, file_paper = raw.get("paper") or {}, file_raw.get("paper") or {}
    drop: dict[str, set[int]] = {"results": set(), "claims": set()}
    for section, i, line in reference_problems(spec, path):
        file_items = file_paper.get(section) or [] if isinstance(file_paper, dict) else []
        if i < len(file_items) and file_items[i] == paper[section][i]:
            drop[section].add(i)
            notice(f"{line}: left out of this run (its --set runs no configuration the row or claim names)")
    if not any(drop.values()):
        return raw
    kept = {s: [x for i, x in enumerate(paper.get(s) or []) if i not in drop[s]] for s in drop if s in paper}
    return {**raw, "paper": {**paper, **kept}}


def is_recorded(path: Path) -> bool:
    """True for a study's own ``spec.yaml``: beside the files a study directory holds."""
    d = Path(path).parent
    if Path(path).name != SPEC_FILE:
        return False
    marks = (SPEC_SOURCE_FILE, FACTS_FILE, TUNER_FILE, RESULTS_DIR)
    return any((d / m).exists() for m in marks) or any(d.glob(EXPERIMENT_STATE_GLOB))


# left out while unset: older studies' spec.yaml match
TRACKER_KEYS = ("log_to", "tensorboard", "mlflow", "wandb")
RECORD_KEYS = ("run",)


def spec_to_yaml(spec: Spec) -> str:
    data = spec.model_dump(mode="json", exclude_none=False)
    for key in (*TRACKER_KEYS, *RECORD_KEYS):
        if data.get(key) in (None, []):
            data.pop(key, None)
    return yaml.safe_dump(data, sort_keys=False)
