"""MobileNetV2 (Sandler et al., 2018) with a width multiplier and a small-input stride setting.

Inverted residual blocks (1x1 expansion, 3x3 depthwise, linear 1x1 projection, ReLU6), laid out
as the paper's table 2 (``cfgs`` below). With ``small_input=True`` — the default, meant for inputs
of 64 px or less such as CIFAR — the stem convolution has stride 1 and so has the first 24-channel
stage, as in the common CIFAR variant: the overall stride is 8 instead of 32 (a 32x32 image ends
as a 4x4 map). ``small_input=False`` is the ImageNet network. ``width_mult`` scales every width
(rounded to multiples of 8; the last 1280-channel convolution is never narrowed). Every
convolution is padded, so every input size from 1x1 up works.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_recipes.models.base import ClassifierNet, init_conv_bn
from lit_recipes.models.registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2"]

# (expansion t, output channels c, repeats n, first stride s, first stride with small_input)
cfgs: dict[str, list[tuple[int, int, int, int, int]]] = {
    "mobilenet_v2": [
        (1, 16, 1, 1, 1),
        (6, 24, 2, 2, 1),
        (6, 32, 3, 2, 2),
        (6, 64, 4, 2, 2),
        (6, 96, 3, 1, 1),
        (6, 160, 3, 2, 2),
        (6, 320, 1, 1, 1),
    ],
}


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` without going below 90 % of ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn_relu6(c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """``Conv2d`` (no bias, 'same' padding) -> ``BatchNorm2d`` -> ``ReLU6``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 (strided) -> linear project (1x1); residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = c_in * expand_ratio
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(c_in, hidden, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(ClassifierNet):
    """MobileNetV2 with a small-input stride setting (see the module docstring).

    Args:
        arch: Key into ``cfgs``.
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        width_mult: Multiplier of every layer's width (1.0 is the paper's network).
        small_input: Stride-1 stem and first 24-channel stage (overall stride 8), for inputs of
            64 px or less. Defaults to ``True``.
        drop_rate: Dropout before the linear classifier (0.2 in torchvision).

    Example:
        >>> MobileNetV2(num_classes=10, width_mult=0.5)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    min_input_size = 1

    def __init__(
        self,
        arch: str = "mobilenet_v2",
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        small_input: bool = True,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"{arch}: width_mult must be > 0, got {width_mult}")
        self.arch = arch
        self.num_classes = num_classes
        c_in = make_divisible(32 * width_mult)
        self.stem = conv_bn_relu6(in_channels, c_in, 3, stride=1 if small_input else 2)
        blocks: list[nn.Module] = []
        for t, c, n, s, s_small in cfgs[arch]:
            c_out = make_divisible(c * width_mult)
            for i in range(n):
                stride = (s_small if small_input else s) if i == 0 else 1
                blocks.append(InvertedResidual(c_in, c_out, stride, t))
                c_in = c_out
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        blocks.append(conv_bn_relu6(c_in, self.num_features, 1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(self.num_features, num_classes)
        self.set_head_dropout(drop_rate)
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to the 1280-channel feature map (H/8 with ``small_input``, else H/32)."""
        self.check_input(x)
        return self.features(self.stem(x))


@register_model
def mobilenet_v2(num_classes: int = 10, in_channels: int = 3, **kwargs) -> MobileNetV2:
    """MobileNetV2; ``small_input=True`` (default) uses CIFAR strides, ``width_mult`` scales widths."""
    return MobileNetV2("mobilenet_v2", num_classes=num_classes, in_channels=in_channels, **kwargs)
