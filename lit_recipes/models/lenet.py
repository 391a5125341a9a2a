"""LeNet-5 (LeCun et al., 1998), adapted so one network takes 8x8, 28x28 and 32x32 images.

Changes from the paper, all common in modern re-implementations:

* ReLU and max pooling instead of scaled tanh and trainable sub-sampling;
* C3 is fully connected to S2 (no sparse connection table);
* both 5x5 convolutions use padding 2 ("same"), so an 8x8 digit survives both 2x2 pools
  (8 -> 4 -> 2) and the smallest accepted input is 4x4;
* the feature map is resized to 5x5 by adaptive average pooling before the 400-120-84 MLP, so the
  fully connected part has the paper's shape whatever the input size.

``lenet5_bn`` adds batch normalisation after each convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_recipes.models.base import ClassifierNet
from lit_recipes.models.registry import register_model

__all__ = ["LeNet5", "lenet5", "lenet5_bn"]


class LeNet5(ClassifierNet):
    """LeNet-5 with 'same' padding, ReLU, max pooling and a 5x5 adaptive pool before the MLP.

    Args:
        arch: The registered name (used in error messages).
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        batch_norm: Add ``BatchNorm2d`` after each convolution.
        drop_rate: Dropout probability before the final linear layer.

    Example:
        >>> net = LeNet5(num_classes=10, in_channels=1)
        >>> net(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    min_input_size = 4

    def __init__(
        self,
        arch: str = "lenet5",
        num_classes: int = 10,
        in_channels: int = 3,
        batch_norm: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.num_features = 84
        layers: list[nn.Module] = []
        for c_in, c_out in ((in_channels, 6), (6, 16)):
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=5, padding=2, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(5)
        self.pre_logits = nn.Sequential(
            nn.Flatten(1), nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU()
        )
        self.classifier = nn.Linear(self.num_features, num_classes)
        self.set_head_dropout(drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to the 16-channel feature map (H/4 x W/4)."""
        self.check_input(x)
        return self.features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool to 5x5, run the 400-120-84 MLP, dropout and (unless ``pre_logits``) the classifier."""
        x = self.head_drop(self.pre_logits(self.pool(features)))
        return x if pre_logits else self.classifier(x)


@register_model
def lenet5(num_classes: int = 10, in_channels: int = 3, **kwargs) -> LeNet5:
    """LeNet-5, adapted (ReLU, max pooling, padding 2): takes 4x4 inputs and up."""
    return LeNet5("lenet5", num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def lenet5_bn(num_classes: int = 10, in_channels: int = 3, **kwargs) -> LeNet5:
    """LeNet-5, adapted, with batch normalisation after each convolution."""
    return LeNet5("lenet5_bn", num_classes=num_classes, in_channels=in_channels, batch_norm=True, **kwargs)
