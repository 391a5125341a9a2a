"""The CIFAR-10 ResNets of He et al. (2016, section 4.2): ResNet-20/32/44/56/110.

A 3x3 convolution to 16 channels, then three stages of ``n`` basic blocks with 16, 32 and 64
channels (the 2nd and 3rd starting with stride 2), global average pooling and a linear layer:
depth ``6n + 2``. Shortcuts are parameter-free (option A): identity, or — where a stage halves the
resolution and doubles the width — the input sub-sampled by 2 and zero-padded to the new width.
Hence the paper's small parameter counts (ResNet-20: 0.27 M, ResNet-56: 0.85 M, ResNet-110: 1.7 M).
Every input size from 1x1 up works.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_recipes.models.base import ClassifierNet, init_conv_bn
from lit_recipes.models.registry import register_model

__all__ = ["CifarResNet"] + [f"cifar_resnet{d}" for d in (20, 32, 44, 56, 110)]

# Depth of each network; it has (depth - 2) / 6 basic blocks per stage.
cfgs: dict[str, int] = {
    "cifar_resnet20": 20,
    "cifar_resnet32": 32,
    "cifar_resnet44": 44,
    "cifar_resnet56": 56,
    "cifar_resnet110": 110,
}


class PadShortcut(nn.Module):
    """Option-A shortcut: sub-sample by ``stride`` and zero-pad the channels to ``c_out`` (no parameters)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_before = (c_out - c_in) // 2
        self.pad_after = c_out - c_in - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class CifarBasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a parameter-free (option A) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity() if stride == 1 and c_in == c_out else PadShortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(ClassifierNet):
    """ResNet-(6n+2) for 32x32 images with option-A shortcuts.

    Args:
        arch: Key into ``cfgs`` ("cifar_resnet20" ... "cifar_resnet110").
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        widths: Channels of the stem and the three stages (the paper: 16, 32, 64).
        drop_rate: Dropout before the linear classifier.

    Example:
        >>> CifarResNet("cifar_resnet20", num_classes=10)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    min_input_size = 1

    def __init__(
        self,
        arch: str = "cifar_resnet20",
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        depth = cfgs[arch]
        if (depth - 2) % 6:
            raise ValueError(f"{arch}: depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.arch = arch
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        c_in = widths[0]
        for i, width in enumerate(widths):
            blocks: list[nn.Module] = []
            for j in range(n):
                blocks.append(CifarBasicBlock(c_in, width, stride=2 if i > 0 and j == 0 else 1))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.features = nn.Sequential(*stages)
        self.num_features = c_in
        self.classifier = nn.Linear(c_in, num_classes)
        self.set_head_dropout(drop_rate)
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to the 64-channel feature map (H/4 x W/4)."""
        self.check_input(x)
        return self.features(self.stem(x))


@register_model
def cifar_resnet20(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 (He et al. 2016), option-A shortcuts: 0.27 M parameters."""
    return CifarResNet("cifar_resnet20", num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def cifar_resnet32(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32 (He et al. 2016), option-A shortcuts: 0.46 M parameters."""
    return CifarResNet("cifar_resnet32", num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def cifar_resnet44(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarResNet:
    """CIFAR ResNet-44 (He et al. 2016), option-A shortcuts: 0.66 M parameters."""
    return CifarResNet("cifar_resnet44", num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def cifar_resnet56(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarResNet:
    """CIFAR ResNet-56 (He et al. 2016), option-A shortcuts: 0.85 M parameters."""
    return CifarResNet("cifar_resnet56", num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def cifar_resnet110(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarResNet:
    """CIFAR ResNet-110 (He et al. 2016), option-A shortcuts: 1.7 M parameters."""
    return CifarResNet("cifar_resnet110", num_classes=num_classes, in_channels=in_channels, **kwargs)
