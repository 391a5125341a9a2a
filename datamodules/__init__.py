"""Datamodules, installed as ``lit_recipes.datamodules`` (DESIGN.md §3: the shared base and its contract)."""

from lit_recipes.datamodules.base import (
    ClassificationDataModule,
    IndexedDataset,
    Source,
    ToTensorNormalize,
    WeightedEpochSampler,
    array_source,
    fold_indices,
    stratified_split,
)
from lit_recipes.datamodules.digits import DigitsDataModule
from lit_recipes.datamodules.one_vs_rest import OneVsRestDataModule

__all__ = [
    "ClassificationDataModule",
    "DigitsDataModule",
    "IndexedDataset",
    "OneVsRestDataModule",
    "Source",
    "ToTensorNormalize",
    "WeightedEpochSampler",
    "array_source",
    "fold_indices",
    "stratified_split",
]
