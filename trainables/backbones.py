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

from study.errors import UserError

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
            raise UserError(f"arch: unknown backbone {arch!r}; known: {', '.join(ARCHS)}")
        block, layers, groups, width_per_group = ARCHS[arch]
        if groups > 1 and int(width * width_per_group / 64) < 1:
            raise UserError(f"width: {arch} needs width >= {64 // width_per_group} (got {width})")
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
