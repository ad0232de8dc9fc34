"""MkDocs hook: the site's nav from the pages that exist.

Known pages come in a fixed order with their titles; any other page under docs/ is appended to
its folder's section (titled by its first heading), so pages added later are always in the nav
and a page that does not exist yet never breaks the strict build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# (section title or None for top level, folder, [(file, title or None), ...])
ORDER: list[tuple[str | None, str, list[tuple[str, str | None]]]] = [
    (None, "", [("index.md", "Home")]),
    (
        "Guide",
        "guide",
        [
            ("commands.md", "Commands"),
            ("yaml.md", "Search-space YAML"),
            ("reports.md", "Reports and scorecard"),
            ("verdicts.md", None),
            ("explorer.md", None),
            ("data.md", "Data sources"),
            ("images.md", "Image data"),
            ("shapes.md", "Trial shapes: DDP and packs"),
            ("performance.md", None),
            ("where-to-run.md", None),
            ("clusters.md", "Running on a cluster"),
            ("slurm.md", None),
            ("kubernetes.md", None),
            ("clusters-slurm-k8s.md", None),
            ("storage.md", "Storage and trust"),
            ("trackers.md", None),
            ("architecture.md", None),
            ("extending.md", "Adding things"),
            ("testing.md", "Tests"),
            ("upgrading.md", "Upgrading Ray and torch"),
        ],
    ),
    (
        "Study families",
        "families",
        [
            ("digit_pairs.md", "digit_pairs"),
            ("share_split.md", "share_split"),
            ("ssm.md", "ssm"),
            ("wsms.md", "wsms"),
            ("encapnet.md", "encapnet"),
        ],
    ),
    (None, "", [("papers.md", "The papers"), ("results.md", "Results"), ("benchmarks.md", "Benchmarks")]),
    (None, "", [("changelog.md", "Changelog")]),
]
SKIP = {"hooks", "generated"}


def _entry(path: str, title: str | None) -> Any:
    return {title: path} if title else path


def build_nav(docs: Path) -> list[Any]:
    nav: list[Any] = []
    listed: set[str] = set()
    sections: dict[str, list[Any]] = {}
    for section, folder, pages in ORDER:
        entries = []
        for name, title in pages:
            rel = f"{folder}/{name}" if folder else name
            if (docs / rel).is_file():
                entries.append(_entry(rel, title))
                listed.add(rel)
        if section is None:
            nav.extend(entries)
        else:
            sections[folder] = entries
            nav.append({section: entries})
    others: list[Any] = []
    for page in sorted(docs.rglob("*.md")):
        rel = page.relative_to(docs).as_posix()
        if rel in listed or rel.split("/")[0] in SKIP:
            continue
        folder = rel.split("/")[0] if "/" in rel else ""
        if folder in sections:
            sections[folder].append(rel)
        else:
            others.append(rel)
    return [item for item in nav if not (isinstance(item, dict) and not next(iter(item.values())))] + others


def on_config(config: Any) -> Any:
    config["nav"] = build_nav(Path(config["docs_dir"]))
    return config
