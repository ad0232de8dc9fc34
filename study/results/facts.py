"""``STUDY/study.json``: the facts of a study's family that its readers need without the family.

`study ls` and `study status` tell a trial that ran all its epochs from one that stopped early,
which needs the family's default ``epochs`` when the spec sets none; the family lives in
`trainables` (torch). `study run` and `study report` write these facts next to ``spec.yaml``
(`write_facts`), so the counts read them (`read_facts`) in milliseconds; a study written before
this file existed falls back on the family itself (`epochs_default`).

Keys: ``trainable``; ``epochs_default``; ``metric_semantics`` ({name: {direction, unit,
deterministic}}, `core.metrics.semantics_to_json`) of every metric the family declares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.atomic import write_text
from core.errors import UserError
from core.layout import FACTS_FILE
from core.safe_read import SMALL_LIMIT, loads_json, read_bounded


def family_facts(trainable: str) -> dict[str, Any]:
    """The facts of the family `trainable` (imports `trainables`, so torch)."""
    from core.metrics import semantics_to_json
    from trainables import get_family

    family = get_family(trainable)
    return {
        "trainable": family.name,
        "epochs_default": int(family.all_defaults["epochs"]),
        "metric_semantics": semantics_to_json(family.metrics),
    }


def write_facts(study_dir: Path, trainable: str) -> Path:
    """Write ``STUDY/study.json`` (atomically) with `family_facts`; returns its path."""
    path = Path(study_dir) / FACTS_FILE
    write_text(json.dumps(family_facts(trainable), indent=1) + "\n", path)
    return path


def read_facts(study_dir: Path) -> dict[str, Any] | None:
    """The study's facts, None when the file is missing or unreadable (an older study)."""
    try:
        path = Path(study_dir) / FACTS_FILE
        facts = loads_json(read_bounded(path, SMALL_LIMIT).decode("utf-8"), str(path))
    except (OSError, ValueError, UserError):
        return None
    return facts if isinstance(facts, dict) else None


def epochs_default(study_dir: Path, trainable: str) -> int:
    """The family's default number of epochs: from ``study.json`` when it names this trainable,
    else from the family (slow: imports torch). `UserError` for an unknown trainable."""
    facts = read_facts(study_dir)
    if facts and facts.get("trainable") == trainable and isinstance(facts.get("epochs_default"), int):
        return facts["epochs_default"]
    from trainables import get_family

    return int(get_family(trainable).all_defaults["epochs"])
