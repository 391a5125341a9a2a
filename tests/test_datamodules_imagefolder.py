"""ImageFolderDataModule on real CIFAR-10 JPEGs and on small trees the tests write: layouts, stats,
class imbalance (sampling, class_weights), confusion matrix, and every bad input of issue 3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from lit_recipes.callbacks.confusion_matrix import ConfusionMatrix
from lit_recipes.datamodules import ImageFolderDataModule
from lit_recipes.module import ClassifierModule


def write_tree(root: Path, counts: dict[str, int], size=(12, 12), mode="RGB", seed=0) -> Path:
    """root/<class>/<i>.png with class-dependent colours (learnable), ``counts`` images per class."""
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = np.zeros((*size, 3), np.uint8)
            base[..., c % 3] = 200
            img = np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).convert(mode).save(root / name / f"{i:03d}.png")
    return root


def test_train_test_layout_on_cifar_jpegs(cifar_jpeg_root):
    dm = ImageFolderDataModule(str(cifar_jpeg_root), batch_size=50, val_fraction=0.2, cutout=8)
    dm.setup("fit")
    assert dm.class_names[:3] == ["airplane", "automobile", "bird"]
    assert dm.num_classes == 10 and dm.in_channels == 3
    assert dm.class_counts().tolist() == [32] * 10  # 40 per class, 20 % stratified to val
    assert len(dm.val_indices) == 80 and len(dm.test_source) == 100
    images, targets, indices = next(iter(dm.train_dataloader()))
    assert images.shape == (50, 3, 32, 32) and images.dtype == torch.float32
    assert torch.equal(targets, torch.as_tensor(dm.train_targets[indices.numpy()]))
    # eval batches are normalised with the training split's exact statistics
    ev, _, _ = next(iter(dm.eval_dataloader("train", batch_size=320)))
    assert torch.allclose(ev.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    # stats cached beside the data, keyed so a second datamodule reuses them
    cache = json.loads((cifar_jpeg_root / ".lit_recipes_stats.json").read_text())
    assert any(v["num_images"] == 320 for v in cache.values())
    dm2 = ImageFolderDataModule(str(cifar_jpeg_root), batch_size=50, val_fraction=0.2)
    dm2.setup("fit")
    assert dm2.mean == dm.mean


def test_single_folder_split_and_readonly_root(tmp_path, monkeypatch):
    import lit_recipes.datamodules.stats as stats

    root = write_tree(tmp_path / "flat", {"a": 10, "b": 10, "c": 10})

    def read_only(path, obj):  # what a read-only file system (or a root without write permission) does
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(stats, "save_json", read_only)
    dm = ImageFolderDataModule(str(root), batch_size=4, val_fraction=0.2, test_fraction=0.2, seed=3)
    dm.setup("fit")  # statistics cannot be cached: still works
    assert len(dm.test_source) == 6 and len(dm.val_indices) == 5 and len(dm.train_indices) == 19
    assert not (root / ".lit_recipes_stats.json").exists()
    monkeypatch.undo()
    again = ImageFolderDataModule(str(root), batch_size=4, val_fraction=0.2, test_fraction=0.2, seed=3)
    again.setup("fit")
    assert again.pool.files == dm.pool.files and again.mean == pytest.approx(dm.mean)  # same seed, same split
    assert (root / ".lit_recipes_stats.json").is_file()


def test_greyscale_and_rgba_mixed_with_rgb_are_converted(tmp_path):
    root = write_tree(tmp_path / "mixed", {"a": 4, "b": 4}, size=(10, 10))
    Image.fromarray(np.full((10, 10), 90, np.uint8), mode="L").save(root / "a" / "grey.png")
    Image.fromarray(np.full((16, 16, 4), 77, np.uint8), mode="RGBA").save(root / "b" / "rgba.png")
    dm = ImageFolderDataModule(str(root), batch_size=10, val_fraction=0.0, normalize="none", train_transforms=[])
    dm.setup("fit")
    by_name = {Path(f).name: i for i, f in enumerate(dm.pool.files)}
    grey, _ = dm.pool.get(by_name["grey.png"])
    rgba, _ = dm.pool.get(by_name["rgba.png"])
    assert grey.shape == (10, 10, 3) and (grey == 90).all()  # replicated to 3 channels
    assert rgba.shape == (10, 10, 3) and (rgba == 77).all()  # alpha dropped, resized to the first image's size
    images, _, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (10, 3, 10, 10)
    one = ImageFolderDataModule(str(root), channels=1, image_size=8, batch_size=10, val_fraction=0.0)
    one.setup("fit")
    assert next(iter(one.train_dataloader()))[0].shape == (10, 1, 8, 8)


def test_bad_inputs_name_the_thing(tmp_path):
    with pytest.raises(FileNotFoundError, match="root not found: .*nowhere"):
        ImageFolderDataModule(str(tmp_path / "nowhere")).setup("fit")
    root = write_tree(tmp_path / "t", {"a": 6, "b": 6})
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="class folder .*empty has no images"):
        ImageFolderDataModule(str(root)).setup("fit")
    shutil.rmtree(root / "empty")
    write_tree(root, {"c": 2}, seed=1)
    with pytest.raises(ValueError, match="leaves class 2 'c' \\(2 samples\\)"):
        ImageFolderDataModule(str(root), val_fraction=0.2).setup("fit")
    big = ImageFolderDataModule(str(root), batch_size=64, val_fraction=0.0)
    with pytest.raises(ValueError, match="batch_size 64 is larger than the training split \\(14 samples\\)"):
        big.setup("fit")
        big.train_dataloader()
    with pytest.raises(ValueError, match="sampling must be one of"):
        ImageFolderDataModule(str(root), sampling="smote")


def test_corrupt_jpeg_error_names_file_and_skip_corrupt_counts(tmp_path):
    root = write_tree(tmp_path / "c", {"a": 6, "b": 6})
    good = (root / "a" / "000.png").read_bytes()
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    dm = ImageFolderDataModule(str(root), batch_size=4, val_fraction=0.0)
    with pytest.raises(ValueError, match=r"cannot read image .*(broken\.jpg|truncated\.png)"):
        dm.setup("fit")  # the statistics pass reads every training image
    with pytest.warns(UserWarning, match="skip_corrupt skipped 2 unreadable"):
        ok = ImageFolderDataModule(str(root), batch_size=4, val_fraction=0.0, skip_corrupt=True)
        ok.setup("fit")
    assert ok.num_skipped == 2 and len(ok.pool) == 12
    assert all("broken" not in f and "truncated" not in f for f in ok.pool.files)


def test_sampling_weights_and_their_composition_with_mining_weights(tmp_path):
    root = write_tree(tmp_path / "imb", {"a": 40, "b": 10, "c": 5})
    kw = dict(batch_size=8, val_fraction=0.0, normalize="none")
    dm = ImageFolderDataModule(str(root), sampling="oversample", **kw)
    dm.setup("fit")
    sampler = dm.train_sampler(rank=0, world_size=1)
    assert sampler.total == 3 * 40  # every class drawn like the largest
    w = sampler.weights
    targets = dm.train_targets[dm.train_indices]
    per_class = [float(w[targets == c].sum()) for c in range(3)]
    assert per_class == pytest.approx([1.0, 1.0, 1.0])  # equal total weight per class
    draw = torch.as_tensor(targets)[sampler.epoch_draw(0)]
    counts = torch.bincount(draw, minlength=3).tolist()
    assert all(25 <= n <= 55 for n in counts), counts  # ~40 each although the pool is 40/10/5
    assert len(dm.train_dataloader()) == 15
    weighted = ImageFolderDataModule(str(root), sampling="weighted", **kw)
    weighted.setup("fit")
    assert weighted.train_sampler(0, 1).total == 55
    # mining weights multiply the class-balance weights
    mining = torch.ones(len(dm.pool), dtype=torch.double)
    mining[torch.as_tensor(targets) == 0] = 3.0
    dm.set_sample_weights(mining)
    w2 = dm.train_sampler(0, 1).weights
    assert torch.allclose(w2, w * mining[torch.as_tensor(dm.train_indices)])
    assert dm.train_sampler(0, 1).weights[targets == 0].sum() / w2[targets == 2].sum() == pytest.approx(3.0)


def test_balanced_class_weights_and_confusion_matrix_on_a_real_fit(tmp_path, trainer_kwargs):
    root = write_tree(tmp_path / "imb", {"a": 48, "b": 12, "c": 8}, size=(8, 8))
    dm = ImageFolderDataModule(str(root), batch_size=16, val_fraction=0.25, sampling="oversample")
    model = ClassifierModule("lenet5", num_classes=3, in_channels=3, lr=0.05, class_weights="balanced")
    cm = ConfusionMatrix()
    trainer = L.Trainer(**{**trainer_kwargs, "max_epochs": 2}, callbacks=[cm])
    trainer.fit(model, datamodule=dm)
    counts = dm.class_counts()
    assert counts.tolist() == [36, 9, 6]
    expected = counts.sum() / (3 * counts)
    assert torch.allclose(model.loss_weights, torch.as_tensor(expected / expected.mean(), dtype=torch.float32))
    res = cm.last["val"]
    matrix = np.array(res["matrix"])
    assert matrix.sum(1).tolist() == [12, 3, 2]  # every validation sample counted once
    assert res["class_names"] == ["a", "b", "c"]
    acc = res["per_class_acc"]
    assert acc == pytest.approx((np.diag(matrix) / matrix.sum(1)).tolist())
    assert torch.allclose(model.per_class_acc["val"].double(), torch.tensor(acc, dtype=torch.double), atol=1e-6)
    png = Path(trainer.default_root_dir) / "confusion_matrix_val.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads((Path(trainer.default_root_dir) / "confusion_matrix_val.json").read_text())["epoch"] == 1
