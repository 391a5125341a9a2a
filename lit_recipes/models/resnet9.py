"""ResNet-9 of David Page's DAWNBench CIFAR-10 entry ("How to train your ResNet", 2018).

``prep`` (conv 64) -> ``layer1`` (conv 128, max pool, residual of two convs 128) -> ``layer2``
(conv 256, max pool) -> ``layer3`` (conv 512, max pool, residual of two convs 512) -> global max
pool -> linear (no bias) -> logits multiplied by ``scale`` (0.125). Every conv is a 3x3 convolution
without bias followed by batch norm and ReLU. Only standard layers are used, so the network runs
in ``channels_last`` memory format and under bf16 autocast. The three 2x2 max pools need inputs
of at least 8x8 (8x8 digits work; a 32x32 image ends as a 4x4 map).
"""

from __future__ import annotations

import torch
from torch import nn

from lit_recipes.models.base import ClassifierNet, init_conv_bn
from lit_recipes.models.registry import register_model

__all__ = ["ResNet9", "resnet9"]

# Per layer: (output channels, max pool after the first conv, convs in the residual branch)
cfgs: dict[str, list[tuple[int, bool, int]]] = {
    "resnet9": [(64, False, 0), (128, True, 2), (256, True, 0), (512, True, 2)],
}


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 ``Conv2d`` (no bias) -> ``BatchNorm2d`` -> ``ReLU``."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """``x + branch(x)``."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class ResNet9(ClassifierNet):
    """Page's ResNet-9 with a global max pool and scaled logits.

    Args:
        arch: Key into ``cfgs``.
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        scale: Factor applied to the logits (0.125 in the original).
        drop_rate: Dropout before the linear classifier.

    Example:
        >>> net = ResNet9(num_classes=10).to(memory_format=torch.channels_last)
        >>> net(torch.zeros(2, 3, 32, 32).to(memory_format=torch.channels_last)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        arch: str = "resnet9",
        num_classes: int = 10,
        in_channels: int = 3,
        scale: float = 0.125,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.scale = scale
        layers: list[nn.Module] = []
        c_in = in_channels
        n_pools = 0
        for c_out, pool, n_res in cfgs[arch]:
            layer: list[nn.Module] = [conv_bn(c_in, c_out)]
            if pool:
                layer.append(nn.MaxPool2d(2))
                n_pools += 1
            if n_res:
                layer.append(Residual(nn.Sequential(*(conv_bn(c_out, c_out) for _ in range(n_res)))))
            layers.append(nn.Sequential(*layer))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.min_input_size = 2**n_pools
        self.num_features = c_in
        self.classifier = nn.Linear(c_in, num_classes, bias=False)
        self.set_head_dropout(drop_rate)
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to the 512-channel feature map (H/8 x W/8)."""
        self.check_input(x)
        return self.features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global max pool, dropout and (unless ``pre_logits``) the linear layer times ``scale``."""
        x = self.head_drop(torch.flatten(nn.functional.adaptive_max_pool2d(features, 1), 1))
        return x if pre_logits else self.classifier(x) * self.scale

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the (bias-free) linear layer with a fresh one for ``num_classes`` classes."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes, bias=False)


@register_model
def resnet9(num_classes: int = 10, in_channels: int = 3, **kwargs) -> ResNet9:
    """Page's DAWNBench ResNet-9 (global max pool, logits x ``scale`` = 0.125): 8x8 inputs and up."""
    return ResNet9("resnet9", num_classes=num_classes, in_channels=in_channels, **kwargs)
