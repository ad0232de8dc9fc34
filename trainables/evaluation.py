"""Test metrics shared by every image family (`evaluate_images`) and their declarations.

``test_loss``, ``test_acc`` (top-1, fraction), ``test_err_pct`` (the same as an error in percent,
the papers' unit; ``test_err_top5_pct`` likewise), ``test_acc_top5`` when there are more than 10
classes, per-head accuracies for families whose forward returns several logits, and the
scale-robustness metric ``test_acc_scale_<factor>`` for each factor in ``scale_eval``
(`trainables.augment.rescale`). `image_metrics` and `IMAGE_METRIC_PATTERNS` declare them
(`core.metrics.Metric`) for a family's ``metrics`` and ``metric_patterns``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from core import metrics as M
from core.metrics import Metric
from trainables.augment import rescale

if TYPE_CHECKING:
    from trainables.images import TrialImages

SCALE_METRIC = "test_acc_scale_{}"  # one metric per factor of `scale_eval`, e.g. test_acc_scale_0.5
SCALE_METRIC_PATTERN = r"test_acc_scale_\d+(\.\d+)?"

Outputs = torch.Tensor | Mapping[str, torch.Tensor]
LossFn = Callable[[Outputs, torch.Tensor], torch.Tensor]


def main_logits(out: Outputs) -> torch.Tensor:
    """The prediction of a forward: the tensor itself, or ``out["logits"]``."""
    return out if isinstance(out, torch.Tensor) else out["logits"]


def cross_entropy(out: Outputs, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(main_logits(out), y)


def scale_metric(factor: float) -> str:
    """The metric name of one scaled test set: test_acc_scale_0.5, test_acc_scale_2."""
    return SCALE_METRIC.format(f"{float(factor):g}")


@torch.no_grad()
def evaluate_images(
    model: nn.Module,
    data: TrialImages,
    cfg: Mapping[str, Any],
    device: torch.device,
    *,
    loss_fn: LossFn = cross_entropy,
) -> dict[str, float]:
    """Test metrics shared by every image family (module docstring). A forward returning a mapping
    adds ``test_acc_<name>`` for every other logits tensor in it (e.g. SSM's heads). Scaled test
    sets every epoch, or with ``scale_eval_at: end`` only after the last (config ``__epoch__``)."""
    last_epoch = int(cfg.get("__epoch__", cfg["epochs"])) >= int(cfg["epochs"])
    factors = list(cfg["scale_eval"]) if (cfg["scale_eval_at"] == "epoch" or last_epoch) else []
    top5 = data.num_classes > 10
    sums: dict[str, float] = {}
    n = 0
    for x, y in data.batches("test", int(cfg["eval_batch_size"]), device, None):
        out = model(data.finish(x))
        logits = main_logits(out)
        b = len(y)
        n += b
        _add(sums, "test_loss", float(loss_fn(out, y)) * b)
        _add(sums, "test_acc", float((logits.argmax(1) == y).sum()))
        if top5:
            _add(sums, "test_acc_top5", float(topk_correct(logits, y, 5)))
        if not isinstance(out, torch.Tensor):
            for name, extra in out.items():
                if name != "logits" and isinstance(extra, torch.Tensor) and extra.shape == logits.shape:
                    _add(sums, f"test_acc_{name}", float((extra.argmax(1) == y).sum()))
        for f in factors:
            scaled = main_logits(model(data.finish(rescale(x, float(f)))))
            _add(sums, scale_metric(f), float((scaled.argmax(1) == y).sum()))
    metrics = {k: v / max(n, 1) for k, v in sums.items()}
    return {**metrics, **percent_errors(metrics)}


def percent_errors(metrics: Mapping[str, float]) -> dict[str, float]:
    """``test_err_pct`` (and ``test_err_top5_pct``): the test errors in percent, the papers' unit,
    so that paper rows can be written as the papers print them."""
    out = {}
    if "test_acc" in metrics:
        out["test_err_pct"] = 100.0 * (1.0 - metrics["test_acc"])
    if "test_acc_top5" in metrics:
        out["test_err_top5_pct"] = 100.0 * (1.0 - metrics["test_acc_top5"])
    return out


def _add(sums: dict[str, float], key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value


def topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum())


def image_metrics(num_classes_max: int, extra: Mapping[str, Metric] | None = None) -> dict[str, Metric]:
    """The metrics an image family declares (`Family.metrics`): losses, top-1 accuracy and error in
    percent, top-5 when some source has more than 10 classes, and the family's `extra` ones."""
    base = {
        "train_loss": M.LOSS,
        "train_acc": M.ACCURACY,
        "test_loss": M.LOSS,
        "test_acc": M.ACCURACY,
        "test_err_pct": M.ERROR_PCT,  # 100 x (1 - test_acc), the papers' unit
    }
    top5 = {"test_acc_top5": M.ACCURACY, "test_err_top5_pct": M.ERROR_PCT} if num_classes_max > 10 else {}
    return {**base, **top5, **{k: v for k, v in (extra or {}).items() if k not in base}}


# config-dependent metrics of every image family: the scaled test sets (scale_eval), top-5 with more than 10 classes
IMAGE_METRIC_PATTERNS: dict[str, Metric] = {
    SCALE_METRIC_PATTERN: M.ACCURACY,
    r"test_acc_top5": M.ACCURACY,
    r"test_err_top5_pct": M.ERROR_PCT,
}


def is_scale_metric(name: str) -> bool:
    return re.fullmatch(SCALE_METRIC_PATTERN, name) is not None
