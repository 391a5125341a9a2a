"""scikit-learn's bundled digits (1,797 8x8 greyscale images, 10 classes): the embedded default data."""

from __future__ import annotations

import numpy as np

from lit_recipes.datamodules.base import ClassificationDataModule
from lit_recipes.datamodules.sources import array_source
from lit_recipes.datamodules.splits import stratified_split


class DigitsDataModule(ClassificationDataModule):
    """The digits of ``sklearn.datasets.load_digits`` (nothing is downloaded).

    Images (values 0..16) are scaled to uint8 0..255 with one channel; a stratified, seeded
    ``test_fraction`` is held out as the test split and ``val_fraction`` of the rest for validation.

    Args:
        test_fraction: share of the 1,797 images held out as the test split (stratified, seeded).
        **kwargs: the base arguments (``batch_size``, ``val_fraction``, ``seed``, ``normalize``,
            ``sampling``, ``device_resident`` ...): see
            :class:`~lit_recipes.datamodules.base.ClassificationDataModule`.

    Example:
        >>> dm = DigitsDataModule(batch_size=64)
        >>> dm.setup("fit")
        >>> dm.num_classes, dm.in_channels, len(dm.train_targets)
        (10, 1, 1437)
    """

    def __init__(self, test_fraction: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction = test_fraction
        self.save_init_hyperparameters()

    @property
    def in_channels(self) -> int:
        return 1

    def load_sources(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        targets = digits.target.astype(np.int64)
        pool_idx, test_idx = stratified_split(targets, self.test_fraction, self.seed)
        pool = array_source(images[pool_idx], targets[pool_idx])
        test = array_source(images[test_idx], targets[test_idx])
        return pool, None, test, [str(i) for i in range(10)]
