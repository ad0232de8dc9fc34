"""Synthetic results tables in the runner's format, for tests, benchmarks and report previews.

`digit_pairs_study` mimics the digit-pair grid (arch x lr x batch_size, seed 002) and
`share_split_study` the share/split training-set-size sweep (seed 000), with a crossover: split
heads win on little data, share heads on much. Nothing here touches the disk; the caller writes
``trials``/``epochs`` as Parquet (``metadata`` JSON under ``b"study"``) and ``spec`` as YAML.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.metrics import ACCURACY, LOSS, PLATFORM_METRICS, semantics_to_json

# what the synthetic families report, declared as a family declares it
SEMANTICS = {"test_acc": ACCURACY, "train_loss": LOSS, "test_loss": LOSS, **PLATFORM_METRICS}

ARCH_PARAMS = {"FconnNet": 377_826, "ConvNet": 37_005, "parallelConv": 69_886, "Siamese": 34_964}
ARCH_BEST = {  # (accuracy at the best setting, best lr, best batch size): the paper's Table 1
    "FconnNet": (0.8065, 0.1, 100),
    "ConvNet": (0.8087, 0.05, 25),
    "parallelConv": (0.8836, 0.01, 100),
    "Siamese": (0.9114, 0.005, 50),
}


@dataclass(frozen=True)
class SyntheticStudy:
    """Tables as the runner writes them plus the resolved spec."""

    trials: pd.DataFrame
    epochs: pd.DataFrame
    metadata: dict[str, Any]
    spec: dict[str, Any]


def _assemble(
    name: str,
    grid: Mapping[str, Sequence[Any]],
    fixed: Mapping[str, Any],
    random_space: Mapping[str, tuple[float, float]],
    score: Callable[[pd.DataFrame], np.ndarray],
    *,
    repeats: int,
    epochs: int,
    trainable: str,
    paper: Mapping[str, Any] | None,
    p_diverged: float,
    p_error: float,
    n_running: int,
    seed: int,
    noise: float,
) -> SyntheticStudy:
    """Build the two tables for the grid x repeats, with `score` giving each trial's final accuracy."""
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(*grid.values()))
    rows = [dict(zip(grid, c)) | {"seed": s} for c in combos for s in range(repeats)]
    trials = pd.DataFrame(rows)
    n = len(trials)
    for k, (lo, hi) in random_space.items():
        trials[k] = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    for k, v in fixed.items():
        trials[k] = [v] * n
    acc = np.clip(score(trials) + rng.normal(0.0, noise, n), 0.0, 1.0)
    status = np.full(n, "TERMINATED", dtype=object)
    draw = rng.uniform(size=n)
    status[draw < p_diverged + p_error] = "ERROR"
    status[draw < p_diverged] = "DIVERGED"
    if n_running:
        status[-n_running:] = "RUNNING"
        status[-1] = "PENDING"
    done = np.where(status == "TERMINATED", epochs, 0)
    done = np.where(status == "DIVERGED", rng.integers(1, epochs + 1, n), done)
    done = np.where(status == "ERROR", rng.integers(0, epochs, n), done)
    done = np.where(status == "RUNNING", rng.integers(1, max(epochs, 2), n), done)
    tau = epochs / 4.0
    trial_ids = [f"{name[:8]}_{i:05d}" for i in range(n)]
    # epochs table, vectorised: one row per (trial, epoch <= epochs_done)
    rep = np.repeat(np.arange(n), done)
    ep = np.concatenate([np.arange(1, d + 1) for d in done]) if done.sum() else np.zeros(0, int)
    ramp = 1.0 - np.exp(-ep / tau)
    test_acc = 0.5 + (acc[rep] - 0.5) * ramp + rng.normal(0.0, noise / 3, len(ep))
    train_loss = 0.05 + 0.65 * np.exp(-ep / tau) + (1.0 - acc[rep]) * 0.3
    test_loss = train_loss + 0.1 + rng.normal(0.0, 0.01, len(ep))
    diverged_now = (status[rep] == "DIVERGED") & (ep == done[rep])
    ep_frame = pd.DataFrame(
        {
            "trial_id": np.asarray(trial_ids, dtype=object)[rep],
            "epoch": ep,
            "train_loss": train_loss,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "time_total_s": ep * 1.5,
            "diverged": diverged_now.astype(int),
        }
    )
    per = ep_frame.groupby("trial_id", sort=False)
    out = trials.copy()
    out.insert(0, "status", status)
    out.insert(0, "trial_id", trial_ids)
    for m in ("train_loss", "test_acc", "test_loss"):
        final = per[m].last().reindex(trial_ids).to_numpy()
        best = (per[m].min() if "loss" in m else per[m].max()).reindex(trial_ids).to_numpy()
        out[f"final_{m}"], out[f"best_{m}"] = final, best
    out["params"] = [ARCH_PARAMS.get(str(a), 50_000) for a in trials.get("arch", pd.Series(["x"] * n))]
    out["epochs_done"] = done
    out["wall_time_s"] = done * 1.5 + rng.uniform(0.5, 2.0, n)
    out["num_failures"] = (status == "ERROR").astype(int)
    out["error"] = np.where(
        status == "ERROR",
        "RuntimeError: CUDA out of memory <simulated>",
        np.where(status == "DIVERGED", "loss nan", None),
    )
    hyper = [*grid, *random_space, *fixed]
    space = {k: {"grid": list(v)} for k, v in grid.items()} | {
        k: {"loguniform": [lo, hi]} for k, (lo, hi) in random_space.items()
    }
    spec = {
        "name": name,
        "description": f"Synthetic {name} study for tests and previews.",
        "trainable": trainable,
        "data": {"source": "synthetic"},
        "fixed": dict(fixed),
        "space": space,
        "repeats": repeats,
        "metric": "test_acc",
        "mode": "max",
    } | ({"paper": dict(paper)} if paper else {})
    metadata = {
        "name": name,
        "spec_file": f"search_spaces/{trainable}.yaml",
        "trainable": trainable,
        "data_source": "synthetic",
        "metric": "test_acc",
        "mode": "max",
        "hyperparameters": hyper,
        "searched": [*grid, *random_space],
        "grid_axes": list(grid),
        "metric_semantics": semantics_to_json(SEMANTICS),
    }
    return SyntheticStudy(trials=out, epochs=ep_frame, metadata=metadata, spec=spec)


def digit_pairs_study(
    *,
    archs: Sequence[str] = tuple(ARCH_BEST),
    lrs: Sequence[float] = (0.001, 0.005, 0.01, 0.05, 0.1),
    batch_sizes: Sequence[int] = (25, 50, 100, 200),
    extra_grid: Mapping[str, Sequence[Any]] | None = None,
    random_space: Mapping[str, tuple[float, float]] | None = None,
    repeats: int = 3,
    epochs: int = 10,
    n_running: int = 0,
    p_diverged: float = 0.03,
    p_error: float = 0.02,
    name: str = "digit-pairs",
    seed: int = 0,
) -> SyntheticStudy:
    """The digit-pair grid (PAPERS.md section 1) with accuracies peaking at the paper's Table 1."""
    grid = {"arch": list(archs), "lr": list(lrs), "batch_size": list(batch_sizes)} | dict(extra_grid or {})

    def score(t: pd.DataFrame) -> np.ndarray:
        top, lr0, b0 = (np.array([ARCH_BEST.get(a, (0.85, 0.01, 50))[i] for a in t["arch"]]) for i in range(3))
        pen = 0.02 * (np.log10(t["lr"].to_numpy(float)) - np.log10(lr0)) ** 2
        pen += 0.01 * np.abs(np.log2(t["batch_size"].to_numpy(float) / b0))
        return top - pen

    paper = {
        "citation": "EPFL deep-learning mini-project (seed 002), Table 1",
        "results": [
            {
                "label": f"{a} best",
                "where": {"arch": a, "lr": lr, "batch_size": b},
                "metric": "test_acc",
                "value": v,
                "dataset": "synthetic",
            }
            for a, (v, lr, b) in ARCH_BEST.items()
            if a in archs
        ],
    }
    return _assemble(
        name,
        grid,
        {"aux_loss": False, "optimizer": "sgd"},
        dict(random_space or {}),
        score,
        repeats=repeats,
        epochs=epochs,
        trainable="digit_pairs",
        paper=paper,
        p_diverged=p_diverged,
        p_error=p_error,
        n_running=n_running,
        seed=seed,
        noise=0.012,
    )


def share_split_study(
    *,
    sizes: Sequence[int] = (100, 300, 1000, 3000, 10_000, 55_000),
    features: Sequence[int] = (8, 16, 32),
    repeats: int = 3,
    epochs: int = 8,
    name: str = "share-split-size",
    seed: int = 1,
) -> SyntheticStudy:
    """The share/split training-size sweep (PAPERS.md section 2); the curves cross near 3,000."""
    grid = {"head": ["share", "split"], "train_size": list(sizes), "features": list(features)}

    def score(t: pd.DataFrame) -> np.ndarray:
        logn = np.log10(t["train_size"].to_numpy(float))
        split = (t["head"] == "split").to_numpy()
        base = 0.99 - 0.5 * np.exp(-(logn - 1.5) / 0.9)
        return base + np.where(split, 0.03, -0.03) * (3.5 - logn) / 2 - 0.001 * np.abs(t["features"] - 16) / 8

    paper = {
        "citation": "Share or Split (seed 000), Table 1, classification, Train55K",
        "results": [
            {"label": "Share K_h=16, 55K", "where": {"head": "share", "train_size": 55_000, "features": 16},
             "metric": "test_acc", "value": 0.9812, "std": None, "dataset": "synthetic"},
            {"label": "Split K_p=16, 55K", "where": {"head": "split", "train_size": 55_000, "features": 16},
             "metric": "test_acc", "value": 0.9836, "std": None, "dataset": "synthetic"},
        ],
    }  # fmt: skip
    return _assemble(
        name,
        grid,
        {"task": "cls"},
        {},
        score,
        repeats=repeats,
        epochs=epochs,
        trainable="share_split",
        paper=paper,
        p_diverged=0.0,
        p_error=0.0,
        n_running=0,
        seed=seed,
        noise=0.004,
    )


def ablation_study(
    *,
    effects: Mapping[str, float] | None = None,
    interaction: float = 0.0,
    repeats: int = 10,
    base: float = 0.80,
    noise: float = 0.01,
    claims: Sequence[Mapping[str, Any]] = (),
    data_source: str = "synthetic",
    paper_results: Sequence[Mapping[str, Any]] = (),
    name: str = "ablation",
    seed: int = 2,
) -> SyntheticStudy:
    """The digit-pair ablation (seed 002, Table 2: weight_sharing x aux_loss) with known effects.

    A trial's accuracy is ``base + effects[k]`` for each switch k that is on, plus `interaction`
    when both are, plus Gaussian `noise` (per trial). So a claim "k on beats k off" is true for
    a positive effect, false for a negative one, and untestable (no effect) for 0: the tests of
    `analysis.claims` know the answer.
    """
    effects = {"weight_sharing": 0.0, "aux_loss": 0.0, **dict(effects or {})}
    grid = {"weight_sharing": [True, False], "aux_loss": [True, False]}

    def score(t: pd.DataFrame) -> np.ndarray:
        ws = t["weight_sharing"].to_numpy(bool)
        aux = t["aux_loss"].to_numpy(bool)
        return base + effects["weight_sharing"] * ws + effects["aux_loss"] * aux + interaction * (ws & aux)

    paper = {
        "citation": "Synthetic ablation with known effects",
        "results": list(paper_results),
        "claims": list(claims),
    }
    study = _assemble(
        name,
        grid,
        {"arch": "parallelConv"},
        {},
        score,
        repeats=repeats,
        epochs=3,
        trainable="digit_pairs",
        paper=paper,
        p_diverged=0.0,
        p_error=0.0,
        n_running=0,
        seed=seed,
        noise=noise,
    )
    study.spec["data"] = {"source": data_source}
    study.metadata["data_source"] = data_source
    return study
