"""The scale-robustness table of a finished wsms study (the README's measurement).

    python scripts/wsms_scale_table.py /tmp/wsms-measure/wsms_scale_mnist [/tmp/wsms-measure/wsms_scale_mnist_psbn ...]

Reads each study's ``results/trials.parquet`` (final metrics per trial), keeps one copy of the plain net
(``stages`` 1; its ``ms`` cells are identical trials), and prints a Markdown table: mean and 95%
CI over seeds (t distribution) of the accuracy at each test scale, the mean accuracy off scale 1
and its drop from scale 1; then Welch's t-tests of WSMS-Net against the plain net and MS-Net.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats


def net_name(row: pd.Series) -> str:
    if row["stages"] == 1:
        return "plain"
    bn = ", per-stage BN" if row.get("per_stage_bn", False) is True else ""
    return f"{'MS-Net' if row['ms'] else 'WSMS-Net'} ({row['stages']} stages{bn})"


def mean_ci(values: pd.Series) -> str:
    v = values.to_numpy(dtype=float)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{100 * v.mean():.1f} ± {100 * half:.1f}"


def main(*study_dirs: str) -> None:
    df = pd.concat([pd.read_parquet(Path(d) / "results" / "trials.parquet") for d in study_dirs], ignore_index=True)
    df = df[~((df["stages"] == 1) & df["ms"])].copy()  # the same plain net again
    scales = sorted((c for c in df if c.startswith("final_test_acc_scale_")), key=lambda c: float(c.rsplit("_", 1)[1]))
    off = [c for c in scales if float(c.rsplit("_", 1)[1]) != 1.0]
    df["net"] = df.apply(net_name, axis=1)
    df["off_scale"] = df[off].mean(axis=1)
    df["drop"] = df["final_test_acc"] - df["off_scale"]
    nets = list(dict.fromkeys(sorted(df["net"], key=lambda n: (n != "plain", "MS" in n, n))))
    head = ["net", "params", "seeds", *(f"scale {c.rsplit('_', 1)[1]}" for c in scales), "mean off 1", "drop"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for net in nets:
        g = df[df["net"] == net]
        cells = [net, f"{int(g['params'].iloc[0]):,}", str(len(g)), *(mean_ci(g[c]) for c in scales)]
        print("| " + " | ".join([*cells, mean_ci(g["off_scale"]), mean_ci(g["drop"])]) + " |")
    print("\naccuracies in %, mean ± 95% CI half-width over seeds; 'mean off 1' = mean over the scales != 1;")
    print("'drop' = accuracy at scale 1 minus 'mean off 1' (per seed). Welch's t-tests (two-sided):")
    wsms = [n for n in nets if n.startswith("WSMS")]
    for w in wsms:
        for other in [n for n in nets if not n.startswith("WSMS")]:  # against plain and MS-Net
            for col, what in [("off_scale", "mean off 1"), ("drop", "drop"), *((c, f"scale {c.rsplit('_', 1)[1]}") for c in off)]:
                a, b = df.loc[df["net"] == w, col], df.loc[df["net"] == other, col]
                t = stats.ttest_ind(a, b, equal_var=False)
                print(f"  {w} - {other}, {what}: {100 * (a.mean() - b.mean()):+.1f} points, p = {t.pvalue:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
