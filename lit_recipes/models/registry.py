"""A timm-style model registry: architectures as data plus small registered factories.

Example:
    >>> from lit_recipes.models import create_model, list_models
    >>> net = create_model("cifar_resnet20", num_classes=10, in_channels=3)
    >>> "lenet5" in list_models()
    True
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory ``fn(num_classes=..., in_channels=..., **kwargs) -> nn.Module`` under its name."""
    name = fn.__name__
    if name in _MODEL_ENTRYPOINTS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching the shell-style ``pattern``."""
    return sorted(n for n in _MODEL_ENTRYPOINTS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODEL_ENTRYPOINTS or name.startswith("tv:")


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a registered model (or ``tv:<torchvision name>``) by name.

    Raises:
        ValueError: ``name`` is not registered (the message lists the known names), or
            ``num_classes`` < 2, or ``in_channels`` < 1.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if name.startswith("tv:"):
        from lit_recipes.models.tv import create_torchvision_model

        return create_torchvision_model(name[3:], num_classes=num_classes, in_channels=in_channels, **kwargs)
    if name not in _MODEL_ENTRYPOINTS:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(list_models())} (or 'tv:<torchvision name>')"
        )
    return _MODEL_ENTRYPOINTS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
