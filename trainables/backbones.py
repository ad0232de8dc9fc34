"""Backbones shared by the image families (SSM, WSMS-Net, EncapNet's ResNet-18 baseline).

`ResNet` is torchvision's ResNet (its blocks, ``_make_layer`` and initialisation), with two
options the studies need and torchvision lacks:

- ``width``: channels of the first group (torchvision: 64; the groups have width x 1, 2, 4, 8),
  so that CPU tests and offline studies can run the same architecture at a fraction of the size.
  At 64 the model is torchvision's own: same modules, same parameter count, same state_dict keys.
- ``cifar_stem``: the stem for 32x32 inputs (3x3 conv, stride 1, no max-pool; He et al. 2016's
  CIFAR setting) instead of ImageNet's 7x7 stride-2 conv + max-pool.

Random init always (the papers train from scratch). `ARCHS` lists the torchvision names.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.resnet import ResNet as TorchvisionResNet

# name: (block, blocks per group, groups, width per group) as in torchvision.models
ARCHS: dict[str, tuple[type[nn.Module], list[int], int, int]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], 1, 64),
    "resnet34": (BasicBlock, [3, 4, 6, 3], 1, 64),
    "resnet50": (Bottleneck, [3, 4, 6, 3], 1, 64),
    "resnet101": (Bottleneck, [3, 4, 23, 3], 1, 64),
    "resnet152": (Bottleneck, [3, 8, 36, 3], 1, 64),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], 32, 4),
    "resnext101_32x8d": (Bottleneck, [3, 4, 23, 3], 32, 8),
}


class ResNet(TorchvisionResNet):
    """torchvision's ResNet/ResNeXt at any first-group `width`, with an optional CIFAR stem.

    ``features(x)`` -> pooled features (B, feature_dim); ``forward(x)`` -> fc(features) (B, classes).
    Groups are ``layer1..layer4`` as in torchvision; ``stem(x)`` runs conv1, bn1, relu, maxpool.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        num_classes: int = 1000,
        *,
        width: int = 64,
        cifar_stem: bool = False,
        in_channels: int = 3,
    ) -> None:
        if arch not in ARCHS:
            raise ValueError(f"arch: unknown backbone {arch!r}; known: {', '.join(ARCHS)}")
        block, layers, groups, width_per_group = ARCHS[arch]
        if groups > 1 and int(width * width_per_group / 64) < 1:
            raise ValueError(f"width: {arch} needs width >= {64 // width_per_group} (got {width})")
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation = width, 1
        self.groups, self.base_width = groups, width_per_group
        if cifar_stem:  # 32x32 inputs: 3x3 stride-1 conv, no max-pool
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = width * 8 * block.expansion
        self.fc = nn.Linear(self.feature_dim, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @property
    def group_channels(self) -> list[int]:
        """Output channels of layer1..layer4."""
        expansion = self.feature_dim // (self.conv1.out_channels * 8)
        return [self.conv1.out_channels * m * expansion for m in (1, 2, 4, 8)]

    def stem(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, width, H/4, W/4) (H with cifar_stem)
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, feature_dim)
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, classes)
        return self.fc(self.features(x))


# ----------------------------------------------------------------------------- CIFAR backbones
#
# The CIFAR nets of WSMS-Net's slides (PAPERS.md section 4): ResNet (He et al. 2016, "Deep
# residual learning", section 4.2: 6n+2 layers, groups of 16, 32, 64 channels at 32, 16, 8 px),
# PreAct-ResNet (He et al. 2016, "Identity mappings", pre-activation units) and DenseNet /
# DenseNet-BC (Huang et al. 2017, section 3 and 4.1). Each exposes the same pieces, so a family
# can run any prefix of the net (WSMS-Net's stages):
#
# - ``stem`` (module) and ``groups`` (ModuleList): the input layer and the groups of blocks in
#   order; ``group_channels`` and ``group_strides`` for each group;
# - ``head_norm``: the BN-ReLU that pre-activation nets apply after the last group (Identity for
#   the post-activation ResNet), then global average pooling and ``fc``;
# - ``features(x)`` -> (B, feature_dim), ``forward(x)`` -> (B, classes); ``sides(side)``: the
#   feature-map side after the stem and after each group for a square input of that side.
# Initialisation: He normal (fan_out) convs, BN weight 1 / bias 0, as torchvision's ResNet.


def _stride2(n: int) -> int:
    """Side after a stride-2 3x3 conv with padding 1 (or a 1x1 stride-2 conv / [::2] slice)."""
    return (n + 1) // 2


def _init_convs(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class _GroupedNet(nn.Module):
    """The forward shared by the CIFAR nets: stem, ``groups`` in turn, ``head_norm``, global average
    pooling, ``fc``."""

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, feature_dim)
        x = self.stem(x)
        for group in self.groups:
            x = group(x)
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.head_norm(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, classes)
        return self.fc(self.features(x))


class _PadShortcut(nn.Module):
    """He et al. 2016's CIFAR option A: identity with stride-2 subsampling and zero channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = out_ch - in_ch, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C + extra, H/s, W/s)
        if self.stride > 1:
            x = x[..., :: self.stride, :: self.stride]
        if self.extra:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x


class CifarBasicBlock(nn.Module):
    """Two 3x3 convs. Post-activation (He et al. 2016a, Fig. 2): conv-BN-ReLU-conv-BN, + shortcut,
    ReLU. Pre-activation (He et al. 2016b, Fig. 4e): BN-ReLU-conv-BN-ReLU-conv, + shortcut."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int, *, preact: bool) -> None:
        super().__init__()
        out_ch, self.preact = planes, preact
        self.bn1 = nn.BatchNorm2d(in_ch if preact else planes)
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _PadShortcut(in_ch, out_ch, stride) if (stride > 1 or in_ch != out_ch) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            out = self.conv1(self.relu(self.bn1(x)))
            return self.conv2(self.relu(self.bn2(out))) + self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarBottleneck(nn.Module):
    """1x1 (planes) - 3x3 (planes, stride) - 1x1 (4 x planes), as He et al. 2016b's ResNet-164/1001;
    post- or pre-activation like `CifarBasicBlock`; a 1x1 conv projection where the shape changes
    (option B; in the post-activation unit followed by BN, as torchvision's)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, *, preact: bool) -> None:
        super().__init__()
        out_ch, self.preact = planes * 4, preact
        self.bn1 = nn.BatchNorm2d(in_ch if preact else planes)
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes if preact else out_ch)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride > 1 or in_ch != out_ch:
            proj = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
            self.shortcut = proj if preact else nn.Sequential(proj, nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            out = self.conv1(self.relu(self.bn1(x)))
            out = self.conv2(self.relu(self.bn2(out)))
            return self.conv3(self.relu(self.bn3(out))) + self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class CifarResNet(_GroupedNet):
    """CIFAR ResNet (post-activation, He et al. 2016a section 4.2) or PreAct-ResNet (``preact``,
    He et al. 2016b): a 3x3 stem conv (``width`` channels), three groups of n blocks at width,
    2 width, 4 width channels (x4 with bottlenecks), the 2nd and 3rd starting with stride 2.
    Depth 6n+2 with basic blocks (ResNet-20/56/110), 9n+2 with bottlenecks (ResNet-164/1001).
    ``width`` 16 is the papers'. Shortcuts: option A (zero-padding) for basic blocks, 1x1
    projections for bottlenecks."""

    def __init__(
        self,
        depth: int = 110,
        num_classes: int = 10,
        *,
        width: int = 16,
        preact: bool = False,
        bottleneck: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        per = 9 if bottleneck else 6
        if depth < per + 2 or (depth - 2) % per:
            kind = "bottleneck 9n+2 (11, 164, 1001)" if bottleneck else "basic 6n+2 (8, 20, 56, 110)"
            raise ValueError(f"depth: a CIFAR ResNet with {kind} blocks needs depth {kind.split()[1]}, got {depth}")
        if width < 1:
            raise ValueError(f"width: must be >= 1, got {width}")
        n, block = (depth - 2) // per, CifarBottleneck if bottleneck else CifarBasicBlock
        self.depth, self.preact = depth, preact
        conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        # post-activation: conv-BN-ReLU; pre-activation: the conv alone (each unit starts with BN-ReLU)
        self.stem = nn.Sequential(conv) if preact else nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        groups, in_ch = [], width
        self.group_channels, self.group_strides = [], [1, 2, 2]
        for g, stride in enumerate(self.group_strides):
            planes = width * 2**g
            blocks = []
            for i in range(n):
                blocks.append(block(in_ch, planes, stride if i == 0 else 1, preact=preact))
                in_ch = planes * block.expansion
            groups.append(nn.Sequential(*blocks))
            self.group_channels.append(in_ch)
        self.groups = nn.ModuleList(groups)
        self.head_norm = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True)) if preact else nn.Identity()
        self.feature_dim = in_ch
        self.fc = nn.Linear(in_ch, num_classes)
        _init_convs(self)

    def sides(self, side: int) -> list[int]:
        """Feature-map side after the stem and after each group, for a side x side input."""
        out = [side]
        for stride in self.group_strides:
            out.append(_stride2(out[-1]) if stride == 2 else out[-1])
        return out


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3(k), or with ``bottleneck`` BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k) (Huang
    et al. 2017, "DenseNet-B"); its output is concatenated to its input."""

    def __init__(self, in_ch: int, growth: int, bottleneck: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_ch
        if bottleneck:
            layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True), nn.Conv2d(ch, 4 * growth, 1, bias=False)]
            ch = 4 * growth
        layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True), nn.Conv2d(ch, growth, 3, padding=1, bias=False)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C + k, H, W)
        return torch.cat([x, self.body(x)], dim=1)


class CifarDenseNet(_GroupedNet):
    """DenseNet for 32x32 inputs (Huang et al. 2017, section 4.1): a 3x3 stem conv (16 channels,
    or 2k for DenseNet-BC), three dense blocks, transitions BN-ReLU-Conv1x1-AvgPool2 between them
    (channels x ``compression``), then BN-ReLU, global pooling and the classifier.
    ``bottleneck`` and compression 0.5 make DenseNet-BC (depth 6n+4: n bottleneck layers per block,
    BC-100: n = 16); plain DenseNet has depth 3n+4 (DenseNet-100: n = 32). ``growth`` = k.

    Groups (for WSMS-Net stages): dense block 1; transition 1 + dense block 2; transition 2 + dense
    block 3, so a prefix of the groups ends after a dense block, before the next transition."""

    def __init__(
        self,
        depth: int = 100,
        num_classes: int = 10,
        *,
        growth: int = 12,
        bottleneck: bool = True,
        compression: float = 0.5,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        per = 6 if bottleneck else 3
        if depth < per + 4 or (depth - 4) % per:
            rule = "6n+4 (10, 100, 250) for DenseNet-BC" if bottleneck else "3n+4 (7, 40, 100) for DenseNet"
            raise ValueError(f"depth: must be {rule}, got {depth}")
        if growth < 1:
            raise ValueError(f"width: DenseNet's growth rate k must be >= 1, got {growth}")
        n = (depth - 4) // per
        self.depth, self.growth = depth, growth
        ch = 2 * growth if bottleneck else 16
        self.stem = nn.Sequential(nn.Conv2d(in_channels, ch, 3, padding=1, bias=False))
        groups = []
        self.group_channels, self.group_strides = [], [1, 2, 2]
        for g in range(3):
            layers: list[nn.Module] = []
            if g > 0:  # transition: BN-ReLU-Conv1x1-AvgPool2
                out = int(ch * compression)
                layers += [
                    nn.BatchNorm2d(ch),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(ch, out, 1, bias=False),
                    nn.AvgPool2d(2),
                ]
                ch = out
            for _ in range(n):
                layers.append(_DenseLayer(ch, growth, bottleneck))
                ch += growth
            groups.append(nn.Sequential(*layers))
            self.group_channels.append(ch)
        self.groups = nn.ModuleList(groups)
        self.head_norm = nn.Sequential(nn.BatchNorm2d(ch), nn.ReLU(inplace=True))
        self.feature_dim = ch
        self.fc = nn.Linear(ch, num_classes)
        _init_convs(self)
        nn.init.constant_(self.fc.bias, 0)

    def sides(self, side: int) -> list[int]:
        """Feature-map side after the stem and after each group (average pooling floors)."""
        out = [side]
        for stride in self.group_strides:
            out.append(out[-1] // 2 if stride == 2 else out[-1])
        return out
