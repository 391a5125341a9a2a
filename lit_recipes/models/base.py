"""The interface every zoo model follows (plain ``nn.Module``, no Lightning)."""

from __future__ import annotations

import torch
from torch import nn


class ClassifierNet(nn.Module):
    """Base class: ``forward(x) = forward_head(forward_features(x))``.

    Subclasses build ``self.features`` (anything mapping images to a feature map or vector), set
    ``self.num_features`` (channels entering the head), ``self.min_input_size`` (smallest H = W the
    architecture accepts) and implement ``forward_head``/``reset_classifier``. The default head is
    global average pooling, optional dropout and one ``nn.Linear`` held in ``self.classifier``.
    """

    num_classes: int
    num_features: int
    min_input_size: int = 1
    arch: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.head_drop = nn.Dropout(0.0)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(
                f"{self.arch or type(self).__name__}: expected a (N, C, H, W) batch, got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if min(h, w) < self.min_input_size:
            raise ValueError(
                f"{self.arch or type(self).__name__} cannot take {h}x{w} inputs: "
                f"its downsampling needs at least {self.min_input_size}x{self.min_input_size}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if features.ndim == 4:
            features = torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)
        features = self.head_drop(features)
        return features if pre_logits else self.classifier(features)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` classes."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)

    def set_head_dropout(self, p: float) -> None:
        self.head_drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def init_conv_bn(module: nn.Module) -> None:
    """The usual CNN initialisation, applied to every submodule of ``module``.

    Convolutions: Kaiming normal (fan-out, ReLU gain) with zero bias, as torchvision's VGG/ResNet;
    batch and group norms: weight 1, bias 0. Linear layers keep PyTorch's default initialisation.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
