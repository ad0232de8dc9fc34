"""Companion metrics in the best table: an ensemble's members beside the ensemble, with repeats (SSM Table 3)."""

from __future__ import annotations

import pandas as pd

from analysis.html import best_html, companion_metrics
from analysis.load import StudyMeta
from analysis.tables import aggregate_repeats, best_configs
from core.metrics import ACCURACY, GAIN_FRACTION

SEMANTICS = {m: ACCURACY for m in ("test_acc", "test_acc_member1", "test_acc_member2")} | {
    "test_acc_ensemble_gain": GAIN_FRACTION
}


def ensemble_trials() -> pd.DataFrame:
    rows = []
    for head, base in (("plain", 0.70), ("ssm", 0.72)):
        for seed in range(3):
            m1, m2 = base + 0.01 * seed, base + 0.02
            rows.append(
                {"trial_id": f"{head}{seed}", "status": "TERMINATED", "head": head, "seed": seed,
                 "final_test_acc": max(m1, m2) + 0.015, "final_test_acc_member1": m1,
                 "final_test_acc_member2": m2, "final_test_acc_ensemble_gain": 0.015, "final_test_loss": 1.0}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_members_and_ensemble_side_by_side_with_repeats():
    summary = aggregate_repeats(ensemble_trials(), ["head"])
    best = best_configs(summary, metric_col="final_test_acc", mode="max", group_by=["head"])
    assert companion_metrics(best, "test_acc") == ["test_acc_member1", "test_acc_member2", "test_acc_ensemble_gain"]
    assert companion_metrics(best, "test_loss") == []
    meta = StudyMeta(name="ens", metric="test_acc", hyperparameters=("head",), searched=("head",), semantics=SEMANTICS)
    page = best_html(best, meta, ["head"])
    for header in ("test_acc_member1 mean [95% CI]", "test_acc_member2 mean [95% CI]", "test_acc_ensemble_gain"):
        assert header in page
    assert "73.00% [70.52%, 75.48%]" in page  # ssm member 1: 0.72, 0.73, 0.74 (t(0.975, 2) = 4.303)
    assert "3/3" in page  # repeats


def test_compact_table_leaves_companions_out():
    summary = aggregate_repeats(ensemble_trials(), ["head"])
    best = best_configs(summary, metric_col="final_test_acc", mode="max", group_by=["head"])
    meta = StudyMeta(name="ens", metric="test_acc", hyperparameters=("head",), searched=("head",), semantics=SEMANTICS)
    assert "member1" not in best_html(best, meta, ["head"], compact=True)


def test_at_most_the_limit_and_only_present_ones():
    table = pd.DataFrame({f"final_test_acc_head{k}_mean": [0.5] for k in range(1, 12)})
    table["final_test_acc_member1_mean"] = [float("nan")]
    assert companion_metrics(table, "test_acc", limit=3) == ["test_acc_head1", "test_acc_head2", "test_acc_head3"]
    assert "test_acc_member1" not in companion_metrics(table, "test_acc", limit=20)
