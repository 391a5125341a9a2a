"""MNIST and Fashion-MNIST on torchvision's dataset classes (IDX files under ``root/<Name>/raw``).

``download: true`` fetches the files for users online; offline, point ``root`` at a folder that
holds ``MNIST/raw/train-images-idx3-ubyte`` etc. (the uncompressed IDX files torchvision reads).
Images are 28x28 greyscale (one channel); ``image_size: 32`` resizes them (LeNet-5's input).
Default augmentation: pad 3 with black + random 28x28 crop (a translation of up to 3 pixels), no
flip for digits, a horizontal flip for Fashion-MNIST.

Example:
    >>> dm = MNISTDataModule("data", download=True)  # doctest: +SKIP
    >>> dm.setup("fit")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from lit_recipes.datamodules.base import ClassificationDataModule
from lit_recipes.datamodules.imagefolder import STATS_FILE
from lit_recipes.datamodules.sources import array_source, image_hw
from lit_recipes.datamodules.transforms import AlbumentationsMixin, TransformSpec


class MNISTDataModule(AlbumentationsMixin, ClassificationDataModule):
    """MNIST (10 digit classes, 28x28 greyscale; 60,000 train / 10,000 test).

    Args:
        root: folder holding ``MNIST/raw/`` (torchvision's layout).
        download: download into ``root`` when missing (needs internet).
        batch_size: training batch size (eval loaders use ``eval_batch_size``, default 2x).
        train_transforms, eval_transforms, cutout: see :mod:`lit_recipes.datamodules.transforms`.
        **kwargs: the base arguments (``num_workers``, ``val_fraction``, ``seed``, ``normalize``,
            ``image_size``, ``sampling``, ``device_resident`` ...): see
            :class:`~lit_recipes.datamodules.base.ClassificationDataModule`.
    """

    torchvision_class = "MNIST"
    default_flip = False
    default_reflect = False

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        batch_size: int = 128,
        train_transforms: TransformSpec = None,
        eval_transforms: TransformSpec = None,
        cutout: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.root = Path(root).expanduser()
        self.download = download
        self._init_transforms(train_transforms, eval_transforms, cutout)
        self.save_init_hyperparameters()

    @property
    def in_channels(self) -> int:
        return 1

    def image_shape(self) -> tuple[int, int]:
        return self.image_hw or (28, 28)

    def load_sources(self):
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.torchvision_class)
        if not self.download and not self.root.exists():
            raise FileNotFoundError(f"{type(self).__name__}: root not found: {self.root} (set download: true)")
        try:
            train = cls(str(self.root), train=True, download=self.download)
            test = cls(str(self.root), train=False, download=self.download)
        except RuntimeError as err:
            raw = self.root / self.torchvision_class / "raw"
            raise FileNotFoundError(
                f"{type(self).__name__}: IDX files not found in {raw} ({err}); set download: true"
            ) from None
        pool = array_source(train.data.numpy()[..., None], train.targets.numpy())
        test_src = array_source(test.data.numpy()[..., None], test.targets.numpy())
        return pool, None, test_src, list(train.classes)

    def stats_cache_path(self):
        return self.root / self.torchvision_class / STATS_FILE

    def dataset_stats(self):
        from lit_recipes.datamodules.stats import channel_stats

        tag = f"{self.torchvision_class}-{image_hw(self.image_size)}"
        return channel_stats(self.pool, self.train_indices, cache_path=self.stats_cache_path(), tag=tag)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (10 clothing classes, 28x28 greyscale), the drop-in harder MNIST.

    Same arguments as :class:`MNISTDataModule`; files under ``root/FashionMNIST/raw/``.
    """

    torchvision_class = "FashionMNIST"
    default_flip = True


__all__ = ["FashionMNISTDataModule", "MNISTDataModule"]
