"""Network in Network (Lin, Chen & Yan, 2013), the CIFAR-10 model of the paper.

Three "mlpconv" blocks (a spatial convolution followed by two 1x1 convolutions, i.e. a small MLP
slid over the image), separated by 3x3 stride-2 pools with dropout 0.5, and no fully connected
layer: the last 1x1 convolution gives one map per class and global average pooling turns the
maps into logits. Here that last 1x1 convolution is ``self.classifier`` (a ``Conv2d``) and the
paper's ReLU after it is left out so that logits can be negative. The pools use padding 1, so
every input size from 1x1 up works (8x8 digits included).
"""

from __future__ import annotations

import torch
from torch import nn

from lit_recipes.models.base import ClassifierNet, init_conv_bn
from lit_recipes.models.registry import register_model

__all__ = ["NIN", "nin"]

# One mlpconv block per entry: (kernel_size, channels of the spatial conv and the two 1x1 convs, pool after).
cfgs: dict[str, list[tuple[int, tuple[int, int, int], str | None]]] = {
    "nin": [(5, (192, 160, 96), "max"), (5, (192, 192, 192), "avg"), (3, (192, 192, 192), None)],
}


class NIN(ClassifierNet):
    """Network in Network: mlpconv blocks and a 1x1-conv + global-average-pool head.

    Args:
        arch: Key into ``cfgs``.
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        block_drop_rate: Dropout after each of the two inner pools (0.5 in the paper).
        drop_rate: Dropout before the classifier convolution.

    Example:
        >>> NIN(num_classes=10, in_channels=1)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    min_input_size = 1

    def __init__(
        self,
        arch: str = "nin",
        num_classes: int = 10,
        in_channels: int = 3,
        block_drop_rate: float = 0.5,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        c_in = in_channels
        for k, widths, pool in cfgs[arch]:
            for i, c_out in enumerate(widths):
                kernel = k if i == 0 else 1
                layers += [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]
                c_in = c_out
            if pool is not None:
                pool_cls = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
                layers += [pool_cls(3, stride=2, padding=1), nn.Dropout(block_drop_rate)]
        self.features = nn.Sequential(*layers)
        self.num_features = c_in
        self.classifier = nn.Conv2d(c_in, num_classes, kernel_size=1)
        self.set_head_dropout(drop_rate)
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to the 192-channel feature map (about H/4 x W/4)."""
        self.check_input(x)
        return self.features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Dropout, the 1x1 classifier convolution (one map per class) and global average pooling.

        With ``pre_logits`` the globally pooled features (N, 192) are returned instead.
        """
        x = self.head_drop(features)
        if pre_logits:
            return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.classifier(x), 1), 1)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the 1x1 classifier convolution with a fresh one for ``num_classes`` classes."""
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(self.num_features, num_classes, kernel_size=1)


@register_model
def nin(num_classes: int = 10, in_channels: int = 3, **kwargs) -> NIN:
    """Network in Network (CIFAR-10 configuration of the paper): any input size from 1x1."""
    return NIN("nin", num_classes=num_classes, in_channels=in_channels, **kwargs)
