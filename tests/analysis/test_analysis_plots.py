"""Figure structure: traces, names, axis titles and types of every plot."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from analysis import plots as P
from analysis import tables as T


@pytest.fixture(scope="module")
def digit(digit_results):
    results = digit_results
    tables = T.study_tables(results)
    return results, tables, P.study_figures(results, tables)


@pytest.fixture(scope="module")
def sizes(size_results):
    results = size_results
    tables = T.study_tables(results)
    return results, tables, P.study_figures(results, tables)


def _by_key(items):
    return {i.key: i for i in items}


def test_study_figures_sections_and_order(digit):
    _, _, items = digit
    keys = [i.key for i in items]
    assert keys == [
        "effect-arch",
        "effect-lr",
        "effect-batch_size",
        "heatmap-lr-batch_size",
        "curves",
        "parallel",
        "importance",
    ]
    assert [i.section for i in items] == ["effects"] * 3 + ["heatmaps", "curves", "parallel", "importance"]
    assert all(isinstance(i.figure, go.Figure) for i in items)


def test_effect_plot_one_line_per_net(digit):
    _, tables, items = digit
    fig = _by_key(items)["effect-lr"].figure
    assert [t.name for t in fig.data] == ["arch=FconnNet", "arch=ConvNet", "arch=parallelConv", "arch=Siamese"]
    assert all(isinstance(t, go.Scatter) and t.mode == "lines+markers" for t in fig.data)
    assert fig.layout.xaxis.title.text == "lr" and fig.layout.xaxis.type == "log"
    assert fig.layout.yaxis.title.text == "final test_acc (mean, 95% CI)"
    assert fig.layout.title.text == "Effect of lr, one line per arch"
    siamese = fig.data[3]
    assert list(siamese.x) == [0.001, 0.005, 0.01, 0.05, 0.1]
    # each point is the best batch size at that lr: mean and CI from the summary
    s = tables["summary"]
    rows = s[(s["arch"] == "Siamese") & (s["lr"] == 0.005)]
    best = rows.loc[rows["final_test_acc_mean"].idxmax()]
    assert siamese.y[1] == pytest.approx(best["final_test_acc_mean"])
    assert siamese.error_y.array[1] == pytest.approx(best["final_test_acc_ci_hi"] - best["final_test_acc_mean"])


def test_effect_plot_of_a_categorical_hyperparameter(digit):
    fig = _by_key(digit[2])["effect-arch"].figure
    assert len(fig.data) == 1 and fig.data[0].mode == "markers"
    assert fig.layout.xaxis.type == "category"
    assert list(fig.data[0].x) == ["FconnNet", "ConvNet", "parallelConv", "Siamese"]  # the spec's order


def test_heatmap_one_panel_per_net(digit):
    fig = _by_key(digit[2])["heatmap-lr-batch_size"].figure
    assert len(fig.data) == 4 and all(isinstance(t, go.Heatmap) for t in fig.data)
    assert [a.text for a in fig.layout.annotations] == [
        "arch=FconnNet",
        "arch=ConvNet",
        "arch=parallelConv",
        "arch=Siamese",
    ]
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (4, 5)  # batch sizes x learning rates
    assert list(fig.data[0].x) == ["0.001", "0.005", "0.01", "0.05", "0.1"]
    assert list(fig.data[0].y) == ["25", "50", "100", "200"]
    assert fig.layout.xaxis.title.text == "lr" and fig.layout.yaxis.title.text == "batch_size"
    assert all(t.coloraxis == "coloraxis" for t in fig.data)


def test_learning_curves_bands_and_lines(digit):
    _, tables, items = digit
    fig = _by_key(items)["curves"].figure
    labels = list(tables["best"]["label"])
    lines = [t for t in fig.data if t.fill != "toself"]
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(lines) == 2 * len(labels) and len(bands) == 2 * len(labels)  # test_acc and train_loss
    assert [t.name for t in lines if t.showlegend] == labels
    assert all(t.mode == "lines+markers" for t in lines)  # 6 epochs: each one marked
    assert fig.layout.xaxis.title.text == "epoch" and fig.layout.xaxis2.title.text == "epoch"
    assert [a.text for a in fig.layout.annotations] == ["test_acc", "train_loss"]


def test_parallel_coordinates(digit):
    _, tables, items = digit
    fig = _by_key(items)["parallel"].figure
    (trace,) = fig.data
    assert isinstance(trace, go.Parcoords)
    assert [d.label for d in trace.dimensions] == ["arch", "lr (log10)", "batch_size", "final test_acc"]
    assert list(trace.dimensions[0].ticktext) == ["FconnNet", "ConvNet", "parallelConv", "Siamese"]
    n_done = int(((tables["trials"]["status"] == "TERMINATED") & tables["trials"]["final_test_acc"].notna()).sum())
    assert len(trace.dimensions[-1].values) == n_done


def test_importance_bars(digit):
    _, tables, items = digit
    fig = _by_key(items)["importance"].figure
    (bar,) = fig.data
    assert isinstance(bar, go.Bar) and bar.orientation == "h"
    imp = tables["importance"].sort_values("importance")
    assert list(bar.y) == list(imp["param"]) and list(bar.x) == pytest.approx(list(imp["importance"]))
    assert fig.layout.xaxis.title.text == "importance (sums to 1)"


def test_share_split_size_crossover_on_log_axis(sizes):
    _, _, items = sizes
    fig = _by_key(items)["effect-train_size"].figure
    assert fig.layout.xaxis.type == "log"
    share, split = fig.data
    assert (share.name, split.name) == ("head=share", "head=split")
    assert split.y[0] > share.y[0] and share.y[-1] > split.y[-1]  # split wins small, share wins large
    heat = _by_key(items)["heatmap-train_size-features"].figure
    assert [a.text for a in heat.layout.annotations] == ["head=share", "head=split"]


def test_binned_effect_for_random_search():
    rng = np.random.default_rng(1)
    n = 200
    trials = pd.DataFrame(
        {
            "status": "TERMINATED",
            "wd": np.exp(rng.uniform(np.log(1e-6), np.log(1e-2), n)),
            "net": rng.choice(["a", "b"], n),
        }
    )
    trials["final_test_acc"] = 0.8 + 0.01 * np.log10(trials["wd"]) + np.where(trials["net"] == "a", 0.05, 0)
    table = T.binned_effect(trials, "wd", metric_col="final_test_acc", group="net", log=True)
    fig = P.effect_figure(table, "wd", metric_col="final_test_acc", group="net", log_x=True, group_order=["a", "b"])
    assert [t.name for t in fig.data] == ["net=a", "net=b"]
    assert all(len(t.x) == 10 for t in fig.data) and fig.layout.xaxis.type == "log"


def test_labels_are_escaped():
    table = pd.DataFrame(
        {
            "net": ["<b>x</b>", "<b>x</b>"],
            "lr": [0.1, 0.01],
            "n": [2, 2],
            "mean": [0.5, 0.6],
            "ci_lo": 0.4,
            "ci_hi": 0.7,
        }
    )
    fig = P.effect_figure(table, "lr", metric_col="final_test_acc", group="net")
    assert fig.data[0].name == "net=&lt;b&gt;x&lt;/b&gt;"
    bars = P.best_comparison_figure(
        {"<i>s</i>": pd.DataFrame({"label": ["a"], "final_test_acc_mean": [0.5], "final_test_acc_ci_lo": [0.4],
                                  "final_test_acc_ci_hi": [0.6], "final_test_acc_n": [3]})},
        metric_col="final_test_acc",
    )  # fmt: skip
    assert bars.data[0].name == "&lt;i&gt;s&lt;/i&gt;"
    assert bars.layout.yaxis.title.text == "final test_acc (mean, 95% CI)"


def test_no_finished_trial_means_no_figures(digit_results):
    results = dataclasses.replace(digit_results, trials=digit_results.trials.assign(status="RUNNING"))
    tables = T.study_tables(results)
    assert P.study_figures(results, tables) == []
    assert tables["best"].empty and tables["importance"].empty and tables["curves"].empty
