"""WSMS-Net: weight-shared multi-stage networks (Takahashi, Matsubara & Uehara, ACML 2017; seed 003).

Structure (PAPERS.md section 4, pinned down by the paper's parameter counts). A backbone is a
stem and G groups of blocks (torchvision ResNet: conv1-bn1-relu-maxpool and layer1..layer4;
CIFAR nets: a 3x3 conv and three groups). With S stages:

- stage s (1..S) sees the input downscaled by 2^(s-1) (``downscale``: a parameter-free method)
  and runs the stem and the first G-s+1 groups, so that every stage ends at the final spatial
  size (ResNet-50 at 224 px: 2048, 1024, 512, 256 channels, all at 7 x 7);
- **WSMS-Net** (``ms: false``): every stage runs the SAME modules with the same weights;
  **MS-Net** (``ms: true``): each stage has its own copy (own initialisation, no sharing);
- the stage outputs are concatenated on channels, then the integration layer (``integration``):
  ``none`` (concatenation only), ``conv1x1`` or ``conv3x3`` (concat -> ``integration_width``,
  no bias, then ReLU), then global average pooling and the classifier;
- ``stages: 1`` is the plain backbone (the baseline): its own pooling and classifier, exactly
  the backbone's parameters (``ms``, ``per_stage_bn`` and ``integration`` do not apply).

Parameter counts (1000 classes, 1x1 integration to 1024): ResNet-50 3 stages 28,203,048, 4 stages
28,465,192; ResNet-101 47,195,176 / 47,457,320; ResNet-152 62,838,824 / 63,100,968 (the paper's
28.3/28.5, 47.3/47.6, 63.0/63.3M are 0.04-0.20M higher: PAPERS.md's readings B and C match them).

``per_stage_bn`` is PAPERS.md's reading C: the convolutions are shared, but each stage has its
own BatchNorm (affine parameters and running statistics) in every layer it runs, and the
concatenation goes through BN-ReLU before the integration layer. Pre-activation backbones
(PreAct-ResNet, DenseNet) end with BN-ReLU before pooling; with several stages that BN-ReLU is
applied to the whole concatenation (one BN over all its channels; with one stage it is exactly
the backbone's), with or without ``per_stage_bn``.

Choices where the paper is silent (also in the README): the downscaling default
``bilinear-antialias`` (the resize the scaled test sets use); ReLU after the integration conv;
``integration_width`` 0 = half the backbone's feature width on the torchvision ResNets (1024 on
ResNet-50/101/152, the paper's) and the backbone's feature width on the CIFAR nets; MS-Net stages
initialised independently; CIFAR nets by analogy (at most 3 stages: stage 2 stops after group 2,
stage 3 after group 1; DenseNet's stage 2 stops after dense block 2, before transition 2).

Metrics: the image layer's (``test_acc``, ``test_acc_top5`` with more than 10 classes,
``test_acc_scale_<f>`` for each ``scale_eval`` factor: the paper's scale-robustness claim) plus
``test_err_pct`` and ``test_err_top5_pct``: the same as errors in percent, the paper's unit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.backbones import ARCHS, CifarDenseNet, CifarResNet, ResNet
from trainables.common import ConfigError, Family
from trainables.images import (
    IMAGE_DEFAULTS,
    IMAGE_METRIC_PATTERNS,
    IMAGE_SOURCES,
    TrialImages,
    check_batches_for_batchnorm,
    check_image_config,
    evaluate_images,
    image_inert_keys,
    image_metrics,
    load_images,
    prepare_images,
    train_epoch_images,
)

NAME = "wsms"
TORCHVISION_BACKBONES = tuple(ARCHS)  # resnet18 ... resnet152, resnext: torchvision's, via backbones.ResNet
CIFAR_BACKBONES = ("cifar_resnet", "cifar_preact_resnet", "cifar_densenet_bc", "cifar_densenet")
BACKBONES = TORCHVISION_BACKBONES + CIFAR_BACKBONES
INTEGRATIONS = ("none", "conv1x1", "conv3x3")
DOWNSCALES = ("bilinear-antialias", "bilinear", "avgpool", "nearest")
# depth 0 = the papers' net: ResNet-110 (He 2016a), PreAct-ResNet-110 (basic) / ResNet-164 (bottleneck),
# DenseNet-BC-100 (k=12), DenseNet-100 (k=12 by default; the slides' 3.74% is k=24: set width 24)
STANDARD_DEPTH = {"cifar_resnet": 110, "cifar_preact_resnet": 110, "cifar_densenet_bc": 100, "cifar_densenet": 100}
STANDARD_WIDTH = {"cifar_resnet": 16, "cifar_preact_resnet": 16, "cifar_densenet_bc": 12, "cifar_densenet": 12}

DEFAULTS: dict[str, Any] = {
    **IMAGE_DEFAULTS,
    "backbone": "cifar_resnet",  # resnet18/34/50/101/152, resnext* (torchvision) | cifar_resnet | cifar_preact_resnet | cifar_densenet_bc | cifar_densenet
    "depth": 0,  # CIFAR nets' layers: ResNets 6n+2 (basic) or 9n+2 (bottleneck), DenseNet-BC 6n+4, DenseNet 3n+4; 0 = the standard (110, 110/164, 100, 100); torchvision: 0 (the name fixes it)
    "block": "basic",  # CIFAR ResNets: basic (two 3x3) | bottleneck (1x1-3x3-1x1, x4 channels: ResNet-164/1001)
    "width": 0,  # channels of the first group (torchvision 64, CIFAR ResNets 16) or DenseNet's growth rate k (12); 0 = standard
    "cifar_stem": False,  # torchvision ResNets: 3x3 stride-1 stem, no max-pool (for 32 px inputs)
    "image_size": 0,  # input side in px; 0 = 224 for torchvision ResNets with the ImageNet stem, else 32
    "stages": 2,  # S: stage s sees the input downscaled by 2^(s-1); 1 = the plain backbone
    "ms": False,  # MS-Net: each stage its own copy of the layers (no weight sharing)
    "per_stage_bn": False,  # shared convs, each stage its own BatchNorm; BN-ReLU on the concatenation (reading C)
    "integration": "conv1x1",  # none (concatenation only) | conv1x1 | conv3x3: concat -> integration_width, ReLU
    "integration_width": 0,  # output channels of the integration conv; 0 = 1024 on ResNet-50 (half its 2048), CIFAR nets: their feature width
    "downscale": "bilinear-antialias",  # how stage s shrinks the input: bilinear-antialias | bilinear | avgpool | nearest
}


# ----------------------------------------------------------------------------- blocks


@dataclass
class Trunk:
    """A backbone cut into pieces: ``stem``, ``groups`` (in order), ``head_norm`` (BN-ReLU before
    pooling in pre-activation nets, else Identity), ``fc``; channels and side arithmetic."""

    stem: nn.Module
    groups: list[nn.Module]
    head_norm: nn.Module
    fc: nn.Linear
    group_channels: list[int]
    torchvision: bool


def make_trunk(cfg: dict[str, Any], num_classes: int) -> Trunk:
    """A freshly initialised backbone of `cfg`, in pieces."""
    name, width, depth = cfg["backbone"], int(cfg["width"]), int(cfg["depth"])
    if name in TORCHVISION_BACKBONES:
        bb = ResNet(name, num_classes, width=width or 64, cifar_stem=bool(cfg["cifar_stem"]))
        stem = nn.Sequential(bb.conv1, bb.bn1, bb.relu, bb.maxpool)
        groups = [bb.layer1, bb.layer2, bb.layer3, bb.layer4]
        return Trunk(stem, groups, nn.Identity(), bb.fc, bb.group_channels, True)
    depth = depth or (164 if cfg["block"] == "bottleneck" else STANDARD_DEPTH[name])
    if name in ("cifar_resnet", "cifar_preact_resnet"):
        bb = CifarResNet(
            depth, num_classes, width=width or 16, preact=name == "cifar_preact_resnet",
            bottleneck=cfg["block"] == "bottleneck",
        )  # fmt: skip
    else:
        bc = name == "cifar_densenet_bc"
        bb = CifarDenseNet(depth, num_classes, growth=width or 12, bottleneck=bc, compression=0.5 if bc else 1.0)
    return Trunk(bb.stem, list(bb.groups), bb.head_norm, bb.fc, list(bb.group_channels), False)


class StageBatchNorm(nn.Module):
    """One BatchNorm per stage in place of a shared one (``per_stage_bn``): the stage that runs
    now (``stage``, set by `WSMSNet` before each stage) uses its own affine and statistics."""

    def __init__(self, bn: nn.BatchNorm2d, copies: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList([bn, *(copy.deepcopy(bn) for _ in range(copies - 1))])
        self.stage = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norms[self.stage](x)


def _split_batchnorms(module: nn.Module, copies: int) -> list[StageBatchNorm]:
    """Replace every BatchNorm2d inside `module` by a `StageBatchNorm` with `copies` norms."""
    replaced = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                stage_bn = StageBatchNorm(child, copies)
                setattr(parent, name, stage_bn)
                replaced.append(stage_bn)
    return replaced


def downscale(x: torch.Tensor, factor: int, method: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H // factor, W // factor), parameter-free (the stage inputs)."""
    if factor == 1:
        return x
    h, w = x.shape[-2] // factor, x.shape[-1] // factor
    if method == "avgpool":
        return F.avg_pool2d(x, factor)
    if method == "nearest":
        return x[..., factor // 2 :: factor, factor // 2 :: factor][..., :h, :w]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=method == "bilinear-antialias")


# ----------------------------------------------------------------------------- model


class WSMSNet(nn.Module):
    """WSMS-Net / MS-Net / the plain backbone (module docstring). forward: (B, 3, H, W) -> (B, classes)."""

    def __init__(self, cfg: dict[str, Any], num_classes: int) -> None:
        super().__init__()
        self.stages, self.ms = int(cfg["stages"]), bool(cfg["ms"]) and int(cfg["stages"]) > 1
        self.method = cfg["downscale"]
        first = make_trunk(cfg, num_classes)
        n_groups = len(first.groups)
        if self.stages > n_groups:
            raise ConfigError(
                NAME, "stages", f"{cfg['backbone']} has {n_groups} groups: stage {n_groups + 1} would run the stem and no group"
            )
        self.depths = [n_groups - s for s in range(self.stages)]  # groups run by stage s+1
        trunks = [first] + [make_trunk(cfg, num_classes) for _ in range(self.stages - 1)] if self.ms else [first]
        # each trunk: stem + the groups its stages run (MS-Net stage s keeps only its first G-s+1 groups)
        self.trunks = nn.ModuleList(
            nn.ModuleList([t.stem, *t.groups[: self.depths[i if self.ms else 0]]]) for i, t in enumerate(trunks)
        )
        self._stage_norms: list[StageBatchNorm] = []
        shared_bn = bool(cfg["per_stage_bn"]) and not self.ms and self.stages > 1
        if shared_bn:  # a part run by k stages gets k norms: the stem S, group g min(S, G-g+1)
            for g, part in enumerate(self.trunks[0]):  # part g (0 = stem) is run by the stages with depth >= g
                self._stage_norms += _split_batchnorms(part, sum(1 for d in self.depths if d >= g))
        channels = [first.group_channels[d - 1] if d > 0 else _stem_channels(first) for d in self.depths]
        self.concat_channels = sum(channels)
        pre_activation = not isinstance(first.head_norm, nn.Identity)
        if self.stages == 1:  # the plain backbone
            self.concat_norm, self.integration, self.fc = first.head_norm, nn.Identity(), first.fc
            return
        if pre_activation or cfg["per_stage_bn"]:  # BN-ReLU on the concatenation
            self.concat_norm = nn.Sequential(nn.BatchNorm2d(self.concat_channels), nn.ReLU(inplace=True))
        else:
            self.concat_norm = nn.Identity()
        kind, width = cfg["integration"], integration_width(cfg, first)
        if kind == "none":
            self.integration, out = nn.Identity(), self.concat_channels
        else:
            k = 1 if kind == "conv1x1" else 3
            conv = nn.Conv2d(self.concat_channels, width, k, padding=k // 2, bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            self.integration, out = nn.Sequential(conv, nn.ReLU(inplace=True)), width
        self.fc = nn.Linear(out, num_classes)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's output (B, C_s, h, w), all at the same h x w."""
        outs = []
        for s in range(self.stages):
            for norm in self._stage_norms:
                norm.stage = s
            parts = self.trunks[s if self.ms else 0]
            h = downscale(x, 2**s, self.method)  # (B, 3, H/2^s, W/2^s)
            for part in list(parts)[: 1 + self.depths[s]]:
                h = part(h)
            outs.append(h)
        for norm in self._stage_norms:
            norm.stage = 0
        if len({o.shape[-2:] for o in outs}) > 1:
            sizes = ", ".join(f"stage {i + 1}: {tuple(o.shape[-2:])}" for i, o in enumerate(outs))
            raise ValueError(f"stages end at different sizes ({sizes}) for a {tuple(x.shape[-2:])} input")
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, classes)
        z = torch.cat(self.stage_features(x), dim=1)  # (B, sum C_s, h, w)
        z = self.integration(self.concat_norm(z))  # (B, C', h, w)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(z, 1), 1))


def _stem_channels(trunk: Trunk) -> int:
    conv = next(m for m in trunk.stem.modules() if isinstance(m, nn.Conv2d))
    return conv.out_channels


def integration_width(cfg: dict[str, Any], trunk: Trunk) -> int:
    """``integration_width``, or its default (0): half the feature width on torchvision ResNets, else the feature width."""
    if cfg["integration_width"]:
        return int(cfg["integration_width"])
    final = trunk.group_channels[-1]
    return final // 2 if trunk.torchvision else final


def build(cfg: dict[str, Any]) -> nn.Module:
    # 0 (the data's) is filled by run_trial; outside it: ImageNet's 1000 for the torchvision nets, else 10
    num_classes = int(cfg["num_classes"]) or (1000 if cfg["backbone"] in TORCHVISION_BACKBONES else 10)
    return WSMSNet(cfg, num_classes)


# ----------------------------------------------------------------------------- data, training, checks


def input_size(cfg: dict[str, Any]) -> int:
    if cfg["image_size"]:
        return int(cfg["image_size"])
    return 224 if cfg["backbone"] in TORCHVISION_BACKBONES and not cfg["cifar_stem"] else 32


def prepare(cfg: dict[str, Any], data: Any) -> TrialImages:
    source = data.source
    recipe = "imagenet" if source.startswith("imagenet") else "cifar" if source.startswith("cifar") else "none"
    return prepare_images(cfg, data, channels=3, size=input_size(cfg), recipe=recipe)


def train_epoch(model, optimizer, data, cfg, generator, device) -> dict[str, float]:
    return train_epoch_images(model, optimizer, data, cfg, generator, device)


def evaluate(model, data, cfg, device) -> dict[str, float]:
    return evaluate_images(model, data, cfg, device)  # test_err_pct and test_err_top5_pct included


def trunk_sides(cfg: dict[str, Any], side: int) -> list[int]:
    """Feature-map side after the stem and after each group of `cfg`'s backbone for a side x side
    input, by the layers' arithmetic (a stride-2 conv with padding rounds up, average pooling down)."""
    up = lambda n: (n + 1) // 2  # noqa: E731
    if cfg["backbone"] in TORCHVISION_BACKBONES:  # 7x7/2 conv + 3x3/2 max-pool, or the CIFAR stem
        out = [side if cfg["cifar_stem"] else up(up(side))]
        for stride in (1, 2, 2, 2):
            out.append(up(out[-1]) if stride == 2 else out[-1])
        return out
    down = (lambda n: n // 2) if cfg["backbone"].startswith("cifar_densenet") else up  # transitions: AvgPool2d(2)
    return [side, side, down(side), down(down(side))]


def stage_sides(cfg: dict[str, Any]) -> list[int]:
    """The side each stage ends at (all must be equal), without building the model; 0 = impossible."""
    side = input_size(cfg)
    n_groups = len(trunk_sides(cfg, side)) - 1
    out = []
    for s in range(int(cfg["stages"])):
        small = side // 2**s
        out.append(trunk_sides(cfg, small)[n_groups - s] if small >= 1 and n_groups - s >= 0 else 0)
    return out


def check(cfg: dict[str, Any], data: Any = None) -> None:
    """The family's rules, one line each (`ConfigError` naming the key)."""
    check_image_config(NAME, cfg, data)
    name = cfg["backbone"]
    if name not in BACKBONES:
        raise ConfigError(NAME, "backbone", f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    for key, allowed in (("integration", INTEGRATIONS), ("downscale", DOWNSCALES), ("block", ("basic", "bottleneck"))):
        if cfg[key] not in allowed:
            raise ConfigError(NAME, key, f"must be one of {', '.join(allowed)} (got {cfg[key]!r})")
    for key in ("depth", "width", "image_size", "integration_width"):
        if cfg[key] < 0:
            raise ConfigError(NAME, key, f"must be >= 0 (0 = the default), got {cfg[key]}")
    if cfg["stages"] < 1:
        raise ConfigError(NAME, "stages", f"must be >= 1 (1 = the plain backbone), got {cfg['stages']}")
    torchvision = name in TORCHVISION_BACKBONES
    if torchvision and cfg["depth"]:
        raise ConfigError(NAME, "depth", f"{name}'s depth is fixed by its name; use depth 0 (got {cfg['depth']})")
    if cfg["block"] != "basic" and name not in ("cifar_resnet", "cifar_preact_resnet"):
        raise ConfigError(NAME, "block", f"only the CIFAR ResNets have a bottleneck option (backbone {name})")
    if cfg["cifar_stem"] and not torchvision:
        raise ConfigError(NAME, "cifar_stem", f"only for the torchvision ResNets ({name} always has a 3x3 stem)")
    if not torchvision and cfg["depth"]:
        per, extra, rule = {
            "cifar_resnet": (9, 2, "9n+2") if cfg["block"] == "bottleneck" else (6, 2, "6n+2"),
            "cifar_preact_resnet": (9, 2, "9n+2") if cfg["block"] == "bottleneck" else (6, 2, "6n+2"),
            "cifar_densenet_bc": (6, 4, "6n+4"),
            "cifar_densenet": (3, 4, "3n+4"),
        }[name]
        d = cfg["depth"]
        if d < per + extra or (d - extra) % per:
            raise ConfigError(NAME, "depth", f"{name} with {cfg['block']} blocks needs depth {rule}, n >= 1 (got {d})")
    if torchvision:
        _, _, groups, per_group = ARCHS[name]
        if groups > 1 and cfg["width"] and cfg["width"] * per_group < 64:
            raise ConfigError(NAME, "width", f"{name} needs width >= {64 // per_group} (got {cfg['width']})")
    side, n_groups = input_size(cfg), 4 if torchvision else 3
    if side < 4:
        raise ConfigError(NAME, "image_size", f"must be >= 4 px (got {side})")
    ends = stage_sides(cfg)
    for s, end in enumerate(ends[1:], start=2):
        if end != ends[0]:
            ok = next(i for i, e in enumerate(ends) if e != ends[0])
            why = (
                f"stage {s} would have no group left to run" if s > n_groups + 1
                else f"stage {s} ({side // 2 ** (s - 1)} px input, stem + {n_groups - s + 1} groups) would end at "
                f"{end}x{end}, not {ends[0]}x{ends[0]}"
            )  # fmt: skip
            raise ConfigError(NAME, "stages", f"{name} at {side} px allows at most {ok} stages: {why}")
    if cfg["stages"] > n_groups:  # at any size: with a 1x1 final map a stem-only stage would pass the size check
        raise ConfigError(NAME, "stages", f"{name} has {n_groups} groups: at most {n_groups} stages (stage "
                          f"{n_groups + 1} would run the stem and no group; got {cfg['stages']})")  # fmt: skip
    check_batches_for_batchnorm(NAME, cfg, data)


def inert_keys(cfg: dict[str, Any]) -> frozenset[str]:
    """Keys without effect: with ``stages: 1`` (the plain backbone) every multi-scale key; without
    an integration conv its width; the image keys' (`image_inert_keys`)."""
    inert = set(image_inert_keys(cfg))
    if int(cfg["stages"]) == 1:
        inert |= {"ms", "per_stage_bn", "integration", "integration_width", "downscale"}
    elif cfg["integration"] == "none":
        inert.add("integration_width")
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
    metrics=image_metrics(10),
    metric_patterns=IMAGE_METRIC_PATTERNS,  # scaled test sets (scale_eval), top-5 with more than 10 classes
    model_keys=(
        "backbone", "depth", "block", "width", "cifar_stem", "image_size", "stages", "ms", "per_stage_bn",
        "integration", "integration_width", "num_classes",
    ),  # fmt: skip
    input_shape=lambda cfg: (3, input_size(cfg), input_size(cfg)),
    smoke={"n_train": 64, "n_test": 64, "batch_size": 32, "width": 4},
    variants={
        "plain_resnet8": {"backbone": "cifar_resnet", "depth": 8, "width": 4, "stages": 1, "batch_size": 16},
        "wsms_resnet8_2_conv1x1": {"backbone": "cifar_resnet", "depth": 8, "width": 4, "stages": 2, "batch_size": 16},
        "wsms_resnet8_3_none_avgpool": {
            "backbone": "cifar_resnet", "depth": 8, "width": 4, "stages": 3, "integration": "none",
            "downscale": "avgpool", "batch_size": 16,
        },
        "ms_resnet8_3_conv3x3": {
            "backbone": "cifar_resnet", "depth": 8, "width": 4, "stages": 3, "ms": True, "integration": "conv3x3",
            "integration_width": 8, "batch_size": 16,
        },
        "wsms_resnet8_3_per_stage_bn": {
            "backbone": "cifar_resnet", "depth": 8, "width": 4, "stages": 3, "per_stage_bn": True,
            "downscale": "nearest", "batch_size": 16,
        },
        "wsms_preact_bottleneck11_3": {
            "backbone": "cifar_preact_resnet", "depth": 11, "block": "bottleneck", "width": 4, "stages": 3,
            "batch_size": 16,
        },
        "ms_densenet_bc10_2_per_stage_bn": {
            "backbone": "cifar_densenet_bc", "depth": 10, "width": 4, "stages": 2, "ms": True, "per_stage_bn": True,
            "downscale": "bilinear", "batch_size": 16,
        },
        "wsms_densenet7_2": {"backbone": "cifar_densenet", "depth": 7, "width": 4, "stages": 2, "batch_size": 16},
        "wsms_resnet50_4_per_stage_bn": {
            "backbone": "resnet50", "width": 4, "image_size": 16, "stages": 4, "per_stage_bn": True, "batch_size": 16,
        },
        "wsms_resnet18_cifar_stem_3": {
            "backbone": "resnet18", "width": 4, "cifar_stem": True, "stages": 3, "batch_size": 16,
        },
    },
)
