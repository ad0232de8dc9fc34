"""The statistics and verdict rules on synthetic studies whose answer is known (each quoted case of
the review, before -> after, is one assertion here)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import claims as C
from analysis import stats as S
from analysis import tables as T
from analysis.assemble import headline
from analysis.scorecard import safe_link, scorecard_html, scorecard_table, study_scorecard
from analysis.synthetic import ablation_study
from core.metrics import ACCURACY, COUNT, ERROR_PCT, GAIN_FRACTION
from tests.analysis.conftest import results_of


def trials_of(groups: dict[str, list[float]], column: str) -> pd.DataFrame:
    return pd.DataFrame(
        [{"trial_id": f"{g}{i}", "status": "TERMINATED", "arch": g, "seed": i, column: v}
         for g, values in groups.items() for i, v in enumerate(values)]
    )  # fmt: skip


def one_row(values: list[float], metric: str, semantics, value, **extra) -> pd.Series:
    col = metric if metric == "params" else f"final_{metric}"
    trials = trials_of({"x": values}, col)
    r = {"label": "x", "where": {"arch": "x"}, "metric": metric, "value": value, "dataset": "d", **extra}
    return T.paper_vs_reproduced(trials, [r], data_source="d", semantics={metric: semantics}).iloc[0]


# ---------------------------------------------------------------------------------------------
# 1. tolerances


def test_error_rate_5_82_vs_4_55_is_not_reproduced() -> None:
    r = one_row([5.80, 5.84, 5.82, 5.83, 5.81], "test_err_pct", ERROR_PCT, 4.55)
    assert r["verdict"] == "not reproduced" and r["band_hi"] == pytest.approx(4.55 * 1.2)
    assert "20% of the paper's error rate" in r["rule"]


def test_accuracy_95_82_vs_98_15_is_not_reproduced() -> None:
    r = one_row([0.9580, 0.9584, 0.9582, 0.9583, 0.9581], "test_acc", ACCURACY, 0.9815)
    assert r["verdict"] == "not reproduced"
    assert r["band_lo"] == pytest.approx(0.9815 - 0.2 * 0.0185)  # 20% of the error rate 1.85%


def test_gain_0_10_vs_1_36_is_not_reproduced() -> None:
    r = one_row([0.0008, 0.0012, 0.0010, 0.0011, 0.0009], "test_acc_ensemble_gain", GAIN_FRACTION, 0.0136)
    assert r["verdict"] == "not reproduced" and "50% of the paper's gain" in r["rule"]


@pytest.mark.parametrize("printed", ["25.55M", "25.6M"])
def test_parameter_count_vs_printed_is_reproduced(printed: str) -> None:
    r = one_row([25_557_032] * 3, "params", COUNT, printed)
    assert r["verdict"] == "reproduced within tolerance" and r["n"] == 1 and r["paper_printed"] == printed
    assert r["band_lo"] <= 25_557_032 <= r["band_hi"]
    far = one_row([25_700_001] * 3, "params", COUNT, printed)
    assert far["verdict"] == "not reproduced"  # deterministic: never "CI too wide"


def test_tolerance_mapping_forms() -> None:
    vals = [0.90, 0.905, 0.91, 0.902, 0.908, 0.904]
    assert one_row(vals, "test_acc", ACCURACY, 0.90, tolerance={"absolute": 0.001})["verdict"] == "CI too wide to tell"
    rel = one_row(vals, "test_acc", ACCURACY, 0.90, tolerance={"relative": 0.5})
    assert rel["tolerance"] == pytest.approx(0.05) and rel["verdict"] == "reproduced within tolerance"
    printed = one_row([0.9071] * 3, "test_acc", ACCURACY, "0.907", tolerance={"printed": True})
    assert printed["verdict"] == "reproduced within tolerance"  # all seeds agree: judged on the value


def test_undeclared_metric_is_shown_raw_and_not_judged_without_an_absolute_rule() -> None:
    vals = [0.90, 0.905, 0.91]
    raw = one_row(vals, "test_acc", None, 0.90)
    assert raw["verdict"] == "not judged" and "no declared semantics" in raw["note"] and raw["unit"] == ""
    assert raw["ci_hi"] > 0.91  # no clipping either
    assert one_row(vals, "test_acc", None, 0.90, tolerance=0.05)["verdict"] == "reproduced within tolerance"


# ---------------------------------------------------------------------------------------------
# 2. provenance


def test_rows_are_judged_only_on_their_own_data() -> None:
    trials = trials_of({"x": [0.90, 0.905, 0.91]}, "final_test_acc")
    base = {"label": "x", "where": {"arch": "x"}, "metric": "test_acc", "value": 0.90}
    sem = {"test_acc": ACCURACY}
    no_dataset = T.paper_vs_reproduced(trials, [base], data_source="mnist", semantics=sem).iloc[0]
    assert no_dataset["verdict"] == "not judged" and "dataset" in no_dataset["note"]
    block = T.paper_vs_reproduced(trials, [base], data_source="mnist", paper_dataset="mnist", semantics=sem).iloc[0]
    assert block["verdict"] == "reproduced within tolerance"
    unrecorded = T.paper_vs_reproduced(trials, [base | {"dataset": "mnist"}], data_source="", semantics=sem).iloc[0]
    assert unrecorded["verdict"] == "not judged" and "no data source" in unrecorded["note"]  # fail closed


# ---------------------------------------------------------------------------------------------
# 3. the seed is the unit


def test_configurations_differing_only_in_inert_keys_count_once_per_seed() -> None:
    rows = [{"trial_id": f"t{m}{s}", "status": "TERMINATED", "sched": "none", "milestones": m, "seed": s,
             "final_test_acc": 0.80 + 0.01 * s} for m in (10, 20) for s in range(3)]  # fmt: skip
    trials = pd.DataFrame(rows)
    inert = {r["trial_id"]: ["milestones"] for r in rows}
    t = T.with_config_id(trials, ["sched", "milestones"], inert)
    assert t["config_id"].nunique() == 1
    s = T.aggregate_repeats(t, ["sched", "milestones"], semantics={"test_acc": ACCURACY})
    assert s.loc[0, "final_test_acc_n"] == 3  # 3 seeds, not 6 trials
    p = T.paper_vs_reproduced(t, [{"label": "x", "metric": "test_acc", "value": 0.81, "dataset": "d"}],
                              data_source="d", semantics={"test_acc": ACCURACY})  # fmt: skip
    assert p.loc[0, "n"] == 3


# ---------------------------------------------------------------------------------------------
# 4. numerically honest statistics


@pytest.mark.parametrize("a, b", [([0.9] * 3, [0.8] * 3), ([0.7] * 5, [0.1] * 5)])
def test_zero_spread_is_an_exact_difference(a, b) -> None:
    w = S.welch(a, b)
    assert w["spread"] == S.DETERMINISTIC and math.isnan(w["p_value"]) and math.isnan(w["effect_size"])
    trials = pd.DataFrame(
        [{"trial_id": f"{g}{i}", "status": "TERMINATED", "ws": g == "a", "seed": i, "final_test_acc": v}
         for g, vals in (("a", a), ("b", b)) for i, v in enumerate(vals)]
    )  # fmt: skip
    claim = {"label": "c", "metric": "test_acc", "a": {"ws": True}, "b": {"ws": False}}
    r = C.claim_tests(trials, [claim], semantics={"test_acc": ACCURACY}).iloc[0]
    assert r["verdict"] == "supported" and "exact difference" in r["note"] and math.isnan(r["p_value"])


def test_two_tied_seeds_are_too_few() -> None:
    r = one_row([0.905, 0.905], "test_acc", ACCURACY, 0.90, tolerance=0.01)
    assert r["verdict"] == "CI too wide to tell" and "n too small" in r["note"] and math.isnan(r["ci_lo"])


def test_hedges_g_ci_is_the_exact_noncentral_t_interval() -> None:
    a = np.array([1.0, 2.0, 3.0])
    b = a - 8.47  # Cohen's d = 8.47 at n = 3 per group
    g, lo, hi = S.hedges_g(a, b)
    j = g / 8.47
    assert j == pytest.approx(0.7979, abs=1e-4)
    assert (lo / j, hi / j) == pytest.approx((2.7, 14.3), abs=0.05)


def test_holm_adjusted_ci_agrees_with_the_verdict() -> None:
    study = ablation_study(effects={"weight_sharing": 0.012, "aux_loss": 0.03}, repeats=6, noise=0.01, seed=3,
                           claims=[{"label": "ws", "metric": "test_acc", "a": {"weight_sharing": True},
                                    "b": {"weight_sharing": False}, "within": ["aux_loss"]}])  # fmt: skip
    t = T.study_tables(results_of(study))["claims"]
    for r in t.to_dict("records"):
        excludes_zero = r["adj_ci_lo"] > 0 or r["adj_ci_hi"] < 0
        assert excludes_zero == (r["verdict"] != "inconclusive")
        assert 0.95 <= r["ci_level"] <= 1 - 0.05 / len(t) + 1e-12


def test_inconclusive_says_how_many_seeds_would_tell() -> None:
    t = T.study_tables(results_of(ablation_study(effects={"weight_sharing": 0.005}, claims=[SHARING], repeats=4,
                                                 noise=0.01, seed=7)))["claims"]  # fmt: skip
    r = t.iloc[0]
    assert r["verdict"] == "inconclusive" and r["seeds_needed"] > 4 and "80% power" in r["note"]


def test_mixed_when_levels_disagree() -> None:
    claim = {**SHARING, "within": ["aux_loss"]}
    study = ablation_study(effects={"weight_sharing": -0.05}, interaction=0.10, claims=[claim], repeats=10)
    t = T.study_tables(results_of(study))["claims"]
    assert sorted(t["verdict"]) == ["contradicted", "supported"]
    assert C.claim_summary(t).iloc[0]["verdict"] == "mixed"


def test_paired_test_where_seeds_match_and_equivalence_claims() -> None:
    study = ablation_study(effects={"weight_sharing": 0.0}, repeats=12, noise=0.005,
                           claims=[{**SHARING, "kind": "equivalence", "margin": 0.02}, SHARING])  # fmt: skip
    t = T.study_tables(results_of(study))["claims"]
    eq, sharing = t.iloc[0], t.iloc[1]
    assert eq["kind"] == "equivalence" and eq["verdict"] == "supported"
    assert sharing["n_paired"] == 12 and not math.isnan(sharing["paired_p"])


def test_nan_within_level_is_one_level_and_missing_metric_is_named() -> None:
    study = ablation_study(claims=[{**SHARING, "within": ["note"]}, {**SHARING, "metric": "nothing"}], repeats=3)
    study.trials["note"] = None
    t = T.study_tables(results_of(study))["claims"]
    assert (t["claim"] == 0).sum() == 1 and t.iloc[0]["level"] == "note=none"
    assert t[t["claim"] == 1].iloc[0]["note"] == "no column final_nothing"


# ---------------------------------------------------------------------------------------------
# 5. flags, 6. headline


def test_flags_beside_verdicts_smoke_and_recipe() -> None:
    study = ablation_study(effects={"weight_sharing": 0.04}, claims=[SHARING], repeats=4,
                           paper_results=[{"label": "n", "where": {"weight_sharing": True, "aux_loss": True},
                                           "metric": "test_acc", "value": 0.84, "dataset": "synthetic"}])  # fmt: skip
    study.trials.loc[0, "status"] = "DIVERGED"
    study.spec["paper"]["recipe"] = {"epochs": 25}
    study.spec["fixed"] = {"epochs": 3}
    study.metadata.update(smoke=True, overrides=["fixed.epochs=3"])
    results = results_of(study)
    tables = T.study_tables(results)
    paper, claim = tables["paper"].iloc[0], tables["claims"].iloc[0]
    assert "1 of 4 trials diverged, left out" in paper["flags"]
    assert "recipe: 3 epochs where the paper used 25" in paper["flags"] and "smoke run" in claim["flags"]
    assert "--set fixed.epochs=3" in claim["flags"]
    card = study_scorecard("s", results)
    assert card["smoke"].all() and card["fewer_epochs"].all()


def test_headline_for_stand_in_data() -> None:
    rows = [{"label": f"r{i}", "where": {"weight_sharing": ws, "aux_loss": aux}, "metric": "test_acc",
             "value": 0.80 + 0.01 * i, "dataset": "mnist"}
            for i, (ws, aux) in enumerate([(True, True), (True, False), (False, True), (False, False)])]  # fmt: skip
    study = ablation_study(claims=[SHARING], paper_results=rows, data_source="mnist-5k", repeats=4)
    results = results_of(study)
    lines = headline(results.meta, T.study_tables(results))
    assert lines[0].startswith("Claims (1): 1 inconclusive")
    assert "4 reference only" in lines[1]
    assert lines[2].startswith("On mnist-5k (a stand-in for mnist): the 4 means are within ")


# ---------------------------------------------------------------------------------------------
# 7. honest plots


def test_heatmap_of_one_value_and_integer_axes() -> None:
    from analysis import plots as P

    table = pd.DataFrame({"x": [1, 2], "y": ["a", "a"], "mean": [0.9, 0.9], "ci_lo": [0.89, 0.89],
                          "ci_hi": [0.91, 0.91], "n": [3, 3], "config": ["", ""]})  # fmt: skip
    fig = P.heatmap_figure(table, "x", "y", metric_col="final_test_acc", mode="max", unit="fraction")
    assert fig.layout.coloraxis.cmin < 0.9 < fig.layout.coloraxis.cmax
    effect = pd.DataFrame({"batch_size": [25, 50, 100], "mean": [0.8, 0.82, 0.81], "ci_lo": [0.79, 0.81, 0.8],
                           "ci_hi": [0.81, 0.83, 0.82], "n": [3, 3, 3]})  # fmt: skip
    fig = P.effect_figure(effect, "batch_size", metric_col="final_test_acc", unit="fraction")
    assert list(fig.layout.xaxis.ticktext) == ["25", "50", "100"]
    assert T.levels(pd.Series([100, 25, 50]), {"grid": [100, 25, 50]}) == [25, 50, 100]  # numeric order


# ---------------------------------------------------------------------------------------------
# 8. links


def test_report_links_are_validated_relative_paths() -> None:
    assert safe_link("javascript:alert(1)/results/report.html") == "./javascript%3Aalert%281%29/results/report.html"
    assert safe_link("../x/results/report.html") == "../x/results/report.html"
    assert safe_link("/etc/passwd") == "" and safe_link("a\x1b[31m/b") == ""
    study = ablation_study(claims=[SHARING], repeats=3, name="javascript:alert(1)")
    part = study_scorecard("javascript:alert(1)", results_of(study), "javascript:alert(1)/results/report.html")
    html = scorecard_html(scorecard_table([part]))
    assert 'href="javascript:' not in html and 'href="./javascript%3Aalert%281%29/results/report.html"' in html


def test_scorecard_page_wide_bh_column() -> None:
    a = study_scorecard("a", results_of(ablation_study(effects={"weight_sharing": 0.04}, claims=[SHARING, AUX])))
    b = study_scorecard("b", results_of(ablation_study(effects={"aux_loss": 0.04}, claims=[SHARING], seed=9)))
    table = scorecard_table([a, b])
    claims = table[table["kind"] == "claim"]
    assert claims["p_page"].notna().all()
    assert np.allclose(np.sort(claims["p_page"]), np.sort(S.bh(claims["p_value"].to_numpy())))


SHARING = {"label": "sharing", "metric": "test_acc", "a": {"weight_sharing": True}, "b": {"weight_sharing": False}}
AUX = {**SHARING, "label": "aux", "a": {"aux_loss": True}, "b": {"aux_loss": False}}


def test_smoke_runs_get_a_banner_and_are_left_out_of_the_scorecard(tmp_path, write_study) -> None:
    from analysis import report as R

    smoke = ablation_study(claims=[SHARING], repeats=3, name="abl-smoke")
    smoke.metadata["smoke"] = True
    real = ablation_study(effects={"weight_sharing": 0.04}, claims=[SHARING], repeats=3, name="abl")
    for s in (smoke, real):
        write_study(tmp_path / s.spec["name"], s)
    page = R.write_study_outputs(tmp_path / "abl-smoke").read_text()
    assert "<b>Smoke run</b>" in page
    R.write_study_outputs(tmp_path / "abl")
    card = pd.read_parquet(tmp_path / "scorecard.parquet")
    assert set(card["study"]) == {"abl"}
    assert "abl-smoke (smoke run)" in (tmp_path / "scorecard.html").read_text()
    R.write_scorecard(R.storage_studies(tmp_path), tmp_path / "all.html", include_smoke=True)
    assert set(pd.read_parquet(tmp_path / "scorecard.parquet")["study"]) == {"abl", "abl-smoke"}


def test_printed_text_is_escaped_and_stripped_of_control_characters() -> None:
    from analysis.format import esc

    assert esc("<b>\x1b[31mred\x07</b>") == "&lt;b&gt;[31mred&lt;/b&gt;"


def test_learning_curve_bands_of_a_loss_stay_at_or_above_zero() -> None:
    from core.metrics import LOSS

    trials = pd.DataFrame({"trial_id": ["a", "b"], "status": "TERMINATED", "seed": [0, 1], "config_id": [0, 0]})
    epochs = pd.DataFrame({"trial_id": ["a", "b"], "epoch": [1, 1], "train_loss": [0.01, 0.5]})
    configs = pd.DataFrame({"config_id": [0], "label": ["c"]})
    curves = T.learning_curves(epochs, trials, configs, ["train_loss"], semantics={"train_loss": LOSS})
    assert curves.loc[0, "ci_lo"] == 0.0
    raw = T.learning_curves(epochs, trials, configs, ["train_loss"])
    assert raw.loc[0, "ci_lo"] < 0


def test_paper_schema_takes_the_new_keys() -> None:
    from pydantic import ValidationError

    from study.spec.model import Claim, Paper, PaperResult

    p = Paper.model_validate({"dataset": "imagenet", "recipe": {"epochs": 90}, "results": [
        {"label": "p", "metric": "params", "value": "25.55M", "dataset": "any"},
        {"label": "e", "metric": "test_err_pct", "value": 4.55, "tolerance": {"relative": 0.1}},
        {"label": "a", "metric": "test_acc", "value": 0.9, "tolerance": 0.01}]})  # fmt: skip
    assert p.results[0].value == "25.55M" and p.results[1].tolerance.relative == 0.1 and p.recipe == {"epochs": 90}
    for bad in ({"absolute": 0.1, "relative": 0.1}, {}, {"printed": False}):
        with pytest.raises(ValidationError):
            PaperResult.model_validate({"label": "x", "metric": "m", "value": 1.0, "tolerance": bad})
    with pytest.raises(ValidationError):
        PaperResult.model_validate({"label": "x", "metric": "m", "value": "about 25M"})
    eq = {"label": "c", "metric": "m", "a": {"x": 1}, "b": {"x": 2}, "kind": "equivalence"}
    with pytest.raises(ValidationError, match="margin"):
        Claim.model_validate(eq)
    assert Claim.model_validate(eq | {"margin": 0.01}).margin == 0.01


def test_claims_parquet_of_an_older_study_still_summarises() -> None:
    old = pd.DataFrame([{"claim": 0, "label": "c", "quote": "", "metric": "test_acc", "direction": "greater", "a": "x=1",
                         "b": "x=2", "where": "", "within": "", "level": "", "n_a": 3, "n_b": 3, "diff": 0.1,
                         "ci_lo": 0.05, "ci_hi": 0.15, "effect_size": 2.0, "t": 5.0, "df": 4.0, "p_value": 0.01,
                         "p_holm": 0.01, "verdict": "supported", "note": ""}])  # fmt: skip
    assert C.claim_summary(old).iloc[0]["verdict"] == "supported"
