"""The model zoo: classic CNNs as plain ``nn.Module``s behind a timm-style registry.

Every model subclasses :class:`ClassifierNet` (``forward_features``, ``forward_head``,
``reset_classifier``) and is built by name::

    >>> from lit_recipes.models import create_model, list_models
    >>> net = create_model("resnet18", num_classes=10, in_channels=1)  # CIFAR stem by default
    >>> "cifar_resnet56" in list_models("cifar_*")
    True

``create_model("tv:<name>", ...)`` wraps any ``torchvision.models`` classifier instead.
"""

from lit_recipes.models import (  # noqa: F401  (imported so that their models register)
    alexnet,
    cifar_resnet,
    googlenet,
    lenet,
    mobilenet,
    nin,
    resnet,
    resnet9,
    vgg,
)
from lit_recipes.models.base import ClassifierNet
from lit_recipes.models.registry import create_model, is_model, list_models, register_model

__all__ = ["ClassifierNet", "create_model", "is_model", "list_models", "register_model"]
