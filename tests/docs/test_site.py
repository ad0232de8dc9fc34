"""The docs site builds in strict mode, fetches nothing, and the README is a landing page.

Run in the fast tier: a strict `mkdocs build` takes a few seconds.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

QUICKSTART = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/study run search_spaces/quickstart.yaml"
)
README = REPO / "README.md"
FAMILIES = ("digit_pairs", "share_split", "ssm", "wsms", "encapnet")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_site_builds_strictly_with_every_page(site: Path) -> None:
    for page in ("index.html", "papers/index.html", "results/index.html", "benchmarks/index.html"):
        assert (site / page).is_file(), page
    for family in FAMILIES:
        assert (site / "families" / family / "index.html").is_file(), family
    nav = (site / "index.html").read_text()
    for page in sorted((REPO / "docs").rglob("*.md")):
        rel = page.relative_to(REPO / "docs")
        if rel.parts[0] in ("generated", "hooks"):
            continue
        url = "" if rel.as_posix() == "index.md" else rel.with_suffix("").as_posix() + "/"
        assert f'href="{url}"' in nav or (url == "" and 'href="."' in nav), f"{rel} is not in the nav"


def test_snippets_are_expanded(site: Path) -> None:
    html = (site / "guide" / "yaml" / "index.html").read_text()
    assert "--8&lt;--" not in html and "--8<--" not in html
    assert "quickstart.yaml" in html and "initial learning rate" in html


def test_site_fetches_nothing(site: Path) -> None:
    """No script, stylesheet, font or image from the network: the site opens offline."""
    remote = []
    for page in site.rglob("*.html"):
        text = page.read_text()
        remote += re.findall(r'<(?:script|img|iframe)[^>]+src="(?:https?:)?//[^"]+"', text)
        remote += re.findall(r'<link[^>]+href="(?:https?:)?//[^"]+"', text)
    for css in site.rglob("*.css"):
        remote += re.findall(r"url\((?:'|\")?(?:https?:)?//[^)]+\)", css.read_text())
    assert not remote, remote[:5]


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
    assert blocks[:2] == [QUICKSTART, "bash scripts/test.sh"]
    assert text.index(QUICKSTART) < text.index("## ")  # before the first section


def test_readme_is_a_landing_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    for family in FAMILIES:
        assert f"`{family}`" in text, family
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (REPO / target).exists(), f"README links {target}, which does not exist"


def prose_lines(page: Path):
    """(line number, line) of a Markdown page outside fenced code blocks."""
    fenced = False
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield n, line


def test_docs_have_no_first_person_no_ticket_numbers_no_private_notes() -> None:
    pages = [README, REPO / "CHANGELOG.md", *(REPO / "docs").rglob("*.md")]
    pattern = re.compile(r"\b(?:[Ww]e|[Oo]urs?|[Ii]ssue \d+)\b|PAPERS\.md")
    found = [
        f"{page.relative_to(REPO)}:{n}: {m.group(0)}"
        for page in pages
        for n, line in prose_lines(page)
        for m in pattern.finditer(line)
    ]
    assert not found, found[:10]
