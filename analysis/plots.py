"""Report figures: pure functions from result tables (`analysis.plotdata`) to Plotly figures.

Every text that comes from the study (level names, labels) goes through `text`, which escapes
HTML: Plotly renders a subset of HTML in titles, legends and ticks, and a study must not be able
to inject markup. Rules the report relies on:

- Effect plot of a searched hyperparameter x: one line per level of the *group*, the categorical
  searched hyperparameter other than x with the largest spread of level means
  (`analysis.plotdata.choose_group`); a discrete x shows, per (group, x), the best configuration
  of the other hyperparameters (mean and CI over its repeats, `analysis.plotdata.profile`); a
  continuous x (random search) shows bins of x. Log x axis for ``loguniform`` keys and positive
  values spanning two decades or more (e.g. training-set sizes, learning rates).
- Heat maps for every pair of grid axes; with three or more grid axes, the categorical one with
  the most effect becomes the panel (one panel per net), the others are paired. A map of one
  value gets a colour bar around it.
- Metric axes are percentages only for metrics declared as fractions; numeric x axes of whole
  numbers are ticked at those numbers; bands are clipped to the unit's bounds (in the tables).
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from analysis.aggregate import default_group_by, finished, is_categorical, is_continuous, levels, semantic
from analysis.format import format_value
from analysis.load import StudyResults
from analysis.plotdata import binned_effect, choose_group, marginal, profile, repeated, wants_log_axis
from core.errors import printable

COLORS = qualitative.Plotly + qualitative.D3
HEIGHT = 420  # px, default figure height
TEMPLATE = "plotly_white"
MARKED_EPOCHS = 25  # learning curves with at most this many points also mark each epoch
MAX_PARCOORDS = 20_000  # trials drawn in the parallel-coordinates plot (seeded sample beyond)


@dataclass(frozen=True)
class FigureItem:
    """A figure with the report section it belongs to and a short caption."""

    section: str
    key: str
    figure: go.Figure
    caption: str = ""


def text(value: Any) -> str:
    """A value as display text, HTML-escaped for Plotly's pseudo-HTML labels, control characters removed."""
    return html.escape(printable(format_value(value) if not isinstance(value, str) else value))


def metric_title(metric_col: str) -> str:
    """Axis title of a metric column, e.g. ``final test_acc``."""
    head, _, rest = metric_col.partition("_")
    return text(f"{head} {rest}" if head in ("final", "best") else metric_col)


def _base_layout(fig: go.Figure, title: str, height: int = HEIGHT) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        template=TEMPLATE,
        height=height,
        margin={"l": 60, "r": 20, "t": 60, "b": 55},
        legend={"title": {"side": "top"}},
    )
    return fig


def _percent(unit: str | None) -> str | None:
    """Tick format of a metric axis: percentages for declared fractions, raw otherwise."""
    return ".1%" if unit == "fraction" else None


def _integer_ticks(values: Sequence[Any]) -> dict[str, Any]:
    """Tick values at the data's own whole numbers (an axis of batch sizes never shows 37.5)."""
    v = np.asarray([x for x in values if not pd.isna(x)], dtype=float)
    if v.size and np.all(v == np.round(v)) and len(np.unique(v)) <= 12:
        uniq = np.unique(v)
        return {"tickvals": list(uniq), "ticktext": [f"{int(x):d}" for x in uniq]}
    return {}


def _errors(table: pd.DataFrame) -> dict[str, Any]:
    """error_y arguments for a (mean, ci_lo, ci_hi) table; missing intervals draw no bar."""
    hi = (table["ci_hi"] - table["mean"]).fillna(0).to_numpy(float)
    lo = (table["mean"] - table["ci_lo"]).fillna(0).to_numpy(float)
    return {"type": "data", "array": hi, "arrayminus": lo, "visible": True, "thickness": 1.2}


# ---------------------------------------------------------------------------------------------
# figures


def effect_figure(
    table: pd.DataFrame,
    x: str,
    *,
    metric_col: str,
    group: str | None = None,
    log_x: bool = False,
    categorical_x: bool = False,
    x_order: Sequence[Any] | None = None,
    group_order: Sequence[Any] | None = None,
    unit: str | None = None,
) -> go.Figure:
    """Metric against hyperparameter `x`: mean and CI, one line per level of `group`.

    `table` is `analysis.plotdata.profile` (keys [group, x]) or `binned_effect` output: columns
    x (or ``x``), ``mean``, ``ci_lo``, ``ci_hi``, ``n`` and optionally ``config``.
    """
    xcol = x if x in table.columns else "x"
    fig = go.Figure()
    groups = list(group_order) if group_order is not None else (list(pd.unique(table[group])) if group else [None])
    for i, level in enumerate(groups):
        part = table if group is None else table[table[group].map(format_value) == format_value(level)]
        if part.empty:
            continue
        if categorical_x:
            order = {format_value(v): j for j, v in enumerate(x_order or pd.unique(part[xcol]))}
            part = part.iloc[np.argsort([order.get(format_value(v), 1e9) for v in part[xcol]], kind="stable")]
            xs = [text(v) for v in part[xcol]]
        else:
            part = part.sort_values(xcol)
            xs = part[xcol].to_numpy(float)
        configs = part["config"] if "config" in part.columns else pd.Series([""] * len(part))
        hover = [
            f"n={int(n)}" + (f"<br>{html.escape(str(c))}" if c else "") for n, c in zip(part["n"], configs.fillna(""))
        ]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=part["mean"].to_numpy(float),
                error_y=_errors(part),
                mode="markers" if categorical_x and group is None else "lines+markers",
                name=f"{text(group)}={text(level)}" if group else "all",
                line={"color": COLORS[i % len(COLORS)]},
                text=hover,
                hovertemplate="%{x}: %{y:.4g}<br>%{text}<extra>%{fullData.name}</extra>",
            )
        )
    title = f"Effect of {text(x)}" + (f", one line per {text(group)}" if group else "")
    _base_layout(fig, title)
    fig.update_xaxes(title_text=text(x), type="log" if log_x else ("category" if categorical_x else "linear"))
    if not categorical_x and xcol in table.columns:
        fig.update_xaxes(**_integer_ticks(table[xcol]))
    fig.update_yaxes(title_text=f"{metric_title(metric_col)} (mean, 95% CI)", tickformat=_percent(unit))
    fig.update_layout(showlegend=group is not None, legend={"title": {"text": text(group) if group else ""}})
    return fig


def heatmap_figure(
    table: pd.DataFrame,
    x: str,
    y: str,
    *,
    metric_col: str,
    mode: str,
    panel: str | None = None,
    x_order: Sequence[Any] | None = None,
    y_order: Sequence[Any] | None = None,
    panel_order: Sequence[Any] | None = None,
    unit: str | None = None,
) -> go.Figure:
    """Mean metric over the (x, y) grid, one panel per level of `panel`, one shared colour scale
    (around the value when every cell has the same one).

    `table` is `analysis.plotdata.profile` output with keys [panel, x, y].
    """
    panels = list(panel_order) if panel_order is not None else (list(pd.unique(table[panel])) if panel else [None])
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    titles = [f"{text(panel)}={text(p)}" for p in panels] if panel else None
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.06, vertical_spacing=0.14)
    xs = list(x_order) if x_order is not None else levels(table[x])
    ys = list(y_order) if y_order is not None else levels(table[y])
    fraction = unit == "fraction"
    for i, level in enumerate(panels):
        part = table if panel is None else table[table[panel].map(format_value) == format_value(level)]
        z = np.full((len(ys), len(xs)), np.nan)
        hover = np.full((len(ys), len(xs)), "", dtype=object)
        xi = {format_value(v): j for j, v in enumerate(xs)}
        yi = {format_value(v): j for j, v in enumerate(ys)}
        for r in part.to_dict("records"):
            a, b = yi.get(format_value(r[y])), xi.get(format_value(r[x]))
            if a is None or b is None:
                continue
            z[a, b] = r["mean"]
            ci = "" if pd.isna(r["ci_lo"]) else f"<br>95% CI [{r['ci_lo']:.4g}, {r['ci_hi']:.4g}]"
            hover[a, b] = f"n={int(r['n'])}{ci}" + (f"<br>{html.escape(str(r['config']))}" if r.get("config") else "")
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=[text(v) for v in xs],
                y=[text(v) for v in ys],
                coloraxis="coloraxis",
                text=hover,
                texttemplate="%{z:.1%}" if fraction else "%{z:.3g}",
                hovertemplate=f"{text(x)}=%{{x}}<br>{text(y)}=%{{y}}<br>mean %{{z:.4g}}%{{text}}<extra></extra>",
                name=f"{text(panel)}={text(level)}" if panel else "all",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    fig.update_xaxes(title_text=text(x), type="category")
    fig.update_yaxes(type="category")
    for r in range(1, rows + 1):
        fig.update_yaxes(title_text=text(y), row=r, col=1)
    scale = "Viridis" if mode == "max" else "Viridis_r"
    coloraxis: dict[str, Any] = {
        "colorscale": scale,
        "colorbar": {"title": {"text": metric_title(metric_col)}, "tickformat": _percent(unit)},
    }
    z_all = pd.to_numeric(table["mean"], errors="coerce").dropna().to_numpy(float) if len(table) else np.array([])
    if z_all.size and np.ptp(z_all) == 0:  # one value: a colour bar around it, not a degenerate one
        pad = abs(float(z_all[0])) * 0.01 or 0.01
        coloraxis |= {"cmin": float(z_all[0]) - pad, "cmax": float(z_all[0]) + pad}
    fig.update_layout(coloraxis=coloraxis)
    title = f"{metric_title(metric_col)} over {text(x)} x {text(y)}" + (
        f", one panel per {text(panel)}" if panel else ""
    )
    return _base_layout(fig, title, height=max(HEIGHT, 330 * rows + 60))


def curves_figure(
    curves: pd.DataFrame, metrics: Sequence[str], units: Mapping[str, str | None] | None = None
) -> go.Figure:
    """Learning curves: per-epoch mean (line) and 95% CI (band) over repeats, one panel per metric.

    `curves` is `analysis.plotdata.learning_curves` output (long format).
    """
    metrics = [m for m in metrics if m in set(curves["metric"])] or list(pd.unique(curves["metric"]))
    fig = make_subplots(rows=1, cols=max(len(metrics), 1), subplot_titles=[text(m) for m in metrics])
    labels = list(pd.unique(curves["label"]))
    for j, m in enumerate(metrics):
        for i, label in enumerate(labels):
            part = curves[(curves["metric"] == m) & (curves["label"] == label)].sort_values("epoch")
            if part.empty:
                continue
            color = COLORS[i % len(COLORS)]
            band = part.dropna(subset=["ci_lo", "ci_hi"])
            if len(band):
                ex = band["epoch"].to_numpy(float)
                fig.add_trace(
                    go.Scatter(
                        x=np.concatenate([ex, ex[::-1]]),
                        y=np.concatenate([band["ci_hi"].to_numpy(float), band["ci_lo"].to_numpy(float)[::-1]]),
                        fill="toself",
                        fillcolor=color,
                        opacity=0.18,
                        line={"width": 0},
                        hoverinfo="skip",
                        showlegend=False,
                        legendgroup=label,
                        name=f"{text(label)} (95% CI)",
                    ),
                    row=1,
                    col=j + 1,
                )
            fig.add_trace(
                go.Scatter(
                    x=part["epoch"].to_numpy(float),
                    y=part["mean"].to_numpy(float),
                    mode="lines+markers" if len(part) <= MARKED_EPOCHS else "lines",
                    marker={"size": 5},
                    line={"color": color, "width": 2},
                    name=text(label),
                    legendgroup=label,
                    showlegend=j == 0,
                    hovertemplate="epoch %{x}: %{y:.4g}<extra>%{fullData.name}</extra>",
                ),
                row=1,
                col=j + 1,
            )
        fig.update_xaxes(title_text="epoch", row=1, col=j + 1)
        fig.update_yaxes(title_text=f"{text(m)} (mean, 95% CI)", row=1, col=j + 1)
        if (units or {}).get(m) == "fraction":
            fig.update_yaxes(tickformat=".1%", row=1, col=j + 1)
    _base_layout(fig, "Learning curves of the best configurations", height=HEIGHT + 60)
    fig.update_layout(legend={"orientation": "h", "y": -0.22, "x": 0})
    return fig


def parallel_figure(
    trials: pd.DataFrame,
    dims: Sequence[str],
    *,
    metric_col: str,
    mode: str,
    space: Mapping[str, Any] | None = None,
    max_lines: int = MAX_PARCOORDS,
    seed: int = 0,
    unit: str | None = None,
) -> go.Figure:
    """Parallel coordinates of all finished trials: searched hyperparameters then the metric.

    Categorical axes list their levels; log-scaled hyperparameters are drawn as log10.
    """
    space = space or {}
    done = finished(trials).dropna(subset=[metric_col])
    if len(done) > max_lines:
        done = done.sample(n=max_lines, random_state=seed)
    dimensions = []
    for d in dims:
        values = done[d]
        if is_categorical(values) or (not is_continuous(values) and values.nunique() <= 1):
            order = levels(values, space.get(d))
            code = {format_value(v): i for i, v in enumerate(order)}
            dimensions.append(
                {
                    "label": text(d),
                    "values": values.map(lambda v, c=code: c[format_value(v)]).to_numpy(float),
                    "tickvals": list(range(len(order))),
                    "ticktext": [text(v) for v in order],
                }
            )
        elif wants_log_axis(values, space.get(d)):
            logs = np.log10(values.to_numpy(float))
            dim = {"label": f"{text(d)} (log10)", "values": logs}
            if not is_continuous(values):
                uniq = levels(values)
                dim |= {"tickvals": list(np.log10(np.asarray(uniq, float))), "ticktext": [text(v) for v in uniq]}
            dimensions.append(dim)
        else:
            dimensions.append({"label": text(d), "values": values.to_numpy(float)})
    metric = done[metric_col].to_numpy(float)
    dimensions.append({"label": metric_title(metric_col), "values": metric})
    fig = go.Figure(
        go.Parcoords(
            dimensions=dimensions,
            domain={"x": [0.04, 0.86]},
            line={
                "color": metric,
                "colorscale": "Viridis" if mode == "max" else "Viridis_r",
                "showscale": True,
                "colorbar": {"title": {"text": metric_title(metric_col)}, "tickformat": _percent(unit)},
            },
        )
    )
    _base_layout(fig, f"All finished trials ({len(done)}), coloured by {metric_title(metric_col)}", height=HEIGHT + 40)
    fig.update_layout(margin={"l": 70, "r": 40, "t": 90, "b": 30})
    return fig


def importance_figure(importance: pd.DataFrame) -> go.Figure:
    """Horizontal bars of hyperparameter importance (largest on top)."""
    imp = importance.sort_values("importance")
    evaluator = str(imp["evaluator"].iloc[0]) if len(imp) else ""
    fig = go.Figure(
        go.Bar(
            x=imp["importance"].to_numpy(float),
            y=[text(p) for p in imp["param"]],
            orientation="h",
            marker={"color": COLORS[0]},
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
            name="importance",
        )
    )
    _base_layout(fig, f"Hyperparameter importance, {text(evaluator)}", height=max(240, 90 + 40 * len(imp)))
    fig.update_xaxes(title_text="importance (sums to 1)", rangemode="tozero")
    if len(imp):
        fig.add_annotation(text=f"{int(imp['n_trials'].iloc[0])} (configuration, seed) units", showarrow=False,
                           xref="paper", yref="paper", x=1, y=1.08, xanchor="right")  # fmt: skip
    fig.update_yaxes(title_text="hyperparameter")
    return fig


def best_comparison_figure(best: Mapping[str, pd.DataFrame], *, metric_col: str, unit: str | None = None) -> go.Figure:
    """Bars of each study's best configurations (mean and CI of `metric_col`), one colour per study.

    `best` maps a study name to its `analysis.aggregate.best_configs` table with a ``label`` column.
    """
    fig = go.Figure()
    for i, (name, table) in enumerate(best.items()):
        if table.empty or f"{metric_col}_mean" not in table.columns:
            continue
        part = table.rename(columns={f"{metric_col}_{s}": s for s in ("mean", "ci_lo", "ci_hi", "n")})
        fig.add_trace(
            go.Bar(
                x=[text(v) for v in part["label"]],
                y=part["mean"].to_numpy(float),
                error_y=_errors(part),
                name=text(name),
                marker={"color": COLORS[i % len(COLORS)]},
                hovertemplate="%{x}: %{y:.4g}<extra>%{fullData.name}</extra>",
            )
        )
    _base_layout(fig, f"Best configurations: {metric_title(metric_col)}", height=HEIGHT + 80)
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="configuration", tickangle=-20, automargin=True)
    fig.update_yaxes(title_text=f"{metric_title(metric_col)} (mean, 95% CI)")
    if unit == "fraction":
        fig.update_yaxes(tickformat=".1%")
    return fig


# ---------------------------------------------------------------------------------------------
# all figures of a study


def study_figures(results: StudyResults, tables: Mapping[str, pd.DataFrame]) -> list[FigureItem]:
    """Every figure of a study's report, in report order (sections: effects, heatmaps, curves,
    parallel, importance). Figures without data are left out."""
    meta = results.meta
    trials, summary = tables["trials"], tables["summary"]
    metric_col = meta.metric_col
    if f"{metric_col}_mean" not in summary.columns or summary[f"{metric_col}_mean"].notna().sum() == 0:
        return []
    items: list[FigureItem] = []
    candidates = default_group_by(trials, meta.searched)
    for x in meta.searched:
        items += _effect_item(results, tables, x, candidates)
    items += _heatmap_items(results, tables)
    if not tables["curves"].empty:
        metrics = [m for m in dict.fromkeys([meta.metric, "train_loss"])]
        units = {m: _unit(results, m) for m in metrics}
        items.append(FigureItem("curves", "curves", curves_figure(tables["curves"], metrics, units)))
    dims = [d for d in meta.searched if d in trials.columns]
    if dims:
        fig = parallel_figure(
            trials, dims, metric_col=metric_col, mode=meta.mode, space=meta.space, unit=_unit(results, metric_col)
        )
        items.append(FigureItem("parallel", "parallel", fig))
    if not tables["importance"].empty:
        items.append(FigureItem("importance", "importance", importance_figure(tables["importance"])))
    return items


def _unit(results: StudyResults, column: str) -> str | None:
    m = semantic(results.meta.semantics, column)
    return m.unit if m is not None else None


def _effect_item(
    results: StudyResults, tables: Mapping[str, pd.DataFrame], x: str, candidates: Sequence[str]
) -> list[FigureItem]:
    meta = results.meta
    trials, summary = tables["trials"], tables["summary"]
    metric_col = meta.metric_col
    if x not in trials.columns:
        return []
    group = choose_group(trials, x, candidates, metric_col=metric_col)
    done = finished(trials)
    log_x = wants_log_axis(done[x], meta.space.get(x))
    group_order = levels(done[group], meta.space.get(group)) if group else None
    if is_continuous(done[x]):
        table = binned_effect(trials, x, metric_col=metric_col, group=group, log=log_x, semantics=meta.semantics)
        caption = "Finished trials binned by value (10 bins); mean and 95% CI over the trials of each bin."
        categorical = False
    else:
        keys = [group, x] if group else [x]
        table, caption = _cells(trials, summary, keys, meta)
        categorical = is_categorical(done[x])
    if table.empty:
        return []
    fig = effect_figure(
        table,
        x,
        metric_col=metric_col,
        group=group,
        log_x=log_x,
        categorical_x=categorical,
        x_order=levels(done[x], meta.space.get(x)) if categorical else None,
        group_order=group_order,
        unit=_unit(results, metric_col),
    )
    return [FigureItem("effects", f"effect-{x}", fig, caption)]


def _cells(trials: pd.DataFrame, summary: pd.DataFrame, keys: Sequence[str], meta: Any) -> tuple[pd.DataFrame, str]:
    """Per combination of `keys`: the best setting of the others (profile) if configurations are
    repeated, else the mean over all trials there (marginal); with a caption saying which."""
    if repeated(summary):
        table = profile(summary, keys, metric_col=meta.metric_col, mode=meta.mode, hyperparameters=meta.hyperparameters)
        return table, (
            "Per value (cell), the best setting of the other hyperparameters (hover for it); "
            "mean and 95% CI over its repeats."
        )
    table = marginal(trials, keys, metric_col=meta.metric_col, semantics=meta.semantics)
    return table, "No repeated configurations: per value (cell), mean and 95% CI over all finished trials with it."


def heatmap_axes(results: StudyResults, trials: pd.DataFrame) -> tuple[str | None, list[tuple[str, str]]]:
    """The panel column and the pairs of grid axes to draw (see the module docstring)."""
    meta = results.meta
    grid = [g for g in meta.grid_axes if g in trials.columns]
    panel = None
    if len(grid) >= 3:
        panel = choose_group(trials, "", [g for g in grid if is_categorical(trials[g])], metric_col=meta.metric_col)
    axes = [g for g in grid if g != panel]
    return panel, list(itertools.combinations(axes, 2))


def _heatmap_items(results: StudyResults, tables: Mapping[str, pd.DataFrame]) -> list[FigureItem]:
    meta = results.meta
    trials, summary = tables["trials"], tables["summary"]
    panel, pairs = heatmap_axes(results, trials)
    done = finished(trials)
    items = []
    for x, y in pairs:
        keys = [k for k in (panel, x, y) if k]
        table, caption = _cells(trials, summary, keys, meta)
        if table.empty:
            continue
        fig = heatmap_figure(
            table,
            x,
            y,
            metric_col=meta.metric_col,
            mode=meta.mode,
            panel=panel,
            x_order=levels(done[x], meta.space.get(x)),
            y_order=levels(done[y], meta.space.get(y)),
            panel_order=levels(done[panel], meta.space.get(panel)) if panel else None,
            unit=_unit(results, meta.metric_col),
        )
        items.append(FigureItem("heatmaps", f"heatmap-{x}-{y}", fig, caption))
    return items
