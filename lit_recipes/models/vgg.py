"""VGG-11/13/16/19 (Simonyan & Zisserman, 2014), with and without batch normalisation.

The convolutional part is the paper's (configurations A, B, D, E); the head is the CIFAR one
(global average pooling and a single linear layer on the 512 channels) instead of the
4096-4096 MLP on a 7x7 map, which would hold more than 100 M parameters. The five 2x2 max pools
need inputs of at least 32x32 (where the last map is 1x1); 224x224 works as well.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_recipes.models.base import ClassifierNet, init_conv_bn
from lit_recipes.models.registry import register_model

__all__ = ["VGG", "cfgs"] + [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]

# Output channels of each 3x3 convolution; "M" is a 2x2 max pool.
cfgs: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"] + [512, 512, 512, 512, "M"] * 2,
}


class VGG(ClassifierNet):
    """VGG with a global-average-pool + linear head.

    Args:
        arch: Key into ``cfgs`` ("vgg11" ... "vgg19").
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        batch_norm: Add ``BatchNorm2d`` after each convolution (the ``_bn`` variants).
        drop_rate: Dropout before the linear classifier.

    Example:
        >>> VGG("vgg11", num_classes=10)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        arch: str = "vgg16",
        num_classes: int = 10,
        in_channels: int = 3,
        batch_norm: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        cfg = cfgs[arch]
        self.arch = f"{arch}_bn" if batch_norm else arch
        self.num_classes = num_classes
        self.min_input_size = 2 ** cfg.count("M")
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            assert isinstance(v, int)
            layers.append(nn.Conv2d(c_in, v, kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            c_in = v
        self.features = nn.Sequential(*layers)
        self.num_features = c_in
        self.classifier = nn.Linear(c_in, num_classes)
        self.set_head_dropout(drop_rate)
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to the 512-channel feature map (H/32 x W/32)."""
        self.check_input(x)
        return self.features(x)


def _vgg(arch: str, batch_norm: bool, num_classes: int, in_channels: int, **kwargs) -> VGG:
    return VGG(arch, num_classes=num_classes, in_channels=in_channels, batch_norm=batch_norm, **kwargs)


@register_model
def vgg11(num_classes: int = 10, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-11 (configuration A), global-average-pool head: 32x32 inputs and up."""
    return _vgg("vgg11", False, num_classes, in_channels, **kwargs)


@register_model
def vgg13(num_classes: int = 10, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-13 (configuration B), global-average-pool head: 32x32 inputs and up."""
    return _vgg("vgg13", False, num_classes, in_channels, **kwargs)


@register_model
def vgg16(num_classes: int = 10, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-16 (configuration D), global-average-pool head: 32x32 inputs and up."""
    return _vgg("vgg16", False, num_classes, in_channels, **kwargs)


@register_model
def vgg19(num_classes: int = 10, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-19 (configuration E), global-average-pool head: 32x32 inputs and up."""
    return _vgg("vgg19", False, num_classes, in_channels, **kwargs)


@register_model
def vgg11_bn(num_classes: int = 10, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-11 with batch normalisation: 32x32 inputs and up."""
    return _vgg("vgg11", True, num_classes, in_channels, **kwargs)


@register_model
def vgg13_bn(num_classes: int = 10, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-13 with batch normalisation: 32x32 inputs and up."""
    return _vgg("vgg13", True, num_classes, in_channels, **kwargs)


@register_model
def vgg16_bn(num_classes: int = 10, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-16 with batch normalisation: 32x32 inputs and up."""
    return _vgg("vgg16", True, num_classes, in_channels, **kwargs)


@register_model
def vgg19_bn(num_classes: int = 10, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-19 with batch normalisation: 32x32 inputs and up."""
    return _vgg("vgg19", True, num_classes, in_channels, **kwargs)
