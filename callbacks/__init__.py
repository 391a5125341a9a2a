"""Callbacks: one per module, installed as ``lit_recipes.callbacks``."""

from lit_recipes.callbacks.confusion_matrix import ConfusionMatrix
from lit_recipes.callbacks.data_monitor import DataLoadingMonitor
from lit_recipes.callbacks.gap_monitor import GapMonitor
from lit_recipes.callbacks.hard_negative import HardNegativeMining
from lit_recipes.callbacks.lr_finder import LRRangeTest
from lit_recipes.callbacks.sanity import OverfitSanityCheck

__all__ = [
    "ConfusionMatrix",
    "DataLoadingMonitor",
    "GapMonitor",
    "HardNegativeMining",
    "LRRangeTest",
    "OverfitSanityCheck",
]
