"""lit_recipes: the classic image-classification training tricks as tested Lightning parts.

``import lit_recipes`` is light (no torch, no Lightning); ``lit_recipes.load_exported(dir)``
loads an exported model as a ready-to-call predictor without importing Lightning.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: importing lit_recipes must not import torch or Lightning
    if name in ("load_exported", "Predictor"):
        from lit_recipes import exported

        return getattr(exported, name)
    raise AttributeError(f"module 'lit_recipes' has no attribute {name!r}")


__all__ = ["Predictor", "__version__", "load_exported"]
