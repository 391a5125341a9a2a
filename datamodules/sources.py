"""Where images come from: :class:`Source` (labelled uint8 images by index), its in-memory and
resized forms, the normalising tensor transform and the ``(image, target, index)`` dataset.

Example:
    >>> import numpy as np
    >>> from lit_recipes.datamodules.sources import IndexedDataset, ToTensorNormalize, array_source
    >>> source = array_source(np.zeros((4, 8, 8, 1), dtype=np.uint8), [0, 1, 0, 1])
    >>> image, target, index = IndexedDataset(source, [3], ToTensorNormalize([0.0], [1.0]))[0]
    >>> tuple(image.shape), target, index
    ((1, 8, 8), 1, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lit_recipes.imageio import resize_array

ImageSize = int | tuple[int, int] | None
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Source:
    """An indexable set of labelled images: ``get(i) -> (uint8 HxWxC ndarray, int)``.

    ``targets`` holds every label (so splits and class counts never decode an image).
    ``images``, when set, is the whole ``(N, H, W, C)`` uint8 array (the device-resident path then
    copies it in one go instead of decoding image by image).
    """

    get: Callable[[int], tuple[np.ndarray, int]]
    targets: np.ndarray
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)


def array_source(images: np.ndarray, targets: Sequence[int]) -> Source:
    """A :class:`Source` over an in-memory ``(N, H, W, C)`` uint8 array."""
    images = np.ascontiguousarray(images)
    targets = np.asarray(targets, dtype=np.int64)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected a (N, H, W, C) uint8 array, got {images.dtype} {images.shape}")
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    return Source(get=lambda i: (images[i], int(targets[i])), targets=targets, images=images)


def image_hw(image_size: ImageSize) -> tuple[int, int] | None:
    """``image_size`` (an int or ``[height, width]``) as ``(height, width)``; ``None`` stays ``None``."""
    if image_size is None:
        return None
    hw = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"image_size must be a positive int or [height, width], got {image_size!r}")
    return hw


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 HWC image to ``hw`` (PIL, bilinear); a no-op at that size."""
    return resize_array(image, hw)


def resized_source(source: Source, hw: tuple[int, int]) -> Source:
    """``source`` with every image resized to ``hw`` (an in-memory array is resized once, up front)."""
    if source.images is not None:
        if source.images.shape[1:3] == tuple(hw):
            return source
        return array_source(np.stack([resize_image(im, hw) for im in source.images]), source.targets)

    def get(i: int) -> tuple[np.ndarray, int]:
        image, target = source.get(i)
        return resize_image(image, hw), target

    return Source(get=get, targets=source.targets)


class ToTensorNormalize:
    """uint8 HWC ndarray -> float CHW tensor in [0, 1], then ``(x - mean) / std`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std


class IndexedDataset(Dataset):
    """``source[indices[i]]`` through ``transform``, yielding ``(image, target, indices[i])``."""

    def __init__(self, source: Source, indices: Sequence[int], transform: Callable[[np.ndarray], Any]) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        idx = int(self.indices[i])
        image, target = self.source.get(idx)
        return self.transform(image), target, idx

    @property
    def targets(self) -> np.ndarray:
        return self.source.targets[self.indices]


def normalization(
    spec: str | Sequence[Sequence[float]] | None,
    channels: int,
    dataset_stats: Callable[[], tuple[tuple[float, ...], tuple[float, ...]]],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel for a ``normalize`` setting: ``"dataset"`` (``dataset_stats()``, called
    only then), ``"imagenet"``, ``"none"`` / ``None`` (0 and 1), or ``[[mean...], [std...]]``.

    Raises:
        ValueError: an unknown setting, ImageNet statistics for non-RGB data, or a ``[mean, std]`` of
            the wrong length or with a std <= 0.
    """
    c = channels
    if spec is None or spec == "none":
        return (0.0,) * c, (1.0,) * c
    if spec == "imagenet":
        if c != 3:
            raise ValueError(f"normalize: imagenet needs 3-channel images, this data has {c}")
        return IMAGENET_MEAN, IMAGENET_STD
    if spec == "dataset":
        return dataset_stats()
    if isinstance(spec, str):
        raise ValueError(f"normalize must be dataset | imagenet | none | [mean, std], got {spec!r}")
    mean, std = (tuple(float(v) for v in s) for s in spec)
    if len(mean) != c or len(std) != c or min(std) <= 0:
        raise ValueError(f"normalize: expected [mean, std] with {c} values each and std > 0, got {spec!r}")
    return mean, std


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageSize",
    "IndexedDataset",
    "Source",
    "ToTensorNormalize",
    "array_source",
    "image_hw",
    "normalization",
    "resize_image",
    "resized_source",
]
