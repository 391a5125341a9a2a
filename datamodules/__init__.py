"""Datamodules, installed as ``lit_recipes.datamodules`` (the shared base and its contract: docs/architecture.md)."""

from lit_recipes.datamodules.base import ClassificationDataModule
from lit_recipes.datamodules.cifar import CIFAR10DataModule
from lit_recipes.datamodules.device_resident import DeviceAugment, DeviceResidentLoader
from lit_recipes.datamodules.digits import DigitsDataModule
from lit_recipes.datamodules.imagefolder import ImageFolderDataModule
from lit_recipes.datamodules.mnist import FashionMNISTDataModule, MNISTDataModule
from lit_recipes.datamodules.one_vs_rest import OneVsRestDataModule
from lit_recipes.datamodules.sampling import WeightedEpochSampler
from lit_recipes.datamodules.sources import IndexedDataset, Source, ToTensorNormalize, array_source
from lit_recipes.datamodules.splits import fold_indices, stratified_split
from lit_recipes.datamodules.transforms import build_pipeline

__all__ = [
    "CIFAR10DataModule",
    "ClassificationDataModule",
    "DeviceAugment",
    "DeviceResidentLoader",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "IndexedDataset",
    "MNISTDataModule",
    "OneVsRestDataModule",
    "Source",
    "ToTensorNormalize",
    "WeightedEpochSampler",
    "array_source",
    "build_pipeline",
    "fold_indices",
    "stratified_split",
]
