"""The docs cannot drift: the generated tables and README blocks equal what the code says now.

`scripts/gen_docs.py` writes Markdown snippets under docs/generated/ (family defaults, parameter
counts, shipped spaces, benchmark figures, the command table) and the generated blocks of
README.md; here it regenerates into a temporary directory and every file must be unchanged.
After changing a default, a space or a benchmark result: ``python scripts/gen_docs.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

GENERATED = REPO / "docs" / "generated"


def load_gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_docs"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen_docs():
    return load_gen_docs()


@pytest.fixture(scope="module")
def snippets(gen_docs) -> dict[str, str]:
    return gen_docs.generate()


def test_generated_tables_are_current(gen_docs, snippets, tmp_path: Path) -> None:
    gen_docs.write(tmp_path, snippets)
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.md")}
    stored = {p.name: p.read_text() for p in GENERATED.glob("*.md")}
    stale = sorted(n for n in set(fresh) | set(stored) if fresh.get(n) != stored.get(n))
    assert not stale, f"docs/generated is stale ({', '.join(stale)}): run python scripts/gen_docs.py"


def test_readme_blocks_are_current(gen_docs) -> None:
    readme = (REPO / "README.md").read_text()
    for name in gen_docs.README_BLOCKS:
        assert f"<!-- begin generated: {name} (scripts/gen_docs.py) -->" in readme, name
    assert gen_docs.readme_text(readme) == readme, "README.md's generated blocks are stale: run python scripts/gen_docs.py"


def test_every_snippet_is_included_by_a_page(snippets) -> None:
    pages = "\n".join(p.read_text() for p in (REPO / "docs").rglob("*.md") if "generated" not in p.parts)
    unused = [n for n in snippets if f'"generated/{n}"' not in pages]
    assert not unused, f"generated but included by no page: {unused}"


def test_tables_hold_what_the_code_says(snippets) -> None:
    """Spot checks against the sources, so that a generator that wrote nothing useful fails too."""
    from study.spec import load_spec
    from trainables import REGISTRY
    from trainables.common import COMMON_DEFAULTS

    common = snippets["defaults_common.md"]
    for key in COMMON_DEFAULTS:
        assert f"| `{key}` |" in common
    assert "initial learning rate" in common  # the comment beside `lr` in trainables/common.py
    for name in REGISTRY:
        assert f"defaults_{name}.md" in snippets
    spaces = snippets["spaces.md"]
    for path in sorted((REPO / "search_spaces").glob("*.yaml")):
        assert f"| `{path.name}` |" in spaces
    quick = load_spec(REPO / "search_spaces" / "quickstart.yaml")
    assert f"| `quickstart.yaml` | `{quick.trainable}` | `{quick.data.source}` | {quick.n_trials():,} |" in spaces
    # counts that reproduce the papers' (exactly, or as the paper rounds them)
    assert "| `Siamese` | 34,964 |" in snippets["params_digit_pairs_grid.md"]
    for row in ("| `resnet50` | `plain` | 25,557,032 |", "| `resnet50` | `ssm` | 28,638,176 |", "| `resnet50` | `3fc` | 29,655,032 |"):
        assert row in snippets["params_ssm_imagenet.md"], row
    for row in ("| `resnet50` | `3` | 28,203,048 |", "| `resnet152` | `4` | 63,100,968 |"):
        assert row in snippets["params_wsms_imagenet.md"], row
    assert "study scorecard" in snippets["commands.md"]


def test_check_mode_names_a_stale_file(gen_docs, snippets, tmp_path: Path) -> None:
    gen_docs.write(tmp_path, snippets)
    (tmp_path / "spaces.md").write_text("old\n")
    (tmp_path / "gone.md").write_text("a snippet nothing generates any more\n")
    assert gen_docs.stale_files(tmp_path, snippets) == ["gone.md", "spaces.md"]
