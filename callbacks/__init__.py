"""Callbacks: one per module, installed as ``lit_recipes.callbacks``."""

from lit_recipes.callbacks.hard_negative import HardNegativeMining  # noqa: E402
