"""Digit-pair Table 2 (seed 002) before and after a fix: final accuracies and learning curves.

Run by hand on two finished ablation studies (e.g. the same spec before and after a change):

    .venv/bin/python benchmarks/table2_curves.py --before studies/ablation_before --after studies/digit_pairs_ablation

``--before``/``--after`` take one or more study directories: an arm (weight sharing, aux loss)
is read from the last directory that has finished trials of it (so a run of two arms can
replace those arms of an earlier, partial run).

Writes to benchmarks/results/ (or --out): ``digit_pairs_table2.json`` (mean, std, n of the final
test accuracy per arm, beside the paper's), ``digit_pairs_table2_curves.csv`` (mean test accuracy
per epoch, arm and run: the learning curves as a table) and, with ``--html``,
``digit_pairs_table2_curves.html`` (the same curves as one self-contained Plotly page, ~5 MB: not
kept in git). Reads only Parquet files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

PAPER = {  # Table 2: (weight sharing, aux loss) -> (mean, std) over 20 rounds, full MNIST
    (True, True): (0.9070, 0.0162),
    (True, False): (0.8390, 0.0109),
    (False, True): (0.8842, 0.0124),
    (False, False): (0.7941, 0.0122),
}
ARMS = list(PAPER)


def arm_name(sharing: bool, aux: bool) -> str:
    return f"sharing {'yes' if sharing else 'no'}, aux {'yes' if aux else 'no'}"


def load(study_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Finished trials and their epochs; each arm from the last directory that has it."""
    chosen: dict[tuple[bool, bool], tuple[pd.DataFrame, pd.DataFrame]] = {}
    for d in study_dirs:
        trials = pd.read_parquet(d / "results" / "trials.parquet")
        epochs = pd.read_parquet(d / "results" / "epochs.parquet")
        trials = trials[trials["status"] == "TERMINATED"]
        for (sharing, aux), part in trials.groupby(["weight_sharing", "aux_loss"]):
            chosen[(bool(sharing), bool(aux))] = (part, epochs[epochs["trial_id"].isin(part["trial_id"])])
    trials = pd.concat([t for t, _ in chosen.values()], ignore_index=True)
    epochs = pd.concat([e for _, e in chosen.values()], ignore_index=True)
    return trials, epochs


def finals(trials: pd.DataFrame) -> dict[str, dict[str, float]]:
    out = {}
    for sharing, aux in ARMS:
        v = trials[(trials["weight_sharing"] == sharing) & (trials["aux_loss"] == aux)]["final_test_acc"]
        out[arm_name(sharing, aux)] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)), "n": int(len(v))}
    return out


def curves(trials: pd.DataFrame, epochs: pd.DataFrame, run: str) -> pd.DataFrame:
    e = epochs.merge(trials[["trial_id", "weight_sharing", "aux_loss"]], on="trial_id")
    g = e.groupby(["weight_sharing", "aux_loss", "epoch"])["test_acc"].agg(["mean", "std", "count"]).reset_index()
    g["arm"] = [arm_name(s, a) for s, a in zip(g["weight_sharing"], g["aux_loss"])]
    return g.assign(run=run)[["run", "arm", "epoch", "mean", "std", "count"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, nargs="+", required=True)
    p.add_argument("--after", type=Path, nargs="+", required=True)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--html", action="store_true", help="also write the curves as a self-contained Plotly page")
    a = p.parse_args()
    runs = {"before": load(a.before), "after": load(a.after)}
    summary = {
        "paper": {arm_name(*k): {"mean": m, "std": s} for k, (m, s) in PAPER.items()},
        **{run: finals(t) for run, (t, _) in runs.items()},
        "studies": {"before": [str(d) for d in a.before], "after": [str(d) for d in a.after]},
    }
    table = pd.concat([curves(t, e, run) for run, (t, e) in runs.items()], ignore_index=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "digit_pairs_table2.json").write_text(json.dumps(summary, indent=2) + "\n")
    table.to_csv(a.out / "digit_pairs_table2_curves.csv", index=False, float_format="%.4f")
    if a.html:
        write_figure(table, a.out / "digit_pairs_table2_curves.html")
    print(json.dumps(summary, indent=2))
    wide = table.pivot_table(index="epoch", columns=["run", "arm"], values="mean")
    print(wide.round(3).to_string())


def write_figure(table: pd.DataFrame, path: Path) -> None:
    fig = go.Figure()
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    for run, dash in (("before", "dot"), ("after", "solid")):
        for arm, color in zip([arm_name(*k) for k in ARMS], colors):
            part = table[(table["run"] == run) & (table["arm"] == arm)]
            fig.add_scatter(x=part["epoch"], y=part["mean"], name=f"{run}: {arm}", line={"dash": dash, "color": color})
    fig.update_layout(
        title="Digit pairs, Table 2 arms on mnist-5k: mean test accuracy per epoch (20 seeds)",
        xaxis_title="epoch", yaxis_title="test accuracy", yaxis_tickformat=".0%", template="plotly_white",
    )  # fmt: skip
    fig.write_html(path, include_plotlyjs=True)


if __name__ == "__main__":
    main()
