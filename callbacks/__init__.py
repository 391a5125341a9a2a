"""Callbacks: one per module, installed as ``lit_recipes.callbacks``."""

from lit_recipes.callbacks.hard_negative import HardNegativeMining  # noqa: E402
from lit_recipes.callbacks.lr_finder import LRRangeTest  # noqa: E402
from lit_recipes.callbacks.gap_monitor import GapMonitor  # noqa: E402
from lit_recipes.callbacks.sanity import OverfitSanityCheck  # noqa: E402
