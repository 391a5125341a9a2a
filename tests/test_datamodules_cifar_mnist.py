"""CIFAR10 / MNIST / FashionMNIST datamodules on files in the real on-disk formats (written here)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_recipes.datamodules import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule
from lit_recipes.datamodules.cifar import CIFAR10_CLASSES


def write_cifar_pickles(root: Path, per_batch: int = 20, test: int = 20) -> np.ndarray:
    """torchvision's cifar-10-batches-py: 5 data batches + test_batch + batches.meta (tiny)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = None
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        labels = [i % 10 for i in range(n)]
        first = data if first is None else first
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": per_batch}, fh)
    return first


def write_idx(root: Path, name: str, n_train: int = 60, n_test: int = 20) -> None:
    """The uncompressed IDX files torchvision's MNIST reads from root/<name>/raw."""
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def test_cifar10_pickles(tmp_path):
    first = write_cifar_pickles(tmp_path)
    dm = CIFAR10DataModule(str(tmp_path), batch_size=16, val_fraction=0.2, cutout=4)
    dm.setup("fit")
    assert dm.layout == "pickle" and dm.class_names == CIFAR10_CLASSES
    assert len(dm.pool) == 100 and len(dm.train_indices) == 80 and len(dm.test_source) == 20
    image, target = dm.pool.get(0)
    assert image.shape == (32, 32, 3) and target == 0
    assert np.array_equal(image, first[0].reshape(3, 32, 32).transpose(1, 2, 0))  # CHW pickle -> HWC
    images, targets, indices = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32)
    assert (tmp_path / ".lit_recipes_stats.json").is_file()
    resident = CIFAR10DataModule(str(tmp_path), batch_size=16, val_fraction=0.2, device_resident=True)
    x, y, idx = next(iter(resident.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and torch.equal(y, torch.as_tensor(resident.train_targets[idx.numpy()]))


def test_cifar10_jpeg_folder_layout(cifar_jpeg_root):
    dm = CIFAR10DataModule(str(cifar_jpeg_root), batch_size=32)
    dm.setup("fit")
    assert dm.layout == "folder" and dm.class_names == CIFAR10_CLASSES
    assert len(dm.pool) == 400 and len(dm.test_source) == 100 and len(dm.val_indices) == 40
    assert next(iter(dm.test_dataloader()))[0].shape == (64, 3, 32, 32)


def test_cifar10_missing_root_and_wrong_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="root not found: .*missing.*download: true"):
        CIFAR10DataModule(str(tmp_path / "missing")).setup("fit")
    (tmp_path / "other").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither cifar-10-batches-py/ nor an ImageFolder train/"):
        CIFAR10DataModule(str(tmp_path / "other")).setup("fit")


@pytest.mark.parametrize("cls,name", [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")])
def test_mnist_idx_files(tmp_path, cls, name):
    write_idx(tmp_path, name)
    dm = cls(str(tmp_path), batch_size=10, val_fraction=0.2, image_size=32)
    dm.setup("fit")
    assert dm.in_channels == 1 and dm.num_classes == 10 and len(dm.test_source) == 20
    images, _, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (10, 1, 32, 32)  # resized for LeNet-5
    assert dm.device_augment().flip is (name == "FashionMNIST")
    assert (tmp_path / name / ".lit_recipes_stats.json").is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"IDX files not found in .*empty/{name}/raw"):
        cls(str(tmp_path / "empty")).setup("fit")
