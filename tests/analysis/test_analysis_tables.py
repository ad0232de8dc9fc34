"""Numerics of every aggregate against values computed by hand on a 12-trial table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import tables as T
from analysis.importance import importance_note
from analysis.load import infer_hyperparameters, study_meta
from analysis.synthetic import ablation_study
from core.metrics import ACCURACY, COUNT

T2 = 4.302652729911275  # Student t quantile 0.975, 2 degrees of freedom
T1 = 12.706204736174698  # Student t quantile 0.975, 1 degree of freedom


@pytest.fixture
def trials() -> pd.DataFrame:
    """2 nets x 2 learning rates x 3 seeds; one diverged, one errored, one running trial."""
    rows = [
        # arch, lr, seed, status, final_test_acc, best_test_acc, final_train_loss
        ("A", 0.1, 0, "TERMINATED", 0.80, 0.81, 0.30),
        ("A", 0.1, 1, "TERMINATED", 0.84, 0.86, 0.20),
        ("A", 0.1, 2, "TERMINATED", 0.82, 0.82, 0.25),
        ("A", 0.01, 0, "TERMINATED", 0.70, 0.72, 0.50),
        ("A", 0.01, 1, "DIVERGED", 0.10, 0.60, math.nan),
        ("A", 0.01, 2, "TERMINATED", 0.74, 0.74, 0.40),
        ("B", 0.1, 0, "ERROR", math.nan, math.nan, math.nan),
        ("B", 0.1, 1, "TERMINATED", 0.90, 0.91, 0.10),
        ("B", 0.1, 2, "TERMINATED", 0.94, 0.95, 0.12),
        ("B", 0.01, 0, "RUNNING", 0.50, 0.50, 0.90),
        ("B", 0.01, 1, "TERMINATED", 0.88, 0.88, 0.15),
        ("B", 0.01, 2, "TERMINATED", 0.86, 0.87, 0.14),
    ]
    cols = ["arch", "lr", "seed", "status", "final_test_acc", "best_test_acc", "final_train_loss"]
    df = pd.DataFrame(rows, columns=cols)
    df.insert(0, "trial_id", [f"t{i:02d}" for i in range(len(df))])
    df["params"] = np.where(df["arch"] == "A", 1000, 2000)
    df["epochs_done"] = 5
    df["wall_time_s"] = 10.0
    df["error"] = None
    return df


def _row(summary: pd.DataFrame, arch: str, lr: float) -> pd.Series:
    hit = summary[(summary["arch"] == arch) & np.isclose(summary["lr"], lr)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_config_ids_ignore_the_seed(trials):
    ids = T.with_config_id(trials, ["arch", "lr"])["config_id"]
    assert ids.nunique() == 4
    assert (ids.groupby([trials["arch"], trials["lr"]]).nunique() == 1).all()


def test_aggregate_repeats_hand_computed(trials):
    s = T.aggregate_repeats(trials, ["arch", "lr"])
    assert len(s) == 4
    a = _row(s, "A", 0.1)  # 0.80, 0.84, 0.82
    assert a["final_test_acc_n"] == 3
    assert a["final_test_acc_mean"] == pytest.approx(0.82)
    assert a["final_test_acc_std"] == pytest.approx(0.02)
    assert a["final_test_acc_sem"] == pytest.approx(0.02 / math.sqrt(3))
    half = T2 * 0.02 / math.sqrt(3)
    assert a["final_test_acc_ci_lo"] == pytest.approx(0.82 - half)
    assert a["final_test_acc_ci_hi"] == pytest.approx(0.82 + half)
    assert a["best_test_acc_mean"] == pytest.approx((0.81 + 0.86 + 0.82) / 3)
    assert a["final_train_loss_mean"] == pytest.approx(0.25)
    assert (a["n_trials"], a["n_finished"], a["n_diverged"], a["n_error"], a["n_running"]) == (3, 3, 0, 0, 0)
    assert a["params"] == 1000

    b = _row(s, "A", 0.01)  # 0.70, 0.74; the diverged 0.10 is left out
    assert b["final_test_acc_n"] == 2
    assert b["final_test_acc_mean"] == pytest.approx(0.72)
    assert b["final_test_acc_std"] == pytest.approx(math.sqrt(0.0008))
    assert b["final_test_acc_ci_hi"] - b["final_test_acc_mean"] == pytest.approx(T1 * 0.02)
    assert (b["n_finished"], b["n_diverged"]) == (2, 1)

    c = _row(s, "B", 0.1)  # 0.90, 0.94; one error
    assert c["final_test_acc_mean"] == pytest.approx(0.92)
    assert (c["n_trials"], c["n_finished"], c["n_error"]) == (3, 2, 1)

    d = _row(s, "B", 0.01)  # 0.88, 0.86; the running 0.50 is left out
    assert d["final_test_acc_mean"] == pytest.approx(0.87)
    assert (d["n_finished"], d["n_running"]) == (2, 1)


def test_aggregate_single_repeat_has_no_interval(trials):
    one = trials[trials["seed"] == 1]
    s = T.aggregate_repeats(one, ["arch", "lr"])
    row = _row(s, "B", 0.1)
    assert row["final_test_acc_n"] == 1 and row["final_test_acc_mean"] == pytest.approx(0.90)
    assert math.isnan(row["final_test_acc_std"]) and math.isnan(row["final_test_acc_ci_lo"])
    assert _row(s, "A", 0.01)["final_test_acc_n"] == 0  # only a diverged trial


def test_aggregate_without_hyperparameters(trials):
    s = T.aggregate_repeats(trials, [])
    # 9 finished trials, but 3 seeds: the seed is the unit (each seed's trials averaged first)
    assert len(s) == 1 and s.loc[0, "n_trials"] == 12 and s.loc[0, "final_test_acc_n"] == 3
    seed1 = [0.84, 0.90, 0.88]  # A 0.1, B 0.1, B 0.01 (A 0.01 diverged)
    assert s.loc[0, "final_test_acc_mean"] == pytest.approx(np.mean([np.mean([0.80, 0.70]), np.mean(seed1),
                                                                     np.mean([0.82, 0.74, 0.94, 0.86])]))  # fmt: skip


def test_best_configs_per_group(trials):
    s = T.aggregate_repeats(trials, ["arch", "lr"])
    best = T.best_configs(s, metric_col="final_test_acc", mode="max", group_by=["arch"])
    assert list(best["arch"]) == ["A", "B"]
    assert list(best["lr"]) == [0.1, 0.1]
    assert list(best["final_test_acc_mean"]) == pytest.approx([0.82, 0.92])
    top = T.best_configs(s, metric_col="final_test_acc", mode="max", top=2)
    assert list(zip(top["arch"], top["lr"], top["rank"])) == [("B", 0.1, 1), ("B", 0.01, 2)]


def test_best_configs_min_mode(trials):
    s = T.aggregate_repeats(trials, ["arch", "lr"])
    low = T.best_configs(s, metric_col="final_train_loss", mode="min", group_by=["arch"])
    # A: lr 0.1 -> 0.25, lr 0.01 -> 0.45; B: lr 0.1 -> 0.11, lr 0.01 -> 0.145
    assert list(zip(low["arch"], low["lr"])) == [("A", 0.1), ("B", 0.1)]
    assert list(low["final_train_loss_mean"]) == pytest.approx([0.25, 0.11])


def test_compare_factor_welch_hand_computed(trials):
    c = T.compare_factor(trials, "arch", metric_col="final_test_acc", hold=["lr"])
    assert list(c["context"]) == ["lr=0.01", "lr=0.1"]
    r = c.iloc[0]  # lr=0.01: A (0.70, 0.74) vs B (0.88, 0.86); a - b, the sign claims use
    assert (r["level_a"], r["level_b"], r["n_a"], r["n_b"]) == ("A", "B", 2, 2)
    assert r["diff"] == pytest.approx(-0.15)
    va, vb = 0.0008 / 2, 0.0002 / 2
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 + vb**2)
    assert r["t"] == pytest.approx(-0.15 / se)
    assert r["df"] == pytest.approx(df)
    q = stats.t.ppf(0.975, df)
    assert (r["diff_ci_lo"], r["diff_ci_hi"]) == pytest.approx((-0.15 - q * se, -0.15 + q * se))
    # oracle: scipy's Welch test on the raw values
    ref = stats.ttest_ind([0.70, 0.74], [0.88, 0.86], equal_var=False)
    assert r["p_value"] == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (r["diff_ci_lo"], r["diff_ci_hi"]) == pytest.approx((ci.low, ci.high))


def test_compare_factor_level_order(trials):
    c = T.compare_factor(trials, "arch", metric_col="final_test_acc", hold=["lr"], order=["B", "A"])
    assert list(zip(c["level_a"], c["level_b"])) == [("B", "A"), ("B", "A")]
    assert c.loc[0, "diff"] == pytest.approx(0.15)


def test_compare_factor_pooled_over_seeds_and_min_repeats(trials):
    pooled = T.compare_factor(trials, "arch", metric_col="final_test_acc")
    assert len(pooled) == 1 and pooled.loc[0, "context"] == "all"
    # per seed, the mean of the level's finished trials: A seeds 0, 1, 2; B seeds 1, 2
    a, b = [np.mean([0.80, 0.70]), 0.84, np.mean([0.82, 0.74])], [np.mean([0.90, 0.88]), np.mean([0.94, 0.86])]
    assert (pooled.loc[0, "n_a"], pooled.loc[0, "n_b"]) == (3, 2)
    assert pooled.loc[0, "diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert pooled.loc[0, "p_value"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    single = T.compare_factor(trials[trials["seed"] == 0], "arch", metric_col="final_test_acc", hold=["lr"])
    assert single.empty  # fewer than 2 seeds per side


SEMANTICS = {"test_acc": ACCURACY, "params": COUNT}


def test_paper_vs_reproduced(trials):
    results = [
        {"label": "A best", "where": {"arch": "A", "lr": 0.1}, "metric": "test_acc", "value": 0.85, "std": 0.01},
        {"label": "B overall", "where": {"arch": "B"}, "metric": "test_acc", "value": 0.80, "std": None},
        {"label": "C", "where": {"arch": "C"}, "metric": "test_acc", "value": 0.5},
        {"label": "bad key", "where": {"depth": 3}, "metric": "test_acc", "value": 0.5},
        {"label": "A params", "where": {"arch": "A"}, "metric": "params", "value": 1000, "dataset": "any"},
    ]
    p = T.paper_vs_reproduced(trials, results, data_source="mnist", paper_dataset="mnist", semantics=SEMANTICS)
    a, b, c, bad = (p.iloc[i] for i in range(4))
    assert a["n"] == 3 and a["mean"] == pytest.approx(0.82) and a["diff"] == pytest.approx(0.82 - 0.85)
    assert a["ci_lo"] == pytest.approx(0.82 - T2 * 0.02 / math.sqrt(3)) and a["in_ci"] is True
    assert a["paper_std"] == 0.01 and a["where"] == "arch=A, lr=0.1" and a["dataset"] == "mnist"
    # B spans two learning rates: per seed, the mean of its finished trials (seed 1: 0.90, 0.88; seed 2: 0.94, 0.86)
    assert b["n"] == 2 and b["mean"] == pytest.approx(0.895)
    assert b["std"] == pytest.approx(np.std([0.89, 0.90], ddof=1)) and b["in_ci"] is False
    assert math.isnan(b["paper_std"])
    assert c["n"] == 0 and c["in_ci"] is None and c["note"] == "no finished trial matches"
    assert bad["n"] == 0 and "depth" in bad["note"]
    params = p.iloc[4]  # a per-trial, deterministic column: judged on its one value
    assert params["n"] == 1 and params["mean"] == 1000 and params["diff"] == 0
    assert params["verdict"] == "reproduced within tolerance" and params["rule"].startswith("exact")
    # left-out trials are flagged beside the verdict, never silently dropped
    assert p.iloc[1]["flags"] == "1 of 6 trials error, left out; 1 of 6 trials still running, not counted"


def test_select_matches_yaml_values():
    df = pd.DataFrame({"ws": [True, False, None], "lr": [0.1, 0.05, 0.1], "name": ["a", "b", "a"], "k": [8, 16, 8]})
    df["ws"] = df["ws"].astype(object)
    assert list(T.select(df, {"ws": True}).index) == [0]
    assert list(T.select(df, {"ws": None}).index) == [2]
    assert list(T.select(df, {"lr": 0.1, "name": "a"}).index) == [0, 2]
    assert list(T.select(df, {"lr": 0.1 + 1e-12}).index) == [0, 2]
    assert list(T.select(df, {"k": 16.0}).index) == [1]
    assert T.select(df, {"missing": 1}).empty


def test_param_importance_ranks_the_relevant_hyperparameter():
    rng = np.random.default_rng(0)
    n = 120
    lr = np.exp(rng.uniform(np.log(1e-4), np.log(1e-1), n))
    noise_hp = rng.choice(["x", "y", "z"], n)
    acc = 0.9 - 0.1 * (np.log10(lr) + 2.5) ** 2 + rng.normal(0, 0.002, n)
    df = pd.DataFrame({"trial_id": range(n), "status": "TERMINATED", "lr": lr, "opt": noise_hp, "final_test_acc": acc})
    space = {"lr": {"loguniform": [1e-4, 1e-1]}, "opt": {"choice": ["x", "y", "z"]}}
    imp = T.param_importance(df, ["lr", "opt"], metric_col="final_test_acc", mode="max", space=space)
    assert list(imp["param"]) == ["lr", "opt"]
    assert imp["importance"].sum() == pytest.approx(1.0)
    assert imp.loc[0, "importance"] > 0.8 and imp.loc[0, "n_trials"] == n


def test_param_importance_skips_constant_and_needs_trials(trials):
    many = pd.concat([trials.assign(seed=trials["seed"] + 3 * k) for k in range(3)], ignore_index=True)
    many = T.with_config_id(many, ["arch", "lr"])
    imp = T.param_importance(many.assign(c=1), ["arch", "lr", "c"], metric_col="final_test_acc", mode="max")
    assert set(imp["param"]) == {"arch", "lr"} and imp.loc[0, "n_trials"] == 27  # (configuration, seed) units
    # 9 finished trials are too few to rate anything: no table, and the reason
    assert T.param_importance(trials, ["arch", "lr"], metric_col="final_test_acc", mode="max").empty
    assert "at least 20" in importance_note(trials, ["arch", "lr"], metric_col="final_test_acc")


def test_importance_gives_a_small_real_effect_a_real_weight():
    """A 2-point and a 4-point effect on a 2 x 2 grid: both get weight (a top-quantile method can give 0)."""
    study = ablation_study(effects={"weight_sharing": 0.02, "aux_loss": 0.04}, repeats=10, noise=0.005)
    t = T.with_config_id(study.trials, ["weight_sharing", "aux_loss"])
    imp = T.param_importance(t, ["weight_sharing", "aux_loss"], metric_col="final_test_acc").set_index("param")
    assert imp.loc["weight_sharing", "importance"] > 0.1 and imp.loc["aux_loss", "importance"] > 0.6
    assert imp.loc["aux_loss", "eta_sq"] / imp.loc["weight_sharing", "eta_sq"] == pytest.approx(4, rel=0.35)


def test_learning_curves_mean_and_downsampling(trials):
    t = T.with_config_id(trials, ["arch", "lr"])
    ids = t.loc[(t["arch"] == "A") & (t["lr"] == 0.1), "trial_id"]
    epochs = pd.DataFrame(
        [(tid, e, 0.1 * e + i) for i, tid in enumerate(ids) for e in range(1, 501)],
        columns=["trial_id", "epoch", "test_acc"],
    )
    configs = t.loc[t["trial_id"] == ids.iloc[0], ["config_id"]].assign(label="A, 0.1")
    c = T.learning_curves(epochs, t, configs, ["test_acc", "not_there"], max_points=200)
    assert set(c["metric"]) == {"test_acc"} and len(c) <= 200 and c["epoch"].max() == 500
    first = c.iloc[0]  # epoch 1: values 0.1, 1.1, 2.1
    assert (first["epoch"], first["n"]) == (1, 3)
    assert first["mean"] == pytest.approx(1.1)
    assert first["ci_hi"] - first["mean"] == pytest.approx(T2 * 1.0 / math.sqrt(3))


def test_profile_and_marginal(trials):
    s = T.aggregate_repeats(trials, ["arch", "lr"])
    p = T.profile(s, ["arch"], metric_col="final_test_acc", mode="max", hyperparameters=["arch", "lr"])
    assert list(p["arch"]) == ["A", "B"] and list(p["mean"]) == pytest.approx([0.82, 0.92])
    assert list(p["config"]) == ["lr=0.1", "lr=0.1"]
    m = T.marginal(trials, ["arch"], metric_col="final_test_acc")
    assert list(m["mean"]) == pytest.approx([np.mean([0.80, 0.84, 0.82, 0.70, 0.74]), 0.895])
    assert list(m["n"]) == [5, 4]


def test_binned_effect_log_bins():
    x = np.array([1e-4, 1.1e-4, 1e-3, 1.2e-3, 1e-2, 0.9e-2])
    df = pd.DataFrame({"status": "TERMINATED", "lr": x, "final_test_acc": [0.1, 0.3, 0.5, 0.7, 0.9, 1.1]})
    b = T.binned_effect(df, "lr", metric_col="final_test_acc", bins=3, log=True)
    assert list(b["n"]) == [2, 2, 2]
    assert list(b["mean"]) == pytest.approx([0.2, 0.6, 1.0])
    assert b.loc[0, "x"] == pytest.approx(math.sqrt(1e-4 * 1.1e-4))  # geometric mean of the bin


def test_choose_group_and_log_axis(trials):
    t = trials.assign(opt=np.where(trials["seed"] == 0, "sgd", "adam"))
    assert T.choose_group(t, "lr", ["arch", "opt"], metric_col="final_test_acc") == "arch"
    assert T.choose_group(t, "arch", ["arch"], metric_col="final_test_acc") is None
    assert T.wants_log_axis(pd.Series([100, 1000, 55000]))
    assert not T.wants_log_axis(pd.Series([25, 50, 200]))
    assert T.wants_log_axis(pd.Series([0.1, 0.2]), {"loguniform": [0.1, 0.2]})


def test_levels_follow_the_spec_order():
    values = pd.Series(["Siamese", "ConvNet", "FconnNet", "other"])
    spec = {"grid": ["FconnNet", "ConvNet", "Siamese"]}
    assert T.levels(values, spec) == ["FconnNet", "ConvNet", "Siamese", "other"]
    numbers = T.levels(pd.Series([0.1, 0.001, None]))
    assert numbers[:2] == [0.001, 0.1] and math.isnan(numbers[2])  # missing last


def test_study_meta_fallbacks(trials):
    spec = {"name": "s", "space": {"arch": {"grid": ["A", "B"]}, "lr": {"choice": [0.1, 0.01]}}, "metric": "test_acc"}
    meta = study_meta({}, spec, trials)
    assert meta.hyperparameters == ("arch", "lr")
    assert meta.searched == ("arch", "lr") and meta.grid_axes == ("arch",)
    assert (meta.metric, meta.mode, meta.metric_col) == ("test_acc", "max", "final_test_acc")
    bare = study_meta({}, {}, trials)
    assert bare.searched == ("arch", "lr") and bare.metric == "test_acc" and bare.name == "study"
    assert infer_hyperparameters(list(trials.columns)) == ("arch", "lr")
    # no declared semantics: the spec's mode, never a guess from the metric's name
    loss = study_meta({}, {"metric": "test_loss"}, trials.assign(final_test_loss=0.1))
    assert loss.mode == "max" and loss.semantics == {}
    declared = study_meta({"metric": "test_loss", "metric_semantics": {"test_loss": {"direction": "min", "unit": "loss"}}},
                          {}, trials.assign(final_test_loss=0.1))  # fmt: skip
    assert declared.mode == "min" and declared.semantics["test_loss"].unit == "loss"
