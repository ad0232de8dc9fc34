"""Write a study's result tables and HTML report: the only module of `analysis` that writes files.

Entry points for the CLI:

- `write_study_outputs(study_dir)` (``study report NAME`` and the end of ``study run``): reads
  ``results/trials.parquet``, ``results/epochs.parquet`` and ``spec.yaml``; writes
  ``results/{summary,best,comparisons,paper,importance,curves}.parquet`` and
  ``results/report.html``. Works on a running or partly failed study and says so in the header.
- `write_comparison(study_dirs, out)` (``study compare A B ...``): one HTML page with the
  studies' best configurations and paper tables side by side.

Every file is written to a temporary file in the same directory, then moved into place with
``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.html import comparison_report_html, study_report_html
from analysis.load import StudyResults, load_study
from analysis.plots import FigureItem, best_comparison_figure, study_figures
from analysis.tables import best_configs, focus_comparisons, study_tables

TABLES = ("summary", "best", "comparisons", "paper", "importance", "curves")  # written as results/<name>.parquet


def build_study_report(results: StudyResults) -> tuple[dict[str, pd.DataFrame], str]:
    """All tables and the report HTML of a loaded study (no I/O)."""
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
    page = study_report_html(meta, tables, figures, report_comparisons=shown, epochs_rows=len(results.epochs))
    return tables, page


def write_study_outputs(study_dir: Path) -> Path:
    """Write ``results/summary.parquet`` and friends and ``results/report.html``; return the report path."""
    results = load_study(Path(study_dir))
    tables, page = build_study_report(results)
    out_dir = Path(study_dir) / "results"
    metadata = _study_json(results)
    for name in TABLES:  # every table says which data it was measured on
        table = tables[name].assign(data_source=results.meta.data_source)
        write_parquet(table, out_dir / f"{name}.parquet", metadata=metadata)
    report = out_dir / "report.html"
    write_text(page, report)
    return report


def write_comparison(study_dirs: Sequence[Path], out: Path) -> Path:
    """Write one HTML page comparing several studies' best configurations and paper tables."""
    loaded = [load_study(Path(d)) for d in study_dirs]
    names = _unique_names(loaded)
    studies = [(name, r.meta, study_tables(r)) for name, r in zip(names, loaded)]
    by_metric: dict[str, dict[str, pd.DataFrame]] = {}
    for name, meta, tables in studies:
        by_metric.setdefault(meta.metric_col, {})[name] = tables["best"]
    figures = [
        FigureItem("best", f"best-{col}", best_comparison_figure(best, metric_col=col))
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
    }
    return {b"study": json.dumps(study).encode()}


# ---------------------------------------------------------------------------------------------
# atomic writes


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to `path`, then rename it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_parquet(frame: pd.DataFrame, path: Path, *, metadata: Mapping[bytes, bytes] | None = None) -> None:
    """Write a DataFrame as Parquet atomically, with extra schema metadata."""
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    _atomic(path, lambda tmp: pq.write_table(table, tmp))


def write_text(text: str, path: Path) -> None:
    """Write UTF-8 text atomically."""
    _atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
