"""AlexNet (Krizhevsky et al., 2012), in the CIFAR-sized form that also runs at 224x224.

The five convolutions keep the paper's widths (64-192-384-256-256, as torchvision's single-GPU
version) but the stem is a 3x3 stride-2 convolution instead of 11x11 stride 4, and the three max
pools are 2x2. An adaptive average pool brings the last map to 2x2 whatever the input size, so
32x32 CIFAR images (map 2x2) and 224x224 ImageNet images (map 14x14) both work; the smallest
accepted input is 15x15. The MLP head is narrower than the paper's (``hidden_dim=2048`` instead of
4096) and keeps its dropout (``mlp_drop_rate=0.5``).
"""

from __future__ import annotations

import torch
from torch import nn

from lit_recipes.models.base import ClassifierNet, init_conv_bn
from lit_recipes.models.registry import register_model

__all__ = ["AlexNet", "alexnet"]

# (out_channels, kernel_size, stride, max-pool after)
cfgs: dict[str, list[tuple[int, int, int, bool]]] = {
    "alexnet": [
        (64, 3, 2, True),
        (192, 3, 1, True),
        (384, 3, 1, False),
        (256, 3, 1, False),
        (256, 3, 1, True),
    ],
}


class AlexNet(ClassifierNet):
    """AlexNet with a small stem and an adaptive pool, for 15x15 inputs and up.

    Args:
        arch: Key into ``cfgs`` (and the name used in error messages).
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        hidden_dim: Width of the two hidden layers of the MLP head.
        mlp_drop_rate: Dropout before each hidden layer of the MLP head (0.5 in the paper).
        drop_rate: Dropout before the final linear layer.

    Example:
        >>> AlexNet(num_classes=10)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    min_input_size = 15

    def __init__(
        self,
        arch: str = "alexnet",
        num_classes: int = 10,
        in_channels: int = 3,
        hidden_dim: int = 2048,
        mlp_drop_rate: float = 0.5,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.num_features = hidden_dim
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out, k, s, pool in cfgs[arch]:
            layers += [nn.Conv2d(c_in, c_out, k, stride=s, padding=k // 2), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.pre_logits = nn.Sequential(
            nn.Flatten(1),
            nn.Dropout(mlp_drop_rate),
            nn.Linear(c_in * 2 * 2, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(mlp_drop_rate),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(hidden_dim, num_classes)
        self.set_head_dropout(drop_rate)
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to the 256-channel feature map (about H/16 x W/16)."""
        self.check_input(x)
        return self.features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool to 2x2, run the MLP, dropout and (unless ``pre_logits``) the classifier."""
        x = self.head_drop(self.pre_logits(self.pool(features)))
        return x if pre_logits else self.classifier(x)


@register_model
def alexnet(num_classes: int = 10, in_channels: int = 3, **kwargs) -> AlexNet:
    """AlexNet, CIFAR-sized (3x3 stride-2 stem, 2x2 pools, adaptive pool): 15x15 inputs and up."""
    return AlexNet("alexnet", num_classes=num_classes, in_channels=in_channels, **kwargs)
