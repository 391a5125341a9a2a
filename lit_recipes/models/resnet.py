"""ResNet-18/34/50 (He et al., 2015), the ImageNet design with an optional small-image stem.

Stems:

* ``small_input=True`` — **the default**: a 3x3 stride-1 convolution and no max pool, so the four
  stages run at full, 1/2, 1/4 and 1/8 resolution (a 32x32 image ends as a 4x4 map). This is the
  "ResNet-18 for CIFAR" of most re-implementations (11.17 M parameters for 10 classes). It is the
  default because this framework mostly trains on small images (CIFAR, 8x8 digits).
* ``small_input=False``: the paper's 7x7 stride-2 convolution and 3x3 stride-2 max pool (overall
  stride 32), for ImageNet-sized inputs.

Downsampling shortcuts are 1x1 stride-2 convolutions with batch norm (option B of the paper); the
bottleneck puts the stride on its 3x3 convolution (the "ResNet v1.5" of torchvision). Every
convolution and pool is padded, so every input size from 1x1 up works with either stem.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_recipes.models.base import ClassifierNet, init_conv_bn
from lit_recipes.models.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1-conv projection) shortcut."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand (x4), with an identity or projection shortcut."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


def _projection(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))


# Block type and number of blocks in each of the four stages (widths 64, 128, 256, 512).
cfgs: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class ResNet(ClassifierNet):
    """ResNet with a choice of stem (see the module docstring).

    Args:
        arch: Key into ``cfgs`` ("resnet18", "resnet34", "resnet50").
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        small_input: 3x3 stride-1 stem without max pool (default) instead of the ImageNet stem.
        zero_init_residual: Start each residual branch's last batch-norm scale at zero, so that every
            block begins as the identity (Goyal et al., 2017).
        drop_rate: Dropout before the linear classifier.

    Example:
        >>> ResNet("resnet18", num_classes=10, in_channels=1)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    min_input_size = 1

    def __init__(
        self,
        arch: str = "resnet18",
        num_classes: int = 10,
        in_channels: int = 3,
        small_input: bool = True,
        zero_init_residual: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        block, depths = cfgs[arch]
        self.arch = arch
        self.num_classes = num_classes
        if small_input:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 3, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        stages: list[nn.Module] = []
        c_in = 64
        for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks: list[nn.Module] = []
            for j in range(depth):
                blocks.append(block(c_in, width, stride=2 if i > 0 and j == 0 else 1))
                c_in = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.features = nn.Sequential(*stages)
        self.num_features = c_in
        self.classifier = nn.Linear(c_in, num_classes)
        self.set_head_dropout(drop_rate)
        init_conv_bn(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to the last stage's feature map (H/8 with the small stem, H/32 without)."""
        self.check_input(x)
        return self.features(self.stem(x))


@register_model
def resnet18(num_classes: int = 10, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-18; ``small_input=True`` (default) is the CIFAR stem: 11.17 M parameters for 10 classes."""
    return ResNet("resnet18", num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def resnet34(num_classes: int = 10, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-34; ``small_input=True`` (default) is the CIFAR stem, ``False`` the ImageNet one."""
    return ResNet("resnet34", num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def resnet50(num_classes: int = 10, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-50 (bottleneck blocks); ``small_input=True`` (default) is the CIFAR stem."""
    return ResNet("resnet50", num_classes=num_classes, in_channels=in_channels, **kwargs)
