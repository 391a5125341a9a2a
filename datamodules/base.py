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

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lit_recipes.datamodules.sampling import (
    WeightedEpochSampler,
    class_balance_weights,
    pool_weights,
    training_sampler,
)
from lit_recipes.datamodules.sources import (
    ImageSize,
    IndexedDataset,
    Source,
    ToTensorNormalize,
    image_hw,
    normalization,
    resized_source,
)
from lit_recipes.datamodules.splits import fold_indices, stratified_split

NormalizeSpec = str | Sequence[Sequence[float]] | None
SamplingMode = Literal["none", "oversample", "weighted"]
SAMPLING_MODES = ("none", "oversample", "weighted")


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
        init_args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        self._base_init_args = init_args
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

    def save_init_hyperparameters(self) -> None:
        """``save_hyperparameters()`` for a subclass ``__init__`` that passes base arguments on through
        ``**kwargs``: ``hparams`` also get the base arguments left at their defaults, so they list every
        constructor argument (what loggers record and checkpoints keep)."""
        self.save_hyperparameters(frame=inspect.currentframe().f_back)
        missing = {k: v for k, v in self._base_init_args.items() if k not in self.hparams}
        if missing:
            self.save_hyperparameters(missing)

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
        self.mean, self.std = normalization(self.normalize, self.in_channels, self.dataset_stats)

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
        self.sample_weights = None if weights is None else pool_weights(weights, len(self.pool), self.train_indices)

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
        return class_balance_weights(self.sampling, self.class_counts(), self.pool.targets)

    def train_sampler(self, rank: int | None = None, world_size: int | None = None) -> WeightedEpochSampler | None:
        """The weighted sampler of the training split, or ``None`` for plain shuffling.

        Effective weight of a sample = its class-balance weight (``sampling``) x its mining weight
        (:meth:`set_sample_weights`). ``oversample`` draws ``num_classes x largest class count``
        samples per epoch, the other modes ``len(training split)``. ``rank`` / ``world_size`` default to
        the process group's.
        """
        self._ensure_loaded()
        return training_sampler(
            self.train_indices,
            self.sample_weights,
            self.class_balance_weights(),
            oversample_counts=self.class_counts() if self.sampling == "oversample" else None,
            epoch_size=self.sample_epoch_size,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
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


__all__ = ["SAMPLING_MODES", "ClassificationDataModule", "NormalizeSpec", "SamplingMode"]
