"""Split-and-Share Module (SSM): Lee, Seo, Park & Choi, "Exploiting Features with Split-and-Share
Module" (arXiv 2108.04500). PAPERS.md section 3.

**The head** (Sec. 3, Fig. 1, Algorithm 1). The pooled backbone feature f (C channels) is split
into ``heads`` (the paper: 4) cumulative sub-features: sub-feature k = f[:, :b_k] with
b_k = round(k C / heads) (= k C / 4 when 4 divides C), so head k sees exactly the first k/heads
of the channels and the first quarter is shared by all heads. BatchNorm1d + ReLU on sub-features
1..heads-1 (``bn_relu: prose``: the text, Sec. 3, "we apply BatchNorm with ReLU to the first 3
features"; the paper's parameter counts agree with it), on all of them (``all``: Algorithm 1,
lines 6-7) or on none (``none``: the text's remark that SSM then reduces to one linear layer).
Head k = Linear(b_k -> classes); output = mean of the head outputs (Algorithm 1, line 11).

**Heads** (``head``): ``plain`` (the backbone's own FC), ``ssm``, ``2fc`` / ``3fc`` (2 or 3
parallel full-width Linear(C -> classes) heads, averaged: Table 4's parameter-matched
baselines). ``heads`` sets the number of SSM heads only.

**Training scheme** (``scheme``, Sec. 4.2.1, Table 2): ``joint`` (cross-entropy of the averaged
output: the method) or ``individual`` (a cross-entropy on each head's own output, summed by
default: each FC gets exactly its own loss's gradient; ``individual_reduce: mean`` divides by
the number of heads). For ``plain`` both are the same loss. ``test_loss`` is always the
cross-entropy of the averaged output (the prediction), so it compares across schemes;
``train_loss`` is the training objective.

**Backbones** (``arch``): torchvision's ResNet-18/34/50/101/152, ResNeXt-50 (32x4d) and
ResNeXt-101 (32x8d) from `trainables.backbones`, random init (He et al.), at any ``width``
(torchvision's at 64) and with the CIFAR stem (``cifar_stem``: 3x3 conv, no max-pool) for 32x32
inputs. Input side ``image_size`` (0 = 32 with the CIFAR stem, else 224).

**Ensembles** (Table 3, Sec. 4.2.2; **choice**: inside one trial). ``ensemble: N`` trains N
independent members in one trial and reports each member's accuracy (``test_acc_member<m>``),
the accuracy of the ensemble (``test_acc``, the averaged output) and ``test_acc_ensemble_gain``
(ensemble minus the best member: the paper's "+1.60%"). Member 1 is exactly the model a trial
with ``ensemble: 1`` and the same seed trains (same init, same batches, same augmentation);
member m > 1 draws its init and, every epoch, its batch order and augmentation from seeds
derived from (trial seed, m, epoch) (`member_seed`). Members share the optimiser object but
not a single parameter, so one SGD step on the sum of their losses is m separate SGD steps
(momentum and weight decay are per parameter). ImageNet folders: the data loader's workers
cannot serve several epoch orders at once, so there the members see the same batches and
differ in their init only (the difference the paper names). ``ensemble_combine``: ``probs``
(mean of the members' softmax; the ensemble's "logits" are the log of that mean, so
``test_loss`` is the ensemble's negative log-likelihood) or ``logits`` (mean of the logits, as
SSM averages its heads). Repeats over ``seed`` give independent ensembles; the report's best
table puts ``test_acc`` beside the ``test_acc_*`` companions (members, gain).

**Recipe** (Sec. 4.1) as defaults: SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 256,
lr / 10 after epochs 30 and 60, 90 epochs; augmentation ``auto`` = random-resized crop + flip
(``imagenet``) with the ImageNet stem, pad-4 crop + flip (``cifar``) with the CIFAR stem.

**Metrics** every epoch: ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc`` (the averaged
output; the ensemble's with ``ensemble`` > 1), ``test_acc_top5`` (more than 10 classes),
``test_acc_head<k>`` (each head's own accuracy for ssm / 2fc / 3fc: Table 2's FC1..FC4),
``test_acc_member<m>`` and ``test_acc_ensemble_gain`` (ensembles), and from the platform
``params``, ``step_time_s`` (per optimiser step, all members together), ``peak_mem_mb``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core import metrics as M
from trainables.backbones import ARCHS, ResNet
from trainables.common import ConfigError, Family, backward, check_finite
from trainables.images import (
    IMAGE_DEFAULTS,
    IMAGE_METRIC_PATTERNS,
    IMAGE_SOURCES,
    FolderImages,
    Images,
    TrialImages,
    check_batches_for_batchnorm,
    check_image_config,
    cross_entropy,
    evaluate_images,
    image_inert_keys,
    image_metrics,
    load_images,
    main_logits,
    prepare_images,
    train_epoch_images,
)

NAME = "ssm"
HEADS = ("plain", "ssm", "2fc", "3fc")
PARALLEL_FC = {"2fc": 2, "3fc": 3}
BN_RELU = ("prose", "all", "none")
SCHEMES = ("joint", "individual")
REDUCES = ("sum", "mean")
COMBINES = ("probs", "logits")
MAX_ENSEMBLE = 16

DEFAULTS: dict[str, Any] = {
    **IMAGE_DEFAULTS,
    # -- net
    "arch": "resnet50",  # resnet18 | resnet34 | resnet50 | resnet101 | resnet152 | resnext50_32x4d | resnext101_32x8d
    "width": 64,  # channels of the first residual group (torchvision: 64; groups have width x 1, 2, 4, 8)
    "cifar_stem": False,  # 3x3 stride-1 stem conv, no max-pool (32x32 inputs) instead of 7x7 stride 2 + max-pool
    "image_size": 0,  # input side, px; 0 = 32 with cifar_stem, else 224
    "head": "plain",  # plain (backbone FC) | ssm | 2fc | 3fc (parallel full-width FCs, averaged)
    "heads": 4,  # number of SSM heads (cumulative splits of the feature); the paper: 4; ssm only
    "bn_relu": "prose",  # SSM sub-features with BatchNorm1d + ReLU: prose (1..heads-1) | all (Algorithm 1) | none
    "scheme": "joint",  # joint (loss on the averaged output) | individual (a loss on each head's output)
    "individual_reduce": "sum",  # individual scheme: sum | mean of the heads' losses
    # -- ensembles (Table 3)
    "ensemble": 1,  # members trained independently inside the trial (1 = a single model)
    "ensemble_combine": "probs",  # probs (mean softmax) | logits (mean logits)
    # -- the paper's ImageNet recipe (Sec. 4.1)
    "optimizer": "sgd",
    "lr": 0.1,  # initial learning rate
    "momentum": 0.9,  # SGD momentum
    "weight_decay": 1e-4,  # L2 penalty
    "batch_size": 256,  # images per step
    "epochs": 90,  # passes over the training set
    "lr_milestones": [30, 60],  # lr x lr_gamma after these epochs
}


# ---------------------------------------------------------------------------------------------
# heads


def split_points(channels: int, heads: int) -> list[int]:
    """Channels seen by each SSM head: round(k * channels / heads), k = 1..heads (the last = all)."""
    return [round(k * channels / heads) for k in range(1, heads + 1)]


def bn_relu_heads(heads: int, placement: str) -> list[bool]:
    """Which sub-features get BatchNorm1d + ReLU: `prose` the first heads-1, `all`, or `none`."""
    if placement == "all":
        return [True] * heads
    if placement == "none":
        return [False] * heads
    return [k < heads - 1 for k in range(heads)]


class SplitShareHead(nn.Module):
    """SSM (Algorithm 1 with the prose's BN+ReLU placement by default): see the module docstring.

    forward(f (B, C)) -> (B, heads, classes): every head's output; the prediction is their mean.
    """

    def __init__(self, channels: int, num_classes: int, heads: int = 4, bn_relu: str = "prose") -> None:
        super().__init__()
        self.bounds = split_points(channels, heads)
        self.norms = nn.ModuleList(
            nn.Sequential(nn.BatchNorm1d(b), nn.ReLU()) if on else nn.Identity()
            for b, on in zip(self.bounds, bn_relu_heads(heads, bn_relu))
        )
        self.fcs = nn.ModuleList(nn.Linear(b, num_classes) for b in self.bounds)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.stack([fc(norm(f[:, :b])) for b, norm, fc in zip(self.bounds, self.norms, self.fcs)], dim=1)


class ParallelFCHead(nn.Module):
    """Table 4's baselines: `n` parallel Linear(C -> classes) heads. forward -> (B, n, classes)."""

    def __init__(self, channels: int, num_classes: int, n: int) -> None:
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(channels, num_classes) for _ in range(n))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.stack([fc(f) for fc in self.fcs], dim=1)


class SSMNet(nn.Module):
    """A ResNet/ResNeXt backbone (pooled features) and a head.

    forward(x) -> logits (B, classes) for the plain head; else {"logits": mean of the heads,
    "head1": ..., "headN": ...} (each (B, classes)), so that evaluation reports every head.
    """

    def __init__(
        self,
        arch: str,
        num_classes: int,
        *,
        width: int = 64,
        cifar_stem: bool = False,
        head: str = "plain",
        heads: int = 4,
        bn_relu: str = "prose",
    ) -> None:
        super().__init__()
        self.backbone = ResNet(arch, num_classes, width=width, cifar_stem=cifar_stem)
        channels = self.backbone.feature_dim
        if head == "plain":
            self.head: nn.Module = self.backbone.fc  # the backbone's own FC, moved out of it
        elif head == "ssm":
            self.head = SplitShareHead(channels, num_classes, heads, bn_relu)
        else:
            self.head = ParallelFCHead(channels, num_classes, PARALLEL_FC[head])
        self.backbone.fc = nn.Identity()
        self.plain = head == "plain"

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        out = self.head(self.backbone.features(x))
        if self.plain:
            return out
        return heads_output(out)


def heads_output(per_head: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"logits": mean over heads, "head<k>": head k} from (B, heads, classes)."""
    return {"logits": per_head.mean(dim=1), **{f"head{k + 1}": per_head[:, k] for k in range(per_head.shape[1])}}


def head_logits(out: torch.Tensor | Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Each head's own output (one tensor for the plain head)."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [v for k, v in out.items() if k.startswith("head")]


def ssm_loss(out: Any, y: torch.Tensor, *, scheme: str = "joint", reduce: str = "sum") -> torch.Tensor:
    """Joint: cross-entropy of the averaged output. Individual: the heads' cross-entropies, summed
    (or averaged with `reduce="mean"`); Table 2's two schemes."""
    if scheme == "joint":
        return F.cross_entropy(main_logits(out), y)
    losses = torch.stack([F.cross_entropy(h, y) for h in head_logits(out)])
    return losses.sum() if reduce == "sum" else losses.mean()


# ---------------------------------------------------------------------------------------------
# ensembles


def member_seed(seed: int, member: int, epoch: int | None = None) -> int:
    """The seed of member `member` (>= 1, 0-based: 0 is the trial's own) for its init (epoch None)
    or for its batch order and augmentation in 0-based `epoch`: a hash of (seed, member, epoch)."""
    # a tag word keeps init and epoch seeds apart (SeedSequence ignores trailing zero words)
    words = [int(seed), int(member), 1] if epoch is None else [int(seed), int(member), 2, int(epoch)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def ensemble_logits(members: Sequence[torch.Tensor], combine: str = "probs") -> torch.Tensor:
    """The ensemble's output from its members' logits (each (B, classes)): `probs` gives the log of
    the mean softmax (argmax = the mean probability's), `logits` the mean of the logits."""
    stacked = torch.stack(list(members))
    if combine == "logits":
        return stacked.mean(dim=0)
    return torch.logsumexp(F.log_softmax(stacked, dim=-1), dim=0) - math.log(len(members))


class Ensemble(nn.Module):
    """N independently trained members (see the module docstring). forward(x) -> {"logits": the
    ensemble's output, "member<m>": member m's prediction}. ``epochs_trained`` (a buffer, saved with
    the weights) keys the members' per-epoch data seeds, so a resumed trial continues exactly."""

    def __init__(self, members: Sequence[nn.Module], combine: str = "probs") -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.combine = combine
        self.register_buffer("epochs_trained", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = [main_logits(m(x)) for m in self.members]
        return {"logits": ensemble_logits(outs, self.combine), **{f"member{i + 1}": o for i, o in enumerate(outs)}}


# ---------------------------------------------------------------------------------------------
# the family


def image_size(cfg: Mapping[str, Any]) -> int:
    return int(cfg["image_size"]) or (32 if cfg["cifar_stem"] else 224)


def feature_dim(cfg: Mapping[str, Any]) -> int:
    block = ARCHS[cfg["arch"]][0]
    return int(cfg["width"]) * 8 * block.expansion


def build_single(cfg: Mapping[str, Any]) -> SSMNet:
    return SSMNet(
        cfg["arch"],
        int(cfg["num_classes"]) or 1000,
        width=int(cfg["width"]),
        cifar_stem=bool(cfg["cifar_stem"]),
        head=cfg["head"],
        heads=int(cfg["heads"]),
        bn_relu=cfg["bn_relu"],
    )


def build(cfg: Mapping[str, Any]) -> nn.Module:
    """The net, or an `Ensemble` of ``ensemble`` nets: member 1 from the current RNG state (the
    trial's seed), member m > 1 from `member_seed(seed, m - 1)`."""
    _check(cfg)
    n = int(cfg["ensemble"])
    if n == 1:
        return build_single(cfg)
    members = [build_single(cfg)]
    for m in range(1, n):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(member_seed(int(cfg["seed"]), m))
            members.append(build_single(cfg))
    return Ensemble(members, cfg["ensemble_combine"])


def prepare(cfg: Mapping[str, Any], data: Images) -> TrialImages:
    return prepare_images(
        cfg, data, channels=3, size=image_size(cfg), recipe="cifar" if cfg["cifar_stem"] else "imagenet"
    )


def _loss_fn(cfg: Mapping[str, Any]):
    return partial(ssm_loss, scheme=cfg["scheme"], reduce=cfg["individual_reduce"])


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrialImages,
    cfg: Mapping[str, Any],
    generator: torch.Generator,
    device: torch.device,
) -> dict[str, float]:
    """One epoch (`train_epoch_images` with the scheme's loss); ensembles: every member on its own
    batches, one optimiser step on the sum of the members' losses. ``train_loss``/``train_acc``
    of an ensemble are the means over its members."""
    if not isinstance(model, Ensemble):
        return train_epoch_images(model, optimizer, data, cfg, generator, device, loss_fn=_loss_fn(cfg))
    return _train_ensemble_epoch(model, optimizer, data, cfg, generator, device)


def _train_ensemble_epoch(
    model: Ensemble,
    optimizer: torch.optim.Optimizer,
    data: TrialImages,
    cfg: Mapping[str, Any],
    generator: torch.Generator,
    device: torch.device,
) -> dict[str, float]:
    loss_fn, bs, n = _loss_fn(cfg), int(cfg["batch_size"]), len(model.members)
    epoch = int(model.epochs_trained)
    gens = [generator] + [torch.Generator().manual_seed(member_seed(int(cfg["seed"]), m, epoch)) for m in range(1, n)]
    if isinstance(data.data, FolderImages):  # one loader: the members share its batches (module docstring)
        batches = ((b,) * n for b in data.batches("train", bs, device, generator))
    else:
        batches = zip(*(data.batches("train", bs, device, g) for g in gens))
    total, correct, seen = 0.0, 0, 0
    for step in batches:
        losses = []
        for member, (x, y), g in zip(model.members, step, gens):
            out = member(data.finish(data.augment(x, g)))
            loss = loss_fn(out, y)
            check_finite(loss)
            losses.append(loss)
            total += float(loss.detach()) * len(y)
            correct += int((main_logits(out).detach().argmax(1) == y).sum())
            seen += len(y)
        optimizer.zero_grad(set_to_none=True)
        backward(torch.stack(losses).sum())
        optimizer.step()
    model.epochs_trained += 1
    return {"train_loss": total / max(seen, 1), "train_acc": correct / max(seen, 1)}


def evaluate(model: nn.Module, data: TrialImages, cfg: Mapping[str, Any], device: torch.device) -> dict[str, float]:
    """`evaluate_images` (test_loss = cross-entropy of the prediction) plus, for ensembles, the gain
    of the ensemble over its best member."""
    metrics = evaluate_images(model, data, cfg, device, loss_fn=cross_entropy)
    members = [v for k, v in metrics.items() if k.startswith("test_acc_member")]
    if members:
        metrics["test_acc_ensemble_gain"] = metrics["test_acc"] - max(members)
    return metrics


def _check(cfg: Mapping[str, Any]) -> None:
    def one_of(key: str, allowed: Sequence[str]) -> None:
        if cfg[key] not in allowed:
            raise ConfigError(NAME, key, f"must be one of {', '.join(allowed)} (got {cfg[key]!r})")

    one_of("arch", tuple(ARCHS))
    one_of("head", HEADS)
    one_of("bn_relu", BN_RELU)
    one_of("scheme", SCHEMES)
    one_of("individual_reduce", REDUCES)
    one_of("ensemble_combine", COMBINES)
    if not 1 <= cfg["width"] <= 4096:
        raise ConfigError(NAME, "width", f"must be in 1..4096 (got {cfg['width']})")
    _, _, groups, per_group = ARCHS[cfg["arch"]]
    if groups > 1 and cfg["width"] * per_group < 64:
        raise ConfigError(NAME, "width", f"{cfg['arch']} needs width >= {-(-64 // per_group)} (got {cfg['width']})")
    if cfg["image_size"] != 0 and not 8 <= cfg["image_size"] <= 1024:
        raise ConfigError(NAME, "image_size", f"must be 0 (auto) or in 8..1024 (got {cfg['image_size']})")
    channels = feature_dim(cfg)
    if not 1 <= cfg["heads"] <= channels:
        raise ConfigError(NAME, "heads", f"must be in 1..{channels} (the feature's channels) (got {cfg['heads']})")
    if not 1 <= cfg["ensemble"] <= MAX_ENSEMBLE:
        raise ConfigError(NAME, "ensemble", f"must be in 1..{MAX_ENSEMBLE} (got {cfg['ensemble']})")


def check(cfg: Mapping[str, Any], data: Images | None = None) -> None:
    """Family rules (one-line `ConfigError`s); with data, no last training batch of a single image
    (BatchNorm cannot normalise one example by its own statistics)."""
    check_image_config(NAME, cfg, data)
    _check(cfg)
    check_batches_for_batchnorm(NAME, cfg, data)


def inert_keys(cfg: dict[str, Any]) -> frozenset[str]:
    """Keys without effect: the SSM head's own keys with another head; the training scheme with the
    plain head (one output: both schemes are the same loss); ``individual_reduce`` with the joint
    scheme; ``ensemble_combine`` without an ensemble; the image keys' (`image_inert_keys`)."""
    inert = set(image_inert_keys(cfg))
    if cfg["head"] != "ssm":
        inert |= {"heads", "bn_relu"}
    if cfg["head"] == "plain":
        inert |= {"scheme", "individual_reduce"}
    if cfg["scheme"] == "joint":
        inert.add("individual_reduce")
    if int(cfg["ensemble"]) == 1:
        inert.add("ensemble_combine")
    return frozenset(inert)


FAMILY = Family(
    name=NAME,
    defaults=DEFAULTS,
    load_data=load_images,
    sources=IMAGE_SOURCES,
    prepare=prepare,
    build=build,
    train_epoch=train_epoch,
    evaluate=evaluate,
    check=check,
    inert_keys=inert_keys,
    # heads 1-4 and members 1-2 (the paper's) are declared by name, any others by pattern
    metrics=image_metrics(
        10,
        extra={
            **{f"test_acc_head{k}": M.ACCURACY for k in range(1, 5)},
            "test_acc_member1": M.ACCURACY,
            "test_acc_member2": M.ACCURACY,
            "test_acc_ensemble_gain": M.GAIN_FRACTION,  # ensemble minus its best member (fractions)
        },
    ),
    metric_patterns={**IMAGE_METRIC_PATTERNS, r"test_acc_head\d+": M.ACCURACY, r"test_acc_member\d+": M.ACCURACY},
    model_keys=("arch", "width", "cifar_stem", "image_size", "head", "heads", "bn_relu", "ensemble", "num_classes"),
    input_shape=lambda cfg: (3, image_size(cfg), image_size(cfg)),
    smoke={
        "width": 16,
        "image_size": 32,
        "n_train": 64,
        "n_test": 64,
        "batch_size": 16,
        "eval_batch_size": 64,
        "lr": 0.02,
        "lr_milestones": [],
    },
    variants={
        "resnet18_plain": {"arch": "resnet18", "width": 4, "cifar_stem": True, "head": "plain"},
        "resnet18_ssm": {"arch": "resnet18", "width": 4, "cifar_stem": True, "head": "ssm"},
        "resnet18_ssm_all_individual": {
            "arch": "resnet18",
            "width": 4,
            "cifar_stem": True,
            "head": "ssm",
            "bn_relu": "all",
            "scheme": "individual",
        },
        "resnet18_2fc": {"arch": "resnet18", "width": 4, "cifar_stem": True, "head": "2fc"},
        "resnet50_3fc": {"arch": "resnet50", "width": 4, "image_size": 32, "head": "3fc"},
        "resnext50_ssm": {"arch": "resnext50_32x4d", "width": 16, "image_size": 32, "head": "ssm", "heads": 3},
        "resnet101_ssm": {"arch": "resnet101", "width": 4, "cifar_stem": True, "image_size": 16, "head": "ssm"},
        "resnext101_plain": {"arch": "resnext101_32x8d", "width": 8, "image_size": 16, "head": "plain"},
        "ensemble2_ssm": {"arch": "resnet18", "width": 4, "cifar_stem": True, "head": "ssm", "ensemble": 2},
    },
    doc="Split-and-Share Module (Lee et al., arXiv 2108.04500): SSM / 2FC / 3FC heads on ResNet/ResNeXt, "
    "joint vs individual training, ensembles",
)
