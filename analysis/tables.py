"""Result tables, by their old module path: re-exports of the modules that now hold them.

- `analysis.aggregate`: configurations, seed units, per-configuration means and CIs, best.
- `analysis.compare`: pairwise Welch comparisons of a factor's levels.
- `analysis.paper`: paper vs reproduced, tolerance rules, verdicts.
- `analysis.claims`: claims (imported from there; not re-exported here).
- `analysis.importance`: hyperparameter importance.
- `analysis.plotdata`: the tables figures draw.
- `analysis.assemble`: `study_tables`, every table of a report.
- `analysis.stats`, `analysis.format`: the statistics and the text of values.
"""

from __future__ import annotations

from analysis.aggregate import (
    MAX_LEVELS,
    aggregate_repeats,
    best_configs,
    default_group_by,
    describe,
    finished,
    is_categorical,
    is_continuous,
    levels,
    metric_columns,
    order_by_space,
    select,
    with_config_id,
)
from analysis.assemble import study_tables
from analysis.compare import COMPARISON_COLUMNS, compare_factor, comparison_hold, focus_comparisons, varying
from analysis.format import config_label, format_value
from analysis.importance import param_importance
from analysis.paper import (
    ANY_DATASET,
    NO_TRIALS,
    NOT_JUDGED,
    NOT_REPRODUCED,
    PAPER_COLUMNS,
    REFERENCE,
    REPRODUCED,
    TOO_WIDE,
    paper_verdict,
    paper_vs_reproduced,
    tolerance_band,
)
from analysis.plotdata import binned_effect, choose_group, learning_curves, marginal, profile, repeated, wants_log_axis
from analysis.stats import CONFIDENCE, t_interval, welch

__all__ = [
    "ANY_DATASET", "COMPARISON_COLUMNS", "CONFIDENCE", "MAX_LEVELS", "NOT_JUDGED", "NOT_REPRODUCED", "NO_TRIALS",
    "PAPER_COLUMNS", "REFERENCE", "REPRODUCED", "TOO_WIDE", "aggregate_repeats", "best_configs", "binned_effect",
    "choose_group", "compare_factor", "comparison_hold", "config_label", "default_group_by", "describe", "finished",
    "focus_comparisons", "format_value", "is_categorical", "is_continuous", "learning_curves", "levels", "marginal",
    "metric_columns", "order_by_space", "paper_verdict", "paper_vs_reproduced", "param_importance", "profile",
    "repeated", "select", "study_tables", "t_interval", "tolerance_band", "varying", "wants_log_axis", "welch",
    "with_config_id",
]  # fmt: skip
