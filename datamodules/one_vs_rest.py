"""One-vs-rest view of any :class:`ClassificationDataModule`: a chosen class against all the others.

The detection-style task of hard-negative mining (ships vs sea): class 1 is the positive class,
class 0 ("rest") every other class, optionally with the negatives subsampled to a fixed ratio.

Example:
    >>> from lit_recipes.datamodules import DigitsDataModule, OneVsRestDataModule
    >>> dm = OneVsRestDataModule(DigitsDataModule(batch_size=64), positive="8")
    >>> dm.setup("fit")
    >>> dm.class_names, dm.num_classes
    (['rest', '8'], 2)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch

from lit_recipes.datamodules.base import ClassificationDataModule
from lit_recipes.datamodules.sources import Source


class OneVsRestDataModule(ClassificationDataModule):
    """Wrap ``dataset``: its class ``positive`` becomes class 1, every other class class 0 (``rest``).

    Loader settings (batch size, workers, seed, normalisation, validation fraction, sampling ...) and
    transforms are those of ``dataset``; only the labels (and, with ``negatives_per_positive``, the
    set of negatives) change. The split into train/val/test is the wrapped data set's.

    Args:
        dataset: any ``ClassificationDataModule`` (not set up yet or set up, either works).
        positive: the positive class, by name or index in ``dataset.class_names``.
        negatives_per_positive: keep at most this many negatives per positive in every split
            (seeded choice with ``dataset.seed``); ``None`` keeps them all.
        max_pool_positives: keep at most this many positives in the training pool (the split
            train/val is drawn from; seeded), to make the positive class rarer; ``None`` keeps all.

    A file-based source (ImageFolder) keeps its file paths: ``dm.pool.files[i]`` is the image of
    pool item ``i``.

    Raises:
        ValueError: an unknown ``positive`` class (names the class and lists the classes), or a
            ratio <= 0, or ``max_pool_positives`` < 1.
    """

    def __init__(
        self,
        dataset: ClassificationDataModule,
        positive: str | int,
        negatives_per_positive: float | None = None,
        max_pool_positives: int | None = None,
    ) -> None:
        if not isinstance(dataset, ClassificationDataModule):
            raise ValueError(f"dataset must be a ClassificationDataModule, got {type(dataset).__name__}")
        if negatives_per_positive is not None and negatives_per_positive <= 0:
            raise ValueError(f"negatives_per_positive must be > 0 or null, got {negatives_per_positive}")
        if max_pool_positives is not None and max_pool_positives < 1:
            raise ValueError(f"max_pool_positives must be >= 1 or null, got {max_pool_positives}")
        params = inspect.signature(ClassificationDataModule.__init__).parameters
        settings = {name: getattr(dataset, name) for name in params if name != "self" and hasattr(dataset, name)}
        super().__init__(**settings)
        self.dataset = dataset
        self.positive = positive
        self.negatives_per_positive = negatives_per_positive
        self.max_pool_positives = max_pool_positives
        self.positive_name: str | None = None

    @property
    def in_channels(self) -> int:
        return self.dataset.in_channels

    def _positive_id(self, names: list[str]) -> int:
        if isinstance(self.positive, str) and self.positive in names:
            return names.index(self.positive)
        if isinstance(self.positive, int) and not isinstance(self.positive, bool) and 0 <= self.positive < len(names):
            return self.positive
        raise ValueError(f"positive: unknown class {self.positive!r}; the classes are {', '.join(names)}")

    def _binary(self, source: Source | None, pos: int, salt: int) -> Source | None:
        if source is None:
            return None
        targets = (np.asarray(source.targets) == pos).astype(np.int64)
        keep = np.arange(len(targets))
        positives = np.flatnonzero(targets == 1)
        if salt == 0 and self.max_pool_positives is not None and len(positives) > self.max_pool_positives:
            rng = np.random.default_rng(self.seed + 10)
            positives = np.sort(rng.choice(positives, size=self.max_pool_positives, replace=False))
            keep = np.sort(np.concatenate([positives, np.flatnonzero(targets == 0)]))
        if self.negatives_per_positive is not None:
            negatives = np.flatnonzero(targets == 0)
            n_keep = min(len(negatives), round(self.negatives_per_positive * len(positives)))
            rng = np.random.default_rng(self.seed + salt)
            chosen = rng.choice(negatives, size=n_keep, replace=False)
            keep = np.sort(np.concatenate([positives, chosen]))
        sub_targets = targets[keep]
        get = source.get

        def binary_get(i: int) -> tuple[np.ndarray, int]:
            return get(int(keep[i]))[0], int(sub_targets[i])

        out = Source(get=binary_get, targets=sub_targets)
        images = getattr(source, "images", None)
        if images is not None and hasattr(out, "images"):
            out.images = images[keep]
        files = getattr(source, "files", None)
        if files is not None:
            out.files = [files[int(k)] for k in keep]  # type: ignore[attr-defined]
        return out

    def load_sources(self):
        pool, val_source, test_source, names = self.dataset.load_sources()
        names = [str(n) for n in names]
        pos = self._positive_id(names)
        self.positive_name = names[pos]
        return (
            self._binary(pool, pos, 0),
            self._binary(val_source, pos, 1),
            self._binary(test_source, pos, 2),
            ["rest", names[pos]],
        )

    def _sync_stats(self) -> None:
        self.dataset.mean, self.dataset.std = self.mean, self.std

    def build_train_transform(self) -> Callable[[np.ndarray], torch.Tensor]:
        self._sync_stats()
        return self.dataset.build_train_transform()

    def build_eval_transform(self) -> Callable[[np.ndarray], torch.Tensor]:
        self._sync_stats()
        return self.dataset.build_eval_transform()
