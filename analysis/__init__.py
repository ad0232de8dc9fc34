"""Analysis of a study's results: tables, figures and one self-contained HTML report.

Where things go (each module is pure except `report`):

- `analysis.load`: read ``results/trials.parquet`` (+ its ``b"study"`` metadata),
  ``results/epochs.parquet`` and ``spec.yaml`` into a `StudyResults`.
- `analysis.tables`: DataFrame -> DataFrame (repeats aggregated, best per group, Welch
  comparisons, paper vs reproduced, Optuna importance, learning-curve bands, plot data).
- `analysis.plots`: DataFrame -> ``plotly.graph_objects.Figure``, one function per plot; a new
  plot is a function here plus a line in `analysis.plots.study_figures`.
- `analysis.html`: tables and figures -> the HTML text (everything escaped).
- `analysis.report`: the only module that writes files (`write_study_outputs`,
  `write_comparison`), atomically.
- `analysis.synthetic`: synthetic results in the runner's format, for tests and benchmarks.
"""
