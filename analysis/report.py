"""Write a study's result tables and HTML report: the only module of `analysis` that writes files.

Entry points for the CLI:

- `write_study_outputs(study_dir)` (``study report NAME`` and the end of ``study run``): reads
  ``results/trials.parquet``, ``results/epochs.parquet`` and ``spec.yaml``; writes
  ``results/{summary,best,comparisons,paper,importance,curves}.parquet`` and
  ``results/report.html``. Works on a running or partly failed study and says so in the header.
- `write_comparison(study_dirs, out)` (``study compare A B ...``): one HTML page with the
  studies' best configurations and paper tables side by side.
- `write_scorecard(study_dirs, out)` (``study scorecard``, and refreshed for the storage by
  `write_study_outputs`): ``scorecard.html`` and ``scorecard.parquet`` (next to it) over every
  study: each paper's claims and numbers with their verdicts (see `analysis.scorecard`).

Every file is written to a temporary file in the same directory, then moved into place with
``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.aggregate import best_configs
from analysis.assemble import study_tables
from analysis.compare import focus_comparisons
from analysis.html import comparison_report_html, study_report_html
from analysis.load import StudyResults, load_study
from analysis.plots import FigureItem, best_comparison_figure, study_figures
from core.atomic import write_parquet, write_text
from core.layout import PARQUET_STUDY_KEY, REPORT_FILE, SCORECARD_FILE, SCORECARD_TABLE, SPEC_FILE, results_dir
from core.metrics import semantics_to_json

__all__ = [  # write_parquet / write_text and SCORECARD_FILE: re-exported from core for older callers
    "SCORECARD_FILE", "TABLES", "build_study_report", "refresh_scorecard", "storage_studies", "write_comparison", "write_parquet",
    "write_scorecard", "write_study_outputs", "write_text",
]  # fmt: skip

# written as results/<name>.parquet
TABLES = ("summary", "best", "comparisons", "paper", "claims", "importance", "curves")


def study_report_parts(
    results: StudyResults,
) -> tuple[dict[str, pd.DataFrame], list[FigureItem], pd.DataFrame]:
    """The tables, figures and the comparisons the report shows of a loaded study (no I/O): what
    `build_study_report` and the explorer's study page both render."""
    tables = study_tables(results)
    figures = study_figures(results, tables)
    meta = results.meta
    overall = (
        best_configs(tables["summary"], metric_col=meta.metric_col, mode=meta.mode, top=1)
        if f"{meta.metric_col}_mean" in tables["summary"].columns
        else pd.DataFrame()
    )
    best_row = overall.iloc[0].to_dict() if len(overall) else None
    shown = focus_comparisons(tables["comparisons"], tables["trials"], best_row, meta.hyperparameters)
    return tables, figures, shown


def build_study_report(results: StudyResults) -> tuple[dict[str, pd.DataFrame], str]:
    """All tables and the report HTML of a loaded study (no I/O)."""
    tables, figures, shown = study_report_parts(results)
    page = study_report_html(results.meta, tables, figures, report_comparisons=shown, epochs_rows=len(results.epochs))
    return tables, page


def write_study_outputs(study_dir: Path) -> Path:
    """Write ``results/summary.parquet`` and friends and ``results/report.html``; return the report path."""
    results = load_study(Path(study_dir))
    tables, page = build_study_report(results)
    out_dir = results_dir(Path(study_dir))
    metadata = _study_json(results)
    for name in TABLES:  # every table says which data it was measured on
        table = tables[name].assign(data_source=results.meta.data_source)
        write_parquet(table, out_dir / f"{name}.parquet", metadata=metadata)
    report = out_dir / REPORT_FILE
    write_text(page, report)
    refresh_scorecard(Path(study_dir).parent)
    return report


def storage_studies(storage: Path) -> list[Path]:
    """Study directories under a local storage root (those with a ``spec.yaml``)."""
    return sorted(p.parent for p in Path(storage).glob(f"*/{SPEC_FILE}"))


def write_scorecard(
    study_dirs: Sequence[Path], out: Path, *, storage: str = "", include_smoke: bool = False
) -> tuple[Path, Path]:
    """Write the scorecard page `out` and ``scorecard.parquet`` beside it over `study_dirs`.

    Studies without results yet, or whose results cannot be read, are listed as left out, and so
    are smoke runs unless `include_smoke`. Each row links to its study's ``results/report.html``
    relative to `out`. Returns both paths.
    """
    from analysis.scorecard import scorecard_html, scorecard_table, study_scorecard

    out = Path(out)
    parts, skipped, loaded = [], [], []
    for d in study_dirs:
        try:
            loaded.append((Path(d), load_study(Path(d))))
        except Exception:  # no results yet, or a broken study: left out and named, never fatal
            skipped.append(Path(d).name)
    for name, (d, results) in zip(_unique_names([r for _, r in loaded]), loaded):
        if results.meta.smoke and not include_smoke:
            skipped.append(f"{name} (smoke run)")
            continue
        report = results_dir(d) / REPORT_FILE
        link = os.path.relpath(report, out.parent) if report.is_file() else ""
        parts.append(study_scorecard(name, results, link.replace(os.sep, "/")))
    table = scorecard_table(parts)
    html = scorecard_html(table, storage=storage, skipped=skipped)
    parquet = out.parent / SCORECARD_TABLE
    write_parquet(table, parquet)
    write_text(html, out)
    return out, parquet


def refresh_scorecard(storage: Path) -> Path | None:
    """Rebuild ``storage/scorecard.html`` (linked from every report) over the storage's studies;
    best effort: a failure here never fails the report it follows."""
    try:
        return write_scorecard(storage_studies(storage), Path(storage) / SCORECARD_FILE, storage=str(storage))[0]
    except Exception:
        return None


def write_comparison(study_dirs: Sequence[Path], out: Path) -> Path:
    """Write one HTML page comparing several studies' best configurations and paper tables."""
    loaded = [load_study(Path(d)) for d in study_dirs]
    names = _unique_names(loaded)
    studies = [(name, r.meta, study_tables(r)) for name, r in zip(names, loaded)]
    by_metric: dict[str, dict[str, pd.DataFrame]] = {}
    units: dict[str, str | None] = {}
    for name, meta, tables in studies:
        by_metric.setdefault(meta.metric_col, {})[name] = tables["best"]
        declared = meta.semantics.get(meta.metric)
        units.setdefault(meta.metric_col, declared.unit if declared else None)
    figures = [
        FigureItem("best", f"best-{col}", best_comparison_figure(best, metric_col=col, unit=units.get(col)))
        for col, best in by_metric.items()
    ]
    write_text(comparison_report_html(studies, figures), Path(out))
    return Path(out)


def _unique_names(loaded: Sequence[StudyResults]) -> list[str]:
    """Study names, with the directory name added where two studies share a name."""
    names = [r.meta.name for r in loaded]
    return [
        f"{n} ({r.study_dir.name if r.study_dir else i})" if names.count(n) > 1 else n
        for i, (n, r) in enumerate(zip(names, loaded))
    ]


def _study_json(results: StudyResults) -> dict[bytes, bytes]:
    """Schema metadata for the output tables: the study description under ``b"study"``."""
    m = results.meta
    study = {
        "name": m.name,
        "spec_file": m.spec_file,
        "trainable": m.trainable,
        "data_source": m.data_source,
        "metric": m.metric,
        "mode": m.mode,
        "hyperparameters": list(m.hyperparameters),
        "searched": list(m.searched),
        "grid_axes": list(m.grid_axes),
        "metric_semantics": semantics_to_json(m.semantics),
        "smoke": m.smoke,
        "overrides": list(m.overrides),
    }
    return {PARQUET_STUDY_KEY: json.dumps(study).encode()}
