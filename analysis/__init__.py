"""Analysis of a study's results: tables, figures and one self-contained HTML report.

Layers point down: this package imports `core` and never `study` or `trainables` (no torch).
Where things go (each module is pure except `report`):

- `analysis.load`: read ``results/trials.parquet`` (+ its ``b"study"`` metadata, including the
  metrics' declared semantics), ``results/epochs.parquet`` and ``spec.yaml`` into a `StudyResults`.
- `analysis.format`: the text of values (by declared unit), escaping.
- `analysis.stats`: Welch's test, t-intervals, Hedges' g, Holm, BH, power, paired, TOST.
- `analysis.aggregate`: configurations, seed units, per-configuration means and CIs, best.
- `analysis.compare`: unadjusted pairwise comparisons of a factor's levels.
- `analysis.paper`: paper numbers vs reproduced: tolerance rules, provenance, verdicts.
- `analysis.claims`: the paper's claims tested, Holm-corrected.
- `analysis.provenance`: the flags beside every verdict (left out, overrides, smoke, recipe).
- `analysis.importance`: hyperparameter importance (main-effect variance share).
- `analysis.plotdata`: DataFrame -> the tables figures draw; `analysis.plots`: -> Plotly figures;
  a new plot is a function there plus a line in `analysis.plots.study_figures`.
- `analysis.assemble`: `study_tables` (every table of a report) and the report's headline.
- `analysis.tables`: the old module path, re-exporting the above.
- `analysis.html`, `analysis.scorecard`: tables and figures -> HTML text (everything escaped).
- `analysis.report`: the only module that writes files (`write_study_outputs`,
  `write_comparison`, `write_scorecard`), atomically (`core.atomic`).
- `analysis.synthetic`: synthetic results in the runner's format, for tests and benchmarks.

The rules behind every verdict are in ``docs/guide/verdicts.md``.
"""
