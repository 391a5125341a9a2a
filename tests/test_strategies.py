"""Strategies: ddp_spawn with 2 CPU processes inside pytest; FSDP where Lightning supports it (GPU only)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.module import ClassifierModule


@pytest.mark.ddp
def test_ddp_spawn_two_cpu_processes(trainer_kwargs):
    L.seed_everything(0)
    model = ClassifierModule("lenet5_bn", num_classes=10, in_channels=1, lr=0.05)
    trainer = L.Trainer(**{**trainer_kwargs, "devices": 2, "max_epochs": 4}, strategy="ddp_spawn")
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.world_size == 2
    # callback metrics come back from rank 0 of the spawned processes, synced across ranks
    assert trainer.callback_metrics["val/acc"] > 0.75
    # and so do the trained weights: the parent's model predicts well
    dm = DigitsDataModule(batch_size=256)
    dm.setup("test")
    x, y, _ = next(iter(dm.test_dataloader()))
    acc = (model.eval()(x).argmax(-1) == y).float().mean().item()
    assert acc > 0.75


@pytest.mark.gpu
def test_fsdp_on_gpu(trainer_kwargs):
    n = torch.cuda.device_count()
    model = ClassifierModule("cifar_resnet20", num_classes=10, in_channels=1, lr=0.05)
    kwargs = {**trainer_kwargs, "accelerator": "cuda", "devices": min(n, 2), "max_epochs": 2}
    trainer = L.Trainer(**kwargs, strategy="fsdp")
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
    assert trainer.callback_metrics["val/acc"] > 0.5


def test_fsdp_on_cpu_is_refused_by_lightning(trainer_kwargs):
    """Documented in the README's strategy table: Lightning's FSDP needs a GPU."""
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        L.Trainer(**{**trainer_kwargs, "devices": 2}, strategy="fsdp")
