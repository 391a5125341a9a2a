"""GoogLeNet / Inception v1 (Szegedy et al., 2014) with batch normalisation after every convolution.

The nine Inception modules (3a ... 5b) have the paper's widths and a real 5x5 branch. Two stems:

* ``small_input=True`` (the default, for CIFAR-sized images): one 3x3 convolution to 192 channels
  at full resolution, as in the usual CIFAR re-implementations; the two max pools between the
  module groups bring a 32x32 input to 8x8.
* ``small_input=False`` (ImageNet): the paper's 7x7 stride-2 convolution, max pool, 1x1 and 3x3
  convolutions and max pool (stride 8 before the Inception modules, 32 overall).

The auxiliary classifiers are left out. All pools use padding, so every input size from 1x1 up
works.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_recipes.models.base import ClassifierNet, init_conv_bn
from lit_recipes.models.registry import register_model

__all__ = ["GoogLeNet", "Inception", "googlenet"]

# Inception modules as (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj); "M" is a 3x3 stride-2 max pool.
cfgs: dict[str, list[tuple[int, int, int, int, int, int] | str]] = {
    "googlenet": [
        (64, 96, 128, 16, 32, 32),  # 3a
        (128, 128, 192, 32, 96, 64),  # 3b
        "M",
        (192, 96, 208, 16, 48, 64),  # 4a
        (160, 112, 224, 24, 64, 64),  # 4b
        (128, 128, 256, 24, 64, 64),  # 4c
        (112, 144, 288, 32, 64, 64),  # 4d
        (256, 160, 320, 32, 128, 128),  # 4e
        "M",
        (256, 160, 320, 32, 128, 128),  # 5a
        (384, 192, 384, 48, 128, 128),  # 5b
    ],
}


def conv_bn_relu(c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """``Conv2d`` (no bias, 'same' padding) -> ``BatchNorm2d`` -> ``ReLU``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Inception(nn.Module):
    """One Inception module: four parallel branches concatenated along the channels.

    Args:
        c_in: Input channels.
        c1: Channels of the 1x1 branch.
        c3_reduce: Channels of the 1x1 reduction before the 3x3 convolution.
        c3: Channels of the 3x3 branch.
        c5_reduce: Channels of the 1x1 reduction before the 5x5 convolution.
        c5: Channels of the 5x5 branch.
        pool_proj: Channels of the 1x1 projection after the 3x3 max pool.
    """

    def __init__(self, c_in: int, c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int, pool_proj: int):
        super().__init__()
        self.out_channels = c1 + c3 + c5 + pool_proj
        self.branch1 = conv_bn_relu(c_in, c1, 1)
        self.branch3 = nn.Sequential(conv_bn_relu(c_in, c3_reduce, 1), conv_bn_relu(c3_reduce, c3, 3))
        self.branch5 = nn.Sequential(conv_bn_relu(c_in, c5_reduce, 1), conv_bn_relu(c5_reduce, c5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_bn_relu(c_in, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


class GoogLeNet(ClassifierNet):
    """Inception v1 with batch normalisation, without auxiliary heads.

    Args:
        arch: Key into ``cfgs``.
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        small_input: Use the CIFAR stem (one 3x3 convolution, no downsampling) instead of the
            ImageNet stem (stride 8). Defaults to ``True``.
        drop_rate: Dropout before the linear classifier (0.4 in the paper).

    Example:
        >>> GoogLeNet(num_classes=10)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    min_input_size = 1

    def __init__(
        self,
        arch: str = "googlenet",
        num_classes: int = 10,
        in_channels: int = 3,
        small_input: bool = True,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        if small_input:
            self.stem = conv_bn_relu(in_channels, 192, 3)
        else:
            self.stem = nn.Sequential(
                conv_bn_relu(in_channels, 64, 7, stride=2),
                nn.MaxPool2d(3, stride=2, padding=1),
                conv_bn_relu(64, 64, 1),
                conv_bn_relu(64, 192, 3),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        layers: list[nn.Module] = []
        c_in = 192
        for v in cfgs[arch]:
            if v == "M":
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
                continue
            assert isinstance(v, tuple)
            block = Inception(c_in, *v)
            layers.append(block)
            c_in = block.out_channels
        self.features = nn.Sequential(*layers)
        self.num_features = c_in
        self.classifier = nn.Linear(c_in, num_classes)
        self.set_head_dropout(drop_rate)
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to the 1024-channel feature map (H/4 or H/32 depending on the stem)."""
        self.check_input(x)
        return self.features(self.stem(x))


@register_model
def googlenet(num_classes: int = 10, in_channels: int = 3, **kwargs) -> GoogLeNet:
    """GoogLeNet (Inception v1) with BN; ``small_input=True`` (default) is the CIFAR stem."""
    return GoogLeNet("googlenet", num_classes=num_classes, in_channels=in_channels, **kwargs)
