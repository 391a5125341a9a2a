"""The shared base of every lit_recipes datamodule (its contract: docs/architecture.md).

A subclass only says where its images come from (:meth:`ClassificationDataModule.load_sources`):
a training *pool* and optional explicit validation / test sources, each a :class:`Source` of
``uint8`` HWC images and integer targets. The base does the rest, identically for every data set:

* the stratified, seeded train/val split when there is no explicit validation source;
* k-fold splits of the pool (:meth:`set_fold`);
* the batch contract ``(images, targets, indices)``, where ``indices`` are positions in the pool
  (training/fold-validation batches) or in the eval source (explicit val/test batches);
* normalisation (``normalize: dataset | imagenet | none | [mean, std]``);
* the DDP-safe weighted sampler behind :meth:`set_sample_weights` (hard-negative mining,
  oversampling);
* :meth:`eval_dataloader` for scoring passes without augmentation, optionally sharded by rank;
* class-imbalance sampling (``sampling: none | oversample | weighted``), composed with the
  mining weights of :meth:`set_sample_weights` (effective weight = class weight x mining weight);
* ``image_size`` (every image resized to it) and the device-resident fast path
  (``device_resident: true``, :mod:`lit_recipes.datamodules.device_resident`).

Example:
    >>> from lit_recipes.datamodules import DigitsDataModule
    >>> dm = DigitsDataModule(batch_size=32)
    >>> dm.setup("fit")
    >>> images, targets, indices = next(iter(dm.train_dataloader()))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lit_recipes.imageio import resize_array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NormalizeSpec = str | Sequence[Sequence[float]] | None
SamplingMode = Literal["none", "oversample", "weighted"]
SAMPLING_MODES = ("none", "oversample", "weighted")
ImageSize = int | tuple[int, int] | None


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


class WeightedEpochSampler(DistributedSampler):
    """A weighted sampler that is the same on every rank, sharded like ``DistributedSampler``.

    Each epoch every rank draws the *same* ``num_samples`` positions (with replacement, by
    ``weights``) from a generator seeded with ``seed + epoch``, then keeps its own strided shard
    ``draw[rank::world_size]`` (padded by wrap-around to equal length). The shards of all ranks are
    disjoint slices of one draw, and together they equal the single-process draw of that epoch.
    It subclasses ``DistributedSampler`` so Lightning does not wrap it again under DDP.

    Args:
        weights: one non-negative weight per dataset item.
        num_samples: draws per epoch (all ranks together); defaults to ``len(weights)``.
        seed: base seed of the per-epoch generator.
        num_replicas, rank: default to the process group's world size / rank (1 / 0 without one).
        systematic: draw by systematic sampling instead of with replacement: an item of expected
            count ``c = weight * num_samples / sum(weights)`` is drawn ``floor(c)`` or ``ceil(c)``
            times (a weight-1 item of a budgeted epoch exactly once), then the draw is shuffled.
    """

    def __init__(
        self,
        weights: Sequence[float] | torch.Tensor,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        systematic: bool = False,
    ) -> None:
        dist_ready = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if dist_ready else 1
        if rank is None:
            rank = torch.distributed.get_rank() if dist_ready else 0
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        if self.weights.ndim != 1 or len(self.weights) == 0:
            raise ValueError(f"weights must be a non-empty 1-D sequence, got shape {tuple(self.weights.shape)}")
        if not torch.isfinite(self.weights).all() or (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        self.total = int(num_samples or len(self.weights))
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.num_samples = math.ceil(self.total / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.shuffle = True
        self.drop_last = False
        self.systematic = systematic

    def epoch_draw(self, epoch: int | None = None) -> torch.Tensor:
        """The full (all-rank) draw of ``epoch`` (default: the current one)."""
        g = torch.Generator()
        g.manual_seed(self.seed + (self.epoch if epoch is None else epoch))
        if not self.systematic:
            return torch.multinomial(self.weights, self.total, replacement=True, generator=g)
        perm = torch.randperm(len(self.weights), generator=g)
        ends = torch.cumsum(self.weights[perm] * (self.total / self.weights.sum()), 0)
        points = torch.rand(1, generator=g, dtype=torch.double) + torch.arange(self.total, dtype=torch.double)
        draw = perm[torch.searchsorted(ends, points, right=True).clamp_max(len(perm) - 1)]
        return draw[torch.randperm(len(draw), generator=g)]

    def __iter__(self) -> Iterator[int]:
        draw = self.epoch_draw()
        if self.total_size > len(draw):
            draw = torch.cat([draw, draw[: self.total_size - len(draw)]])
        return iter(draw[self.rank : self.total_size : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ClassificationDataModule(L.LightningDataModule):
    """Base datamodule: splits, folds, normalisation, weighted sampling and eval loaders.

    Subclasses implement :meth:`load_sources` and may override :meth:`build_train_transform` /
    :meth:`build_eval_transform` (augmentation) and :meth:`stats_cache_path`.

    Args:
        batch_size: training batch size (eval loaders use ``eval_batch_size``, default 2x).
        num_workers: DataLoader workers (``persistent_workers`` is on whenever > 0).
        pin_memory: pin host memory (useful on GPU).
        val_fraction: share of the pool held out for validation when the data set has no
            explicit validation split (stratified, seeded).
        seed: seed of the split, the folds and the weighted sampler.
        normalize: ``"dataset"`` (mean/std of the training split), ``"imagenet"``, ``"none"``, or
            ``[[mean...], [std...]]``.
        drop_last: drop the last incomplete training batch.
        sampling: class-imbalance sampling of the training split: ``none``; ``oversample`` (inverse
            class-frequency weights and an epoch of ``num_classes x largest class`` draws, so every
            class is drawn as often as the largest); ``weighted`` (the same inverse-frequency
            weights, epoch length unchanged). Multiplied with :meth:`set_sample_weights`' weights.
        image_size: resize every image to this size (int or ``[height, width]``).
        skip_corrupt: skip unreadable image files (reporting their count) instead of failing;
            used by file-based subclasses.
        device_resident: keep the decoded splits as uint8 tensors on the training device and
            augment batches there (:mod:`lit_recipes.datamodules.device_resident`).
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        val_fraction: float = 0.1,
        seed: int = 42,
        normalize: NormalizeSpec = "dataset",
        drop_last: bool = False,
        eval_batch_size: int | None = None,
        sampling: SamplingMode = "none",
        image_size: ImageSize = None,
        skip_corrupt: bool = False,
        device_resident: bool = False,
    ) -> None:
        super().__init__()
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {' | '.join(SAMPLING_MODES)}, got {sampling!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.val_fraction = val_fraction
        self.seed = seed
        self.normalize = normalize
        self.drop_last = drop_last
        self.sampling = sampling
        self.image_size = image_size
        self.image_hw = image_hw(image_size)
        self.skip_corrupt = skip_corrupt
        self.device_resident = device_resident
        self._resident_cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._loaded = False
        self.pool: Source | None = None
        self.val_source: Source | None = None
        self.test_source: Source | None = None
        self.train_indices: np.ndarray | None = None
        self.val_indices: np.ndarray | None = None
        self.fold: tuple[int, int] | None = None
        self.sample_weights: torch.Tensor | None = None
        self.sample_epoch_size: int | None = None
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None
        self._class_names: list[str] | None = None

    # ------------------------------------------------------------------ what subclasses provide
    def load_sources(self) -> tuple[Source, Source | None, Source | None, list[str]]:
        """Return ``(pool, val_source or None, test_source or None, class_names)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_sources()")

    @property
    def in_channels(self) -> int:
        """Channels of the images the loaders yield."""
        raise NotImplementedError(f"{type(self).__name__} must define in_channels")

    def build_train_transform(self) -> Callable[[np.ndarray], torch.Tensor]:
        """Training transform (augmentation + normalisation). Default: normalisation only."""
        return ToTensorNormalize(self.mean, self.std)

    def build_eval_transform(self) -> Callable[[np.ndarray], torch.Tensor]:
        """Eval transform (no augmentation)."""
        return ToTensorNormalize(self.mean, self.std)

    def stats_cache_path(self):
        """Where ``normalize: dataset`` caches the statistics (``None``: not cached)."""
        return None

    # ------------------------------------------------------------------ loading and splits
    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        pool, val_source, test_source, class_names = self.load_sources()
        if self.image_hw is not None:
            pool, val_source, test_source = (
                None if s is None else resized_source(s, self.image_hw) for s in (pool, val_source, test_source)
            )
        self.pool, self.val_source, self.test_source = pool, val_source, test_source
        self._class_names = list(class_names)
        if len(self._class_names) < 2:
            raise ValueError(f"{type(self).__name__}: need at least 2 classes, found {len(self._class_names)}")
        self._loaded = True
        self._split()
        self._resolve_normalization()

    def _split(self) -> None:
        targets = self.pool.targets
        all_idx = np.arange(len(targets))
        if self.fold is not None:
            fold, num_folds, stratified = self.fold
            self.train_indices, self.val_indices = fold_indices(targets, fold, num_folds, stratified, self.seed)
        elif self.val_source is None and self.val_fraction > 0:
            self.train_indices, self.val_indices = stratified_split(
                targets, self.val_fraction, self.seed, class_names=self._class_names
            )
        else:
            self.train_indices, self.val_indices = all_idx, None
        if len(self.train_indices) < self.batch_size and self.drop_last:
            raise ValueError(
                f"batch_size {self.batch_size} is larger than the training split ({len(self.train_indices)} samples)"
            )

    def _resolve_normalization(self) -> None:
        spec = self.normalize
        c = self.in_channels
        if spec is None or spec == "none":
            self.mean, self.std = (0.0,) * c, (1.0,) * c
        elif spec == "imagenet":
            if c != 3:
                raise ValueError(f"normalize: imagenet needs 3-channel images, this data has {c}")
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        elif spec == "dataset":
            self.mean, self.std = self.dataset_stats()
        elif isinstance(spec, str):
            raise ValueError(f"normalize must be dataset | imagenet | none | [mean, std], got {spec!r}")
        else:
            mean, std = (tuple(float(v) for v in s) for s in spec)
            if len(mean) != c or len(std) != c or min(std) <= 0:
                raise ValueError(f"normalize: expected [mean, std] with {c} values each and std > 0, got {spec!r}")
            self.mean, self.std = mean, std

    def dataset_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Exact per-channel mean and std of the training split, streamed one image at a time
        (float64 sums), cached as JSON at :meth:`stats_cache_path` when the subclass gives one."""
        from lit_recipes.datamodules.stats import channel_stats

        return channel_stats(self.pool, self.train_indices, cache_path=self.stats_cache_path())

    def setup(self, stage: str | None = None) -> None:
        self._ensure_loaded()

    # ------------------------------------------------------------------ the contract
    @property
    def class_names(self) -> list[str]:
        self._ensure_loaded()
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_targets(self) -> np.ndarray:
        """Labels of the whole training pool (every fold), indexed like the batch ``indices``."""
        self._ensure_loaded()
        return self.pool.targets

    def class_counts(self, split: str = "train") -> np.ndarray:
        """Samples per class in the current training split (``"pool"``: the whole pool)."""
        self._ensure_loaded()
        targets = self.pool.targets if split == "pool" else self.pool.targets[self.train_indices]
        return np.bincount(targets, minlength=self.num_classes)

    def set_fold(self, fold: int, num_folds: int, stratified: bool = True) -> None:
        """Use fold ``fold`` of ``num_folds`` of the training pool as validation, the rest for training.

        Folds come from scikit-learn's (Stratified)KFold, shuffled with ``seed``; the test split
        never enters any fold.
        """
        if num_folds < 2:
            raise ValueError(f"num_folds must be >= 2, got {num_folds}")
        if not 0 <= fold < num_folds:
            raise ValueError(f"fold must be in [0, {num_folds}), got {fold}")
        self.fold = (fold, num_folds, stratified)
        if self._loaded:
            self._split()
            if self.normalize == "dataset":
                self._resolve_normalization()

    def set_sample_weights(
        self, weights: Sequence[float] | torch.Tensor | None, num_samples: int | None = None
    ) -> None:
        """Sampling weights over the whole pool (``len(train_targets)`` values), or ``None`` for
        uniform shuffling. Only the current training split is drawn from. Takes effect at the next
        ``train_dataloader()`` call (Lightning reloads it when ``reload_dataloaders_every_n_epochs``
        is set; callbacks that change weights request a reload themselves).

        ``num_samples`` makes each epoch a budget of that many draws, taken by systematic sampling
        (the weights are expected counts up to scale: with weights summing to ``num_samples`` an
        item of weight 1 is drawn exactly once per epoch, one of weight < 1 at most once)."""
        self._ensure_loaded()
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
            raise ValueError(f"set_sample_weights: num_samples must be an int >= 1, got {num_samples!r}")
        self.sample_epoch_size = num_samples if weights is not None else None
        if weights is None:
            self.sample_weights = None
            return
        w = torch.as_tensor(weights, dtype=torch.double).flatten()
        if len(w) != len(self.pool):
            raise ValueError(f"set_sample_weights: expected {len(self.pool)} weights (one per pool item), got {len(w)}")
        if not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError("set_sample_weights: weights must be finite and non-negative")
        if w[torch.as_tensor(self.train_indices)].sum() <= 0:
            raise ValueError("set_sample_weights: every training sample has weight 0")
        self.sample_weights = w

    # ------------------------------------------------------------------ datasets and loaders
    def train_dataset(self) -> IndexedDataset:
        self._ensure_loaded()
        return IndexedDataset(self.pool, self.train_indices, self.build_train_transform())

    def _eval_dataset(self, split: str, indices: Sequence[int] | None = None) -> IndexedDataset:
        self._ensure_loaded()
        tf = self.build_eval_transform()
        if split == "train":
            source, base = self.pool, self.train_indices
        elif split == "pool":
            source, base = self.pool, np.arange(len(self.pool))
        elif split == "val":
            if self.val_indices is not None:
                source, base = self.pool, self.val_indices
            elif self.val_source is not None:
                source, base = self.val_source, np.arange(len(self.val_source))
            else:
                raise ValueError(f"{type(self).__name__} has no validation split (val_fraction=0 and no val source)")
        elif split == "test":
            if self.test_source is None:
                raise ValueError(f"{type(self).__name__} has no test split")
            source, base = self.test_source, np.arange(len(self.test_source))
        else:
            raise ValueError(f"unknown split {split!r}; expected train | pool | val | test")
        return IndexedDataset(source, base if indices is None else np.asarray(indices, dtype=np.int64), tf)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool = False, sampler=None, drop_last=False):
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
        )

    def class_balance_weights(self) -> torch.Tensor | None:
        """One weight per pool item from ``sampling`` (inverse frequency of its class in the current
        training split), or ``None`` for ``sampling: none``."""
        self._ensure_loaded()
        if self.sampling == "none":
            return None
        counts = torch.as_tensor(self.class_counts(), dtype=torch.double)
        per_class = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
        return per_class[torch.as_tensor(self.pool.targets)]

    def train_sampler(self, rank: int | None = None, world_size: int | None = None) -> WeightedEpochSampler | None:
        """The weighted sampler of the training split, or ``None`` for plain shuffling.

        Effective weight of a sample = its class-balance weight (``sampling``) x its mining weight
        (:meth:`set_sample_weights`). ``oversample`` draws ``num_classes x largest class count``
        samples per epoch, the other modes ``len(training split)``. ``rank`` / ``world_size`` default to
        the process group's.
        """
        self._ensure_loaded()
        train_idx = torch.as_tensor(self.train_indices)
        w = None if self.sample_weights is None else self.sample_weights[train_idx]
        balance = self.class_balance_weights()
        if balance is not None:
            w = balance[train_idx] if w is None else w * balance[train_idx]
        if w is None:
            return None
        if w.sum() <= 0:
            raise ValueError("the class-balance x mining weights of every training sample are 0")
        num_samples = None
        if self.sampling == "oversample":
            counts = self.class_counts()
            num_samples = int(counts.max()) * int((counts > 0).sum())
        if self.sample_epoch_size is not None:  # a budgeted epoch (set_sample_weights(..., num_samples))
            num_samples = self.sample_epoch_size
        return WeightedEpochSampler(
            w,
            num_samples=num_samples,
            seed=self.seed,
            num_replicas=world_size,
            rank=rank,
            systematic=self.sample_epoch_size is not None,
        )

    def train_dataloader(self) -> DataLoader:
        if self.device_resident:
            return self.resident_loader("train")
        ds = self.train_dataset()
        if len(ds) < self.batch_size:
            raise ValueError(f"batch_size {self.batch_size} is larger than the training split ({len(ds)} samples)")
        sampler = self.train_sampler()
        return self._loader(ds, self.batch_size, shuffle=True, sampler=sampler, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        if self.device_resident:
            return self.resident_loader("val")
        return self._loader(self._eval_dataset("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        if self.device_resident:
            return self.resident_loader("test")
        return self._loader(self._eval_dataset("test"), self.eval_batch_size)

    # ------------------------------------------------------------------ device-resident fast path
    def device_augment(self):
        """The batched on-device augmentation of the training split
        (a :class:`~lit_recipes.datamodules.device_resident.DeviceAugment`, or ``None``)."""
        return None

    def resident_loader(self, split: str = "train", device: torch.device | str | None = None):
        """A :class:`~lit_recipes.datamodules.device_resident.DeviceResidentLoader` over ``split``.

        The split's source is decoded once into a uint8 tensor on ``device`` (default: the
        trainer's root device, else CPU) and cached; training batches are drawn by the same
        (weighted) sampler as the DataLoader path and sharded by the trainer's rank.
        """
        from lit_recipes.datamodules.device_resident import resident_loader

        return resident_loader(self, split, device)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def eval_dataloader(
        self,
        split: str = "train",
        indices: Sequence[int] | None = None,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int | None = None,
    ) -> DataLoader:
        """A loader for scoring passes: eval transforms, no shuffling, no augmentation.

        Args:
            split: ``train`` (current training split), ``pool`` (every pool item), ``val``, ``test``.
            indices: positions to score instead of the whole split (pool positions for
                ``train``/``pool``, source positions for ``val``/``test``).
            rank, world_size: keep only the strided shard ``[rank::world_size]`` (for DDP scoring;
                the batch ``indices`` tell each rank's results apart when gathered).
        """
        ds = self._eval_dataset(split, indices)
        if world_size > 1:
            ds = IndexedDataset(ds.source, ds.indices[rank::world_size], ds.transform)
        return self._loader(ds, batch_size or self.eval_batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "sample_weights": None if self.sample_weights is None else self.sample_weights.clone(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("fold") is not None:
            self.set_fold(*state_dict["fold"])
        if state_dict.get("sample_weights") is not None:
            self.sample_weights = torch.as_tensor(state_dict["sample_weights"], dtype=torch.double)


def stratified_split(
    targets: np.ndarray, fraction: float, seed: int, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(targets)-1`` into (keep, held_out), stratified by class and seeded.

    Raises:
        ValueError: a class would end up with no sample on one side (names the class index, and its
            name when ``class_names`` is given).
    """
    from sklearn.model_selection import train_test_split

    targets = np.asarray(targets)
    counts = np.bincount(targets)
    for cls, n in enumerate(counts):
        if n == 0:
            continue
        held = round(n * fraction)
        if held < 1 or n - held < 1:
            name = f" {class_names[cls]!r}" if class_names is not None and cls < len(class_names) else ""
            raise ValueError(
                f"a held-out fraction of {fraction} leaves class {cls}{name} ({n} samples) with no sample on one side; "
                "lower the fraction or add samples"
            )
    keep, held = train_test_split(
        np.arange(len(targets)), test_size=fraction, stratify=targets, random_state=seed, shuffle=True
    )
    return np.sort(keep), np.sort(held)


def fold_indices(
    targets: np.ndarray, fold: int, num_folds: int, stratified: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) positions of ``fold`` among ``num_folds`` shuffled, seeded (stratified) folds."""
    from sklearn.model_selection import KFold, StratifiedKFold

    targets = np.asarray(targets)
    if num_folds > len(targets):
        raise ValueError(f"num_folds {num_folds} is larger than the {len(targets)} training samples")
    if stratified:
        counts = np.bincount(targets)
        present = np.flatnonzero(counts)
        smallest = present[np.argmin(counts[present])]
        if counts[smallest] < num_folds:
            from lit_recipes.contracts import FoldTooSmallError

            raise FoldTooSmallError(num_folds, int(smallest), int(counts[smallest]))
        splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=num_folds, shuffle=True, random_state=seed)
    for i, (tr, va) in enumerate(splitter.split(np.zeros(len(targets)), targets)):
        if i == fold:
            return np.sort(tr), np.sort(va)
    raise AssertionError("unreachable")
