"""Any folder-per-class image tree (``torchvision.datasets.ImageFolder``'s layout).

Two layouts are understood::

    root/train/<class>/*.jpg  [root/val/<class>/*.jpg]  [root/test/<class>/*.jpg]
    root/<class>/*.jpg                                   (split by val_fraction / test_fraction)

Images are decoded with PIL and converted to RGB (``channels: 3``: greyscale is replicated, the
alpha channel of RGBA / palette images is dropped) or to greyscale (``channels: 1``). Every image is
resized to ``image_size``; without one, to the size of the first training image.

Example:
    >>> dm = ImageFolderDataModule("data/cifar10-jpeg", batch_size=128, num_workers=2)  # doctest: +SKIP
    >>> dm.setup("fit")  # doctest: +SKIP
    >>> dm.class_names[:3], dm.class_counts()[:3]  # doctest: +SKIP
    (['airplane', 'automobile', 'bird'], array([4500, 4500, 4500]))
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from lit_recipes.datamodules.base import ClassificationDataModule
from lit_recipes.datamodules.sources import ImageSize, Source, image_hw
from lit_recipes.datamodules.splits import stratified_split
from lit_recipes.datamodules.transforms import AlbumentationsMixin, TransformSpec
from lit_recipes.imageio import read_image as _decode

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
STATS_FILE = ".lit_recipes_stats.json"


def read_image(path: str | Path, mode: str = "RGB", hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` as a uint8 HWC array in ``mode`` (``RGB`` or ``L``), resized to ``hw``.

    Raises:
        ValueError: the file cannot be decoded (names the file).
    """
    try:
        return _decode(path, mode, hw)
    except ValueError as err:
        raise ValueError(f"{err} (set skip_corrupt: true to skip such files)") from None


def scan_folder(folder: Path, class_names: list[str] | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """``(files, class_names, targets)`` of a folder-per-class tree, sorted.

    With ``class_names`` (the training classes), ``folder``'s classes must be among them.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: no class folders, an empty class folder, or a class unknown to training.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder}: no class folders; expected {folder}/<class>/<image> (or a train/ folder)")
    names = class_names if class_names is not None else classes
    lookup = {c: i for i, c in enumerate(names)}
    files: list[str] = []
    targets: list[int] = []
    for c in classes:
        if c not in lookup:
            raise ValueError(f"{folder / c}: class {c!r} is not among the training classes {names}")
        found = sorted(str(p) for p in (folder / c).iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        if not found:
            raise ValueError(f"class folder {folder / c} has no images (extensions {', '.join(IMG_EXTENSIONS)})")
        files += found
        targets += [lookup[c]] * len(found)
    return files, list(names), np.asarray(targets, dtype=np.int64)


def file_source(files: list[str], targets: np.ndarray, mode: str, hw: tuple[int, int]) -> Source:
    """A lazily decoded :class:`Source` over image files."""
    files = list(files)
    targets = np.asarray(targets, dtype=np.int64)

    def get(i: int) -> tuple[np.ndarray, int]:
        return read_image(files[i], mode, hw), int(targets[i])

    src = Source(get=get, targets=targets)
    src.files = files  # type: ignore[attr-defined]  (for error reports and the stats fingerprint)
    return src


def drop_corrupt(files: list[str], targets: np.ndarray, mode: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Decode every file once; return the readable files, their targets, and the unreadable ones."""

    def ok(path: str) -> bool:
        try:
            read_image(path, mode)
        except ValueError:
            return False
        return True

    with ThreadPoolExecutor(max_workers=4) as pool:
        good = list(pool.map(ok, files))
    bad = [f for f, g in zip(files, good) if not g]
    keep = np.flatnonzero(good)
    return [files[i] for i in keep], targets[keep], bad


def folder_sources(
    root: Path,
    channels: int,
    image_size: ImageSize,
    test_fraction: float,
    seed: int,
    skip_corrupt: bool,
    owner: str,
) -> tuple[Source, Source | None, Source | None, list[str], dict]:
    """Pool / val / test sources of an ImageFolder tree (see the module docstring for the layouts).

    Returns the sources, the class names and an info dict (``skipped`` files, ``fingerprint``).
    """
    if not root.exists():
        raise FileNotFoundError(f"{owner}: root not found: {root}")
    mode = "RGB" if channels == 3 else "L"
    train_dir = root / "train" if (root / "train").is_dir() else root
    files, class_names, targets = scan_folder(train_dir)
    splits: dict[str, tuple[list[str], np.ndarray]] = {"train": (files, targets)}
    for name, candidates in (("val", ("val", "valid", "validation")), ("test", ("test",))):
        folder = next((root / c for c in candidates if (root / c).is_dir()), None)
        if train_dir != root and folder is not None:  # in the one-folder layout these would be classes
            f, _, t = scan_folder(folder, class_names)
            splits[name] = (f, t)
    skipped: list[str] = []
    if skip_corrupt:
        for name, (f, t) in list(splits.items()):
            f, t, bad = drop_corrupt(f, t, mode)
            skipped += bad
            splits[name] = (f, t)
        if skipped:
            rank_zero_warn(
                f"{owner}: skip_corrupt skipped {len(skipped)} unreadable image(s) under {root}: {skipped[0]}"
            )
        present = set(splits["train"][1].tolist())
        for c, cname in enumerate(class_names):
            if c not in present:
                raise ValueError(f"{owner}: class {cname!r} has no readable images left under {train_dir}")
    files, targets = splits["train"]
    hw = image_hw(image_size) or read_image(files[0], mode).shape[:2]
    test = None
    if "test" in splits:
        test = file_source(*splits["test"], mode, hw)
    elif test_fraction > 0:
        keep, held = stratified_split(targets, test_fraction, seed, class_names=class_names)
        test = file_source([files[i] for i in held], targets[held], mode, hw)
        files, targets = [files[i] for i in keep], targets[keep]
    val = file_source(*splits["val"], mode, hw) if "val" in splits else None
    digest = hashlib.sha1("\n".join(str(Path(f).relative_to(root)) for f in files).encode()).hexdigest()[:12]
    info = {"skipped": skipped, "hw": tuple(hw), "fingerprint": f"{digest}-{mode}-{hw[0]}x{hw[1]}"}
    return file_source(files, targets, mode, hw), val, test, class_names, info


class ImageFolderDataModule(AlbumentationsMixin, ClassificationDataModule):
    """A datamodule over a folder-per-class image tree, with albumentations pipelines.

    Args:
        root: the tree (``root/train/<class>/...`` [+ ``val/``, ``test/``] or ``root/<class>/...``).
        test_fraction: share held out as the test split when there is no ``test/`` folder.
        channels: 3 (RGB; greyscale/RGBA converted) or 1 (greyscale).
        train_transforms: albumentations pipeline for training (``null``: pad 1/8 + random crop +
            horizontal flip [+ cutout]; ``[]``: none); see :mod:`lit_recipes.datamodules.transforms`.
        eval_transforms: pipeline for val/test/scoring (``null``: normalise only).
        cutout: side of the cutout square of the default pipeline (0: off).
        **kwargs: the base arguments (``batch_size``, ``num_workers``, ``val_fraction``, ``seed``,
            ``normalize``, ``image_size``, ``sampling``, ``skip_corrupt``, ``device_resident`` ...): see
            :class:`~lit_recipes.datamodules.base.ClassificationDataModule` (workers are persistent).

    Statistics for ``normalize: dataset`` are cached in ``root/.lit_recipes_stats.json``
    (skipped silently when ``root`` is read-only). ``skip_corrupt: true`` decodes every file once
    at setup; the count of skipped files is in ``num_skipped``.

    Example:
        >>> dm = ImageFolderDataModule("data/cifar10-jpeg", sampling="oversample")  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str,
        test_fraction: float = 0.0,
        channels: int = 3,
        train_transforms: TransformSpec = None,
        eval_transforms: TransformSpec = None,
        cutout: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
        self.root = Path(root).expanduser()
        self.channels = channels
        self.test_fraction = test_fraction
        self._init_transforms(train_transforms, eval_transforms, cutout)
        self._info: dict = {}
        self.save_init_hyperparameters()

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def num_skipped(self) -> int:
        """Unreadable files skipped by ``skip_corrupt``."""
        self._ensure_loaded()
        return len(self._info.get("skipped", []))

    def image_shape(self) -> tuple[int, int]:
        self._ensure_loaded()
        return self._info["hw"]

    def load_sources(self):
        pool, val, test, names, self._info = folder_sources(
            self.root,
            self.channels,
            self.image_size,
            self.test_fraction,
            self.seed,
            self.skip_corrupt,
            type(self).__name__,
        )
        return pool, val, test, names

    def stats_cache_path(self):
        return self.root / STATS_FILE

    def dataset_stats(self):
        from lit_recipes.datamodules.stats import channel_stats

        return channel_stats(
            self.pool, self.train_indices, cache_path=self.stats_cache_path(), tag=self._info.get("fingerprint")
        )


__all__ = ["ImageFolderDataModule", "file_source", "folder_sources", "read_image", "scan_folder"]
