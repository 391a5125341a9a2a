"""The device-resident fast path: batch contract, seeded batched augmentation, Lightning integration,
and the DDP-safe weighted sampler under real torchrun (2 CPU processes)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from test_datamodules_imagefolder import write_tree

from lit_recipes.datamodules import DeviceAugment, DigitsDataModule, ImageFolderDataModule
from lit_recipes.module import ClassifierModule

REPO = Path(__file__).resolve().parents[1]


def test_resident_batches_match_the_dataloader_without_augmentation(digits_dm):
    loader = digits_dm.resident_loader("val")
    dl = digits_dm.val_dataloader()
    (x1, y1, i1), (x2, y2, i2) = next(iter(loader)), next(iter(dl))
    assert torch.equal(i1, i2) and torch.equal(y1, y2)
    assert torch.allclose(x1, x2, atol=1e-5)  # same uint8 -> float -> (x - mean) / std
    train = digits_dm.resident_loader("train")
    assert len(train) == len(digits_dm.train_dataloader())
    seen = torch.cat([b[2] for b in train])
    assert sorted(seen.tolist()) == sorted(digits_dm.train_indices.tolist())  # one epoch = a permutation


def test_augment_is_seeded_and_does_what_it_says():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1.0
    g = torch.Generator().manual_seed(0)
    flipped = DeviceAugment(flip=True)(x.repeat(32, 1, 1, 1), g)
    same = (flipped == x.repeat(32, 1, 1, 1)).flatten(1).all(1)
    mirrored = (flipped == x.repeat(32, 1, 1, 1).flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and 8 < int(mirrored.sum()) < 56
    t = DeviceAugment(flip=False, translate=2)(x, torch.Generator().manual_seed(1))
    # every output is a 6x6 window of the reflect-padded input
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for b in range(2):
        assert any(torch.equal(t[b], padded[b, :, dy : dy + 6, dx : dx + 6]) for dy in range(5) for dx in range(5))
    c = DeviceAugment(flip=False, cutout=3)(x, torch.Generator().manual_seed(2))
    zeros = (c == 0).flatten(1).sum(1)
    assert ((zeros >= 1) & (zeros <= 9)).all()  # a 3x3 hole, clipped at the border
    a = DeviceAugment(True, 2, 3)(x, torch.Generator().manual_seed(5))
    b = DeviceAugment(True, 2, 3)(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_resident_epochs_are_seeded_and_differ_between_epochs():
    dm = DigitsDataModule(batch_size=32)
    dm.setup("fit")
    dm.device_augment = lambda: DeviceAugment(flip=True, translate=1)
    loader = dm.resident_loader("train")
    loader.set_epoch(3)
    a = [b[0] for b in loader]
    loader.set_epoch(3)
    b = [b[0] for b in loader]
    loader.set_epoch(4)
    c = next(iter(loader))[0]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c)


def test_fit_with_device_resident_counts_batches(tmp_path, trainer_kwargs):
    root = write_tree(tmp_path / "t", {"a": 20, "b": 20}, size=(8, 8))
    dm = ImageFolderDataModule(str(root), batch_size=8, val_fraction=0.2, device_resident=True, cutout=2)
    model = ClassifierModule("lenet5", num_classes=2, in_channels=3, lr=0.05)
    trainer = L.Trainer(**{**trainer_kwargs, "max_epochs": 2})
    trainer.fit(model, datamodule=dm)
    assert type(trainer.train_dataloader).__name__ == "DeviceResidentLoader"
    assert trainer.num_training_batches == 4 and trainer.estimated_stepping_batches == 8
    assert trainer.global_step == 8 and torch.isfinite(trainer.callback_metrics["val/loss"])


def test_custom_transforms_are_refused_on_the_resident_path(tmp_path):
    """A custom albumentations pipeline would silently not run on the device: it is a one-line error instead."""
    root = write_tree(tmp_path / "t", {"a": 10, "b": 10}, size=(8, 8))
    with pytest.raises(ValueError, match="train_transforms is not applied on the device-resident path"):
        ImageFolderDataModule(str(root), device_resident=True, train_transforms=["HorizontalFlip"])
    with pytest.raises(ValueError, match="eval_transforms is not applied on the device-resident path"):
        ImageFolderDataModule(
            str(root), device_resident=True, eval_transforms=[{"name": "CenterCrop", "height": 6, "width": 6}]
        )
    dm = ImageFolderDataModule(str(root), batch_size=4, train_transforms=["HorizontalFlip"])
    dm.device_resident = True  # switched on after construction: refused when the loader is built
    with pytest.raises(ValueError, match="set device_resident: false"):
        dm.resident_loader("train")
    off = ImageFolderDataModule(str(root), batch_size=4, device_resident=True, train_transforms=[])
    assert off.device_augment() is None  # [] still means "no augmentation"


@pytest.mark.ddp
def test_weighted_sampler_shards_are_disjoint_and_equal_the_single_process_draw(tmp_path, torchrun):
    root = write_tree(tmp_path / "imb", {"a": 30, "b": 9, "c": 5}, size=(8, 8))
    out = tmp_path / "out"
    out.mkdir()
    proc = torchrun([str(REPO / "tests" / "ddp_scripts" / "issue3_data.py"), str(root), str(out)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = ImageFolderDataModule(str(root), batch_size=8, val_fraction=0.0, sampling="oversample", normalize="none")
    single.setup("fit")
    sampler = single.train_sampler(rank=0, world_size=1)
    assert sampler.total == 90  # 3 classes x 30
    for mode in ("dataloader", "resident"):
        r0, r1 = ranks[0][mode], ranks[1][mode]
        assert r0["world_size"] == 2 and r0["num_training_batches"] == 6  # 45 draws per rank / 8
        assert r0["stepping_batches"] == 12
        assert r0["sampler"] == "WeightedEpochSampler"
        for epoch in (0, 1):
            draw = torch.as_tensor(single.train_indices)[sampler.epoch_draw(epoch)].tolist()
            s0, s1 = r0["seen"][str(epoch)], r1["seen"][str(epoch)]
            assert s0 == draw[0::2] and s1 == draw[1::2]  # disjoint slices of the one draw ...
            assert sorted(s0 + s1) == sorted(draw)  # ... that together are the single-process epoch
        assert r0["seen"]["0"] != r0["seen"]["1"]  # set_epoch reaches the sampler
    assert ranks[0]["resident"]["loader"] == "DeviceResidentLoader"
