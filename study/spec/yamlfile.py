"""Reading a spec file's YAML safely: YAML 1.2 scalars, no duplicate keys, bounded size.

`read_yaml` reads a file (at most `MAX_SPEC_BYTES`) into a mapping; `load_yaml` parses text (also
the values of ``--set``) with `_Loader` and refuses documents whose aliases expand to more than
`MAX_YAML_VALUES` values. Every error is one `UserError` line naming the file, line and column.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from core.errors import UserError

MAX_SPEC_BYTES = 4_000_000  # a spec file (the 800-trial grid is 3 KB)
MAX_YAML_VALUES = 100_000  # scalars, lists and mappings in one YAML document, aliases expanded


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with three YAML 1.2 rules: `1e-3`, `5E4` and `-.5` are floats (PyYAML's
    YAML 1.1 makes strings of them), only true/false are booleans (not yes/no/on/off), and a key
    given twice in one mapping is an error (not "the last one wins"). Integers are as in PyYAML."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: PyYAML reports it itself
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


_BOOL, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# Limits checked before anything is built from a spec (a seed list, a grid, a YAML value): each


class _TooLarge(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def _check_expansion(root: yaml.Node, limit: int = MAX_YAML_VALUES) -> None:
    """Raise `_TooLarge` when the document, with every alias expanded, has more than `limit` values
    (nested aliases: a 1 KB file can stand for billions). Sizes are memoised per node, so this is
    linear in the file, and a recursive alias is an error too."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes and sizes[id(node)] >= 0:
            continue
        kids: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        if not children_done:
            if sizes.get(id(node)) == -1:
                raise _TooLarge("a recursive alias (an anchor used inside itself)", node.start_mark)
            sizes[id(node)] = -1  # in progress
            stack.append((node, True))
            for k in kids:
                if sizes.get(id(k)) == -1:
                    raise _TooLarge("a recursive alias (an anchor used inside itself)", k.start_mark)
                if id(k) not in sizes:
                    stack.append((k, False))
            continue
        total = 1 + sum(sizes[id(k)] for k in kids)
        if total > limit:
            raise _TooLarge(
                f"more than {limit:,} values once aliases are expanded (nested aliases?); write the values out",
                node.start_mark,
            )
        sizes[id(node)] = total


def load_yaml(text: str) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: no such spec file")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise UserError(f"{path}: a spec file is at most {MAX_SPEC_BYTES:,} bytes (got {path.stat().st_size:,})")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: {where}invalid YAML ({problem})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: (top level): must be a mapping of keys, but got {type(raw).__name__}")
    return raw
