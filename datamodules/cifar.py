"""CIFAR-10: torchvision's ``cifar-10-batches-py`` pickles, or the same images as a JPEG ImageFolder tree.

``root`` may hold either

* ``cifar-10-batches-py/`` (torchvision's format; ``download: true`` fetches it for users online), or
* an ImageFolder tree ``train/<class>/*.jpg`` + ``test/<class>/*.jpg`` (e.g. ``data/cifar10-jpeg``
  unpacked from ``cifar10-jpeg.tar.gz``, or the cached copy :func:`lit_recipes.localdata.cifar10_jpeg_subset`
  makes from the tarball ``LIT_RECIPES_DATA`` names: the way to train on real CIFAR-10 offline).

The test split is CIFAR-10's test set; ``val_fraction`` of the 50,000 training images (stratified,
seeded) is held out for validation. Default augmentation: reflect-pad 4 + random 32x32 crop +
horizontal flip (+ ``cutout``), the same on the device-resident path.

Example:
    >>> dm = CIFAR10DataModule("data/cifar10-jpeg", batch_size=256, device_resident=True)  # doctest: +SKIP
    >>> dm.setup("fit")  # doctest: +SKIP
"""

from __future__ import annotations

import pickle
from pathlib import Path

from lit_recipes.datamodules.base import ClassificationDataModule
from lit_recipes.datamodules.imagefolder import STATS_FILE, folder_sources
from lit_recipes.datamodules.sources import array_source, image_hw
from lit_recipes.datamodules.transforms import AlbumentationsMixin, TransformSpec

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _torchvision_cifar(cls_name: str = "CIFAR10"):
    """torchvision's CIFAR class, checking files exist (not their md5) when loading without download,
    so a re-packed or truncated copy in the real format loads too."""
    import torchvision.datasets as tvd

    base = getattr(tvd, cls_name)

    class _Cifar(base):
        def __init__(self, root, train: bool = True, download: bool = False) -> None:
            self._verify_md5 = download
            super().__init__(root, train=train, download=download)

        def _check_integrity(self) -> bool:
            if self._verify_md5:
                return super()._check_integrity()
            folder = Path(self.root) / self.base_folder
            return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            path = Path(self.root) / self.base_folder / self.meta["filename"]
            if not path.is_file():
                raise FileNotFoundError(f"CIFAR metadata file not found: {path}")
            with open(path, "rb") as fh:
                data = pickle.load(fh, encoding="latin1")
            self.classes = data[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return _Cifar


class CIFAR10DataModule(AlbumentationsMixin, ClassificationDataModule):
    """CIFAR-10 (10 classes, 32x32 RGB) from pickles or a JPEG ImageFolder tree.

    Args:
        root: folder holding ``cifar-10-batches-py/`` or ``train/`` + ``test/`` class folders.
        download: download the pickles into ``root`` when missing (needs internet; the md5 of the
            files is checked then).
        batch_size: training batch size (eval loaders use ``eval_batch_size``, default 2x).
        train_transforms, eval_transforms, cutout: see :mod:`lit_recipes.datamodules.transforms`.
        **kwargs: the base arguments (``num_workers``, ``val_fraction``, ``seed``, ``normalize``,
            ``image_size``, ``sampling``, ``skip_corrupt``, ``device_resident`` ...): see
            :class:`~lit_recipes.datamodules.base.ClassificationDataModule`.

    Example:
        >>> dm = CIFAR10DataModule("data", download=True)  # doctest: +SKIP
    """

    torchvision_class = "CIFAR10"
    folder_name = "cifar-10-batches-py"

    def __init__(
        self,
        root: str = "data/cifar10-jpeg",
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
        self._info: dict = {}
        self.save_init_hyperparameters()

    @property
    def in_channels(self) -> int:
        return 3

    @property
    def layout(self) -> str:
        """``pickle`` or ``folder``: which on-disk format ``root`` holds."""
        if (self.root / self.folder_name).is_dir() or self.download:
            return "pickle"
        if (self.root / "train").is_dir():
            return "folder"
        if not self.root.exists():
            raise FileNotFoundError(
                f"{type(self).__name__}: root not found: {self.root} (set download: true to fetch the data)"
            )
        raise FileNotFoundError(
            f"{type(self).__name__}: {self.root} holds neither {self.folder_name}/ nor an ImageFolder train/ tree "
            "(set download: true to fetch the data)"
        )

    def image_shape(self) -> tuple[int, int]:
        self._ensure_loaded()
        return self.image_hw or self._info.get("hw", (32, 32))

    def load_sources(self):
        if self.layout == "folder":
            pool, val, test, names, self._info = folder_sources(
                self.root, 3, self.image_size or 32, 0.0, self.seed, self.skip_corrupt, type(self).__name__
            )
            return pool, val, test, names
        cls = _torchvision_cifar(self.torchvision_class)
        try:
            train = cls(str(self.root), train=True, download=self.download)
            test = cls(str(self.root), train=False, download=self.download)
        except RuntimeError as err:
            raise FileNotFoundError(f"{type(self).__name__}: {self.root / self.folder_name}: {err}") from None
        self._info = {"hw": image_hw(self.image_size) or (32, 32), "fingerprint": f"pickle-{self.image_size}"}
        return array_source(train.data, train.targets), None, array_source(test.data, test.targets), list(train.classes)

    def stats_cache_path(self):
        return self.root / STATS_FILE

    def dataset_stats(self):
        from lit_recipes.datamodules.stats import channel_stats

        return channel_stats(
            self.pool, self.train_indices, cache_path=self.stats_cache_path(), tag=self._info.get("fingerprint")
        )


__all__ = ["CIFAR10_CLASSES", "CIFAR10DataModule"]
