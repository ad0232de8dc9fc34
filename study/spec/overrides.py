"""``--set KEY=VALUE``: dotted key paths set in a raw spec before it is validated."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from core.errors import UserError, one_line, short
from study.spec.yamlfile import load_yaml


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=VALUE` -> (["a", "b"], VALUE parsed as YAML)."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: must be KEY=VALUE with a dotted key path, e.g. fixed.epochs=2")
    key, raw = item.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise UserError(f"--set {item!r}: key path must be non-empty names joined by dots")
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as e:  # not silently a string: say what is wrong and how to pass text
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(
            f"--set {short(item)}: the value is not valid YAML ({problem}); "
            f"quote it to pass text, e.g. --set '{key}=\"...\"'"
        ) from None
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted key paths in a raw spec dict (copies; creates intermediate mappings)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise UserError(
                    f"--set {one_line(item, 200)}: {'.'.join(parts[: i + 1])} is not a mapping (got {short(nxt)})"
                )
            node = nxt
        node[parts[-1]] = value
    return out
