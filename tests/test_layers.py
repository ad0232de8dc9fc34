"""The import layers: every module of `core`, `trainables`, `analysis` and `study`, read with `ast`.

    study                 spec, run, results, CLI (imports analysis only to render reports)
    trainables  analysis  side by side: neither imports the other; analysis imports no torch
    core                  neutral: imports nothing of ours, nothing heavy at import time

Every import counts, at module level and inside functions alike (a function-local import is still
a dependency; only ``if TYPE_CHECKING:`` blocks are left out of the circles). The tests fail on an
import that points up or across, and on any import circle between modules; each failure lists
the offending edges as ``module:line -> module``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "trainables", "analysis", "study")
LAYER = {"core": 0, "trainables": 1, "analysis": 1, "study": 2}
# imports across one layer (trainables <-> analysis) the design allows, as (importer, imported) packages
ACROSS_ALLOWED: set[tuple[str, str]] = set()
# third-party packages a layer must not import at all, and those core must not import at module level
FORBIDDEN_THIRD_PARTY = {"analysis": ("torch", "torchvision")}
CORE_NOT_AT_IMPORT = ("torch", "torchvision", "ray", "plotly", "pandas", "scipy", "pyarrow", "numpy")


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module (ours: the most specific module that exists; else the top-level name)
    line: int
    module_level: bool
    type_checking: bool

    def __str__(self) -> str:
        return f"{self.source}:{self.line} -> {self.target}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules(root: Path = REPO) -> dict[str, Path]:
    """{module name: file} of every module of `PACKAGES` under `root`."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[module_name(path, root)] = path
    return found


def resolve(name: str, root: Path = REPO) -> str:
    """The module of ours `name` refers to (its longest prefix that is a module), else its top-level name."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules(root):
            return candidate
    return parts[0]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, root: Path = REPO) -> list[Edge]:
    """Every import statement of module `name`, wherever it is in the file."""
    path = modules(root)[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges: list[Edge] = []

    def visit(node: ast.AST, depth: int, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            in_function = depth + isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            guarded = type_checking or (isinstance(child, ast.If) and _is_type_checking(child))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    edges.append(Edge(name, resolve(alias.name, root), child.lineno, depth == 0, type_checking))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the package, up level - 1
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in child.names:  # `from pkg import submodule` depends on the submodule
                    target = resolve(f"{base}.{alias.name}" if alias.name != "*" else base, root)
                    edges.append(Edge(name, target, child.lineno, depth == 0, type_checking))
            visit(child, in_function, guarded)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), 0, False)
    unique = {(e.target, e.line): e for e in edges if e.target != e.source}  # `from m import a, b`: one edge
    return list(unique.values())


@cache
def all_edges(root: Path = REPO) -> tuple[Edge, ...]:
    return tuple(e for name in modules(root) for e in imports_of(name, root))


def layer_violations(root: Path = REPO) -> list[str]:
    out = []
    for e in all_edges(root):
        src, dst = e.source.split(".")[0], e.target.split(".")[0]
        if e.target in modules(root):
            if LAYER[dst] > LAYER[src]:
                out.append(f"{e} (upward: {src} is below {dst})")
            elif LAYER[dst] == LAYER[src] and src != dst and (src, dst) not in ACROSS_ALLOWED:
                out.append(f"{e} (across: {src} and {dst} must not import each other)")
        elif dst in FORBIDDEN_THIRD_PARTY.get(src, ()):
            out.append(f"{e} ({src} must not import {dst})")
        elif src == "core" and e.module_level and dst in CORE_NOT_AT_IMPORT:
            out.append(f"{e} (core imports nothing heavy at import time)")
    return out


def import_cycles(root: Path = REPO) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a list of modules."""
    graph: dict[str, set[str]] = {m: set() for m in modules(root)}
    for e in all_edges(root):
        if e.target in modules(root) and not e.type_checking:
            graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # iterative depth-first search (no recursion limit on deep chains)
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def cycle_edges(component: list[str]) -> list[str]:
    members = set(component)
    return [str(e) for e in all_edges() if e.source in members and e.target in members and not e.type_checking]


def test_every_package_is_read() -> None:
    names = modules()
    for pkg in PACKAGES:
        assert pkg in names, f"{pkg}/__init__.py not found"
    assert len(names) > 20


def test_the_reader_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    """The walker itself, on a tree of its own: a function-local import is an edge, `from pkg import
    submodule` points at the submodule, a relative import is resolved, and an upward import and a
    circle are reported with their lines."""
    files = {
        "core/__init__.py": "",
        "core/errors.py": "",
        "core/probe.py": "import os\n\n\ndef f():\n    from study.results import state\n    from . import errors\n",
        "trainables/__init__.py": "",
        "analysis/__init__.py": "import torch\n",
        "study/__init__.py": "",
        "study/results/__init__.py": "",
        "study/results/state.py": "from study.results.trials import x\n",
        "study/results/trials.py": "def g():\n    import study.results.state\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    edges = imports_of("core.probe", tmp_path)
    assert [(e.target, e.line, e.module_level) for e in edges] == [
        ("os", 1, True), ("study.results.state", 5, False), ("core.errors", 6, False),
    ]  # fmt: skip
    assert sorted(layer_violations(tmp_path)) == [
        "analysis:1 -> torch (analysis must not import torch)",
        "core.probe:5 -> study.results.state (upward: core is below study)",
    ]
    assert import_cycles(tmp_path) == [["study.results.state", "study.results.trials"]]


def test_imports_point_down() -> None:
    bad = layer_violations()
    assert not bad, f"{len(bad)} import(s) against the layers:\n  " + "\n  ".join(bad)


def test_no_import_circles() -> None:
    cycles = import_cycles()
    lines = [f"{' <-> '.join(c)}:\n    " + "\n    ".join(cycle_edges(c)) for c in cycles]
    assert not cycles, f"{len(cycles)} import circle(s):\n  " + "\n  ".join(lines)


FACADES = ("study.spec", "study.results", "study.runner", "study.shapes", "study.tune_state", "study.trial_rows")


def test_study_layers_import_submodules_not_facades() -> None:
    """`study.spec`, `study.results` and `study.run` (and the CLI) import each other's submodules,
    never the re-exporting modules kept for scripts (`FACADES`): reading a light submodule never
    runs a heavy re-export, and a facade can never close a circle."""
    inside = ("study.spec.", "study.results.", "study.run.", "study.cli")
    bad = [str(e) for e in all_edges() if e.source.startswith(inside) and e.target in FACADES]
    assert not bad, "\n".join(bad)
