"""The device-resident fast path for data sets that fit in memory (CIFAR-size, MNIST, digits).

``device_resident: true`` decodes each split **once** into a ``(N, C, H, W)`` uint8 tensor on the
training device (GPU when training there, CPU otherwise) and builds every batch there: index,
convert to float, normalise, then a batched random horizontal flip, reflect-pad-and-crop
translation and cutout. No worker processes, no per-image Python, no host-to-device copies per
step: the technique behind the fastest CIFAR-10 training scripts (airbench, hlb-CIFAR10).

The loader keeps the batch contract ``(images, targets, indices)`` and is a small iterable, not a
``DataLoader``: Lightning counts its batches with ``len()`` (so ``estimated_stepping_batches`` and
``limit_train_batches`` work), calls ``sampler.set_epoch`` every epoch, and leaves it alone under
DDP; each rank takes its own shard (``DistributedSampler`` for shuffling, the datamodule's
:class:`~lit_recipes.datamodules.sampling.WeightedEpochSampler` for ``sampling`` / mining weights).
Augmentation is seeded from ``(seed, epoch, rank)``, so a run is reproducible.

Example:
    >>> from lit_recipes.datamodules import DigitsDataModule
    >>> dm = DigitsDataModule(batch_size=64)
    >>> loader = dm.resident_loader("train")
    >>> images, targets, indices = next(iter(loader))
    >>> images.shape, len(loader)
    (torch.Size([64, 1, 8, 8]), 21)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from lit_recipes.datamodules.sources import Source

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class DeviceAugment:
    """Batched, seeded augmentation of normalised float ``(B, C, H, W)`` images on their device.

    Args:
        flip: random horizontal flip (p = 0.5 per image).
        translate: reflect-pad by this many pixels, then crop back at a random offset
            (a random translation of up to ``translate`` pixels each way).
        cutout: zero (= the mean colour after normalisation) a random ``cutout x cutout`` square
            per image, clipped at the border (0: off).
    """

    def __init__(self, flip: bool = True, translate: int = 0, cutout: int = 0) -> None:
        if translate < 0 or cutout < 0:
            raise ValueError(f"translate and cutout must be >= 0, got {translate} and {cutout}")
        self.flip = flip
        self.translate = int(translate)
        self.cutout = int(cutout)

    def __repr__(self) -> str:
        return f"DeviceAugment(flip={self.flip}, translate={self.translate}, cutout={self.cutout})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        dev = x.device
        if self.translate > 0:
            p = self.translate
            if p >= min(h, w):
                raise ValueError(f"translate {p} must be smaller than the image size {h}x{w}")
            c, wp = x.shape[1], w + 2 * p
            padded = F.pad(x, (p, p, p, p), mode="reflect").flatten(2)  # (B, C, Hp * Wp)
            dy = torch.randint(0, 2 * p + 1, (b,), device=dev, generator=generator)
            dx = torch.randint(0, 2 * p + 1, (b,), device=dev, generator=generator)
            rows = dy[:, None, None] + torch.arange(h, device=dev)[None, :, None]
            cols = dx[:, None, None] + torch.arange(w, device=dev)[None, None, :]
            flat = (rows * wp + cols).view(b, 1, h * w).expand(b, c, h * w)
            x = padded.gather(2, flat).view(b, c, h, w)  # one gather: each image's own crop window
        if self.flip:
            flip = torch.rand(b, device=dev, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.cutout > 0:
            s = self.cutout
            cy = torch.randint(0, h, (b,), device=dev, generator=generator)
            cx = torch.randint(0, w, (b,), device=dev, generator=generator)
            ry = torch.arange(h, device=dev)[None, :] - (cy[:, None] - s // 2)
            rx = torch.arange(w, device=dev)[None, :] - (cx[:, None] - s // 2)
            mask = ((ry >= 0) & (ry < s))[:, :, None] & ((rx >= 0) & (rx < s))[:, None, :]
            x = x.masked_fill(mask[:, None], 0.0)
        return x


def decode_source(source: Source, num_threads: int | None = None) -> torch.Tensor:
    """Every image of ``source`` as one ``(N, C, H, W)`` uint8 CPU tensor (decoded with threads)."""
    if source.images is not None:
        return torch.from_numpy(np.ascontiguousarray(source.images)).permute(0, 3, 1, 2).contiguous()
    n = len(source)
    if n == 0:
        raise ValueError("cannot make an empty split device-resident")
    first, _ = source.get(0)
    first = first[..., None] if first.ndim == 2 else first
    out = np.empty((n, *first.shape), dtype=np.uint8)

    def fill(i: int) -> None:
        image, _ = source.get(i)
        image = image[..., None] if image.ndim == 2 else image
        if image.shape != first.shape:
            raise ValueError(f"image {i} has shape {image.shape}, the first has {first.shape}; set image_size")
        out[i] = image

    with ThreadPoolExecutor(max_workers=num_threads or min(8, torch.get_num_threads() + 1)) as pool:
        list(pool.map(fill, range(n)))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class DeviceResidentLoader:
    """Batches ``(images, targets, indices)`` built on the device from a resident uint8 tensor.

    Args:
        images: ``(N, C, H, W)`` uint8 tensor of the whole source, on the target device.
        targets: ``(N,)`` int64 labels of the source, on the same device.
        indices: the split's positions in the source (what the batch ``indices`` report).
        batch_size: images per batch.
        mean, std: per-channel normalisation in [0, 1] units.
        sampler: yields positions into ``indices`` for this rank (``__len__``, ``set_epoch``).
        augment: on-device augmentation (training), or ``None``.
        drop_last: drop the last incomplete batch.
        seed: base seed of the augmentation generator (combined with the epoch and rank).
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        indices: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        sampler,
        augment: DeviceAugment | None = None,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images = images
        self.targets = targets
        self.indices = torch.as_tensor(indices, dtype=torch.long, device=images.device)
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        self.sampler = sampler
        self.batch_sampler = None  # Lightning inspects DataLoader-like attributes
        self.augment = augment
        self.drop_last = drop_last
        self.seed = seed

    @property
    def device(self) -> torch.device:
        return self.images.device

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the sampler's draw and of the augmentation stream."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self._batches()

    def _batches(self) -> Iterator[Batch]:
        order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long).to(self.device)
        epoch = int(getattr(self.sampler, "epoch", 0))
        rank = int(getattr(self.sampler, "rank", 0))
        generator = torch.Generator(device=self.device)
        generator.manual_seed((self.seed * 1_000_003 + epoch * 10_007 + rank) % (2**63))
        for i in range(len(self)):
            pos = order[i * self.batch_size : (i + 1) * self.batch_size]
            idx = self.indices[pos]
            x = self.images[idx].float().div_(255.0).sub_(self.mean).div_(self.std)
            if self.augment is not None:
                x = self.augment(x, generator)
            yield x, self.targets[idx], idx


def _trainer_context(dm) -> tuple[torch.device, int, int]:
    trainer = getattr(dm, "trainer", None)
    if trainer is None:
        return torch.device("cpu"), 0, 1
    return trainer.strategy.root_device, trainer.global_rank, trainer.world_size


def resident_loader(dm, split: str = "train", device: torch.device | str | None = None) -> DeviceResidentLoader:
    """Build the device-resident loader of ``split`` for a ``ClassificationDataModule`` ``dm``."""
    dm._ensure_loaded()
    root_device, rank, world_size = _trainer_context(dm)
    device = torch.device(device) if device is not None else root_device
    if split == "train":
        name, source, indices = "pool", dm.pool, dm.train_indices
    elif split == "val" and dm.val_indices is not None:
        name, source, indices = "pool", dm.pool, dm.val_indices
    elif split == "val" and dm.val_source is not None:
        name, source, indices = "val", dm.val_source, np.arange(len(dm.val_source))
    elif split == "test" and dm.test_source is not None:
        name, source, indices = "test", dm.test_source, np.arange(len(dm.test_source))
    elif split in ("val", "test"):
        raise ValueError(f"{type(dm).__name__} has no {split} split")
    else:
        raise ValueError(f"unknown split {split!r}; expected train | val | test")
    key = (name, str(device))
    if key not in dm._resident_cache:
        images = decode_source(source).to(device)
        targets = torch.as_tensor(source.targets, dtype=torch.long).to(device)
        dm._resident_cache[key] = (images, targets)
    images, targets = dm._resident_cache[key]
    if split == "train":
        if len(indices) < dm.batch_size:
            raise ValueError(f"batch_size {dm.batch_size} is larger than the training split ({len(indices)} samples)")
        sampler = dm.train_sampler(rank=rank, world_size=world_size)
        if sampler is None:
            sampler = DistributedSampler(range(len(indices)), num_replicas=world_size, rank=rank, seed=dm.seed)
        return DeviceResidentLoader(
            images,
            targets,
            indices,
            dm.batch_size,
            dm.mean,
            dm.std,
            sampler,
            augment=dm.device_augment(),
            drop_last=dm.drop_last,
            seed=dm.seed,
        )
    sampler = DistributedSampler(range(len(indices)), num_replicas=world_size, rank=rank, shuffle=False)
    return DeviceResidentLoader(images, targets, indices, dm.eval_batch_size, dm.mean, dm.std, sampler)


__all__ = ["DeviceAugment", "DeviceResidentLoader", "decode_source", "resident_loader"]
