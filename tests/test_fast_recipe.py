"""The fast CIFAR-10 recipe (issue 8) parses, and trains on the CPU on a small JPEG subset."""

from __future__ import annotations

import pytest
import torch

from lit_recipes.cli import build_cli


def test_cifar10_fast_recipe_runs_on_cpu(cifar_jpeg_root, tmp_path):
    cli = build_cli(
        [
            "--config", "lit_recipes/configs/cifar10_fast.yaml",
            f"--data.init_args.root={cifar_jpeg_root}", "--data.init_args.batch_size=64",
            "--trainer.precision=bf16-mixed", "--trainer.accelerator=cpu", "--trainer.max_epochs=1",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.callbacks=[]", "--test_after_fit=false",
        ]
    )  # fmt: skip
    m = cli.model
    assert (m.model_name, m.tta_flip, m.use_channels_last, m.label_smoothing) == ("resnet9", True, True, 0.2)
    assert cli.datamodule.device_resident
    cli.trainer.fit(m, datamodule=cli.datamodule)
    sched = cli.trainer.lr_scheduler_configs[0].scheduler
    assert type(sched).__name__ == "OneCycle" and sched.max_lrs[0] == m.lr
    assert cli.trainer.global_step == 6  # 360 training images / 64, rounded up
    result = cli.trainer.test(m, datamodule=cli.datamodule, verbose=False)[0]
    assert 0.0 <= result["test/acc"] <= 1.0 and result["test/loss"] > 0


def test_cifar10_fast_recipe_keeps_per_step_syncs_off(cifar_jpeg_root, tmp_path):
    """On a GPU every progress-bar refresh and every measured data-monitor step synchronises the device;
    the recipe refreshes / measures one step in ten."""
    cli = build_cli(
        [
            "--config", "lit_recipes/configs/cifar10_fast.yaml", f"--data.init_args.root={cifar_jpeg_root}",
            "--trainer.accelerator=cpu", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
        ]
    )  # fmt: skip
    assert cli.trainer.progress_bar_callback.refresh_rate == 10
    monitor = next(c for c in cli.trainer.callbacks if type(c).__name__ == "DataLoadingMonitor")
    assert monitor.every_n_steps == 10


@pytest.mark.gpu
def test_cifar10_fast_recipe_on_gpu_with_compile(cifar_jpeg_root, tmp_path):
    """The GPU path as shipped: bf16 autocast, channels_last, torch.compile, the data resident on the GPU,
    the range test and the data monitor (sampled) on; `make bench-gpu` runs it."""
    cli = build_cli(
        [
            "--config", "lit_recipes/configs/cifar10_fast.yaml",
            f"--data.init_args.root={cifar_jpeg_root}", "--data.init_args.batch_size=64",
            "--trainer.accelerator=cuda", "--trainer.max_epochs=2", "--model.init_args.compile=true",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
        ]
    )  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    loader = cli.trainer.train_dataloader
    assert type(loader).__name__ == "DeviceResidentLoader" and loader.device.type == "cuda"
    assert cli.model._compiled is not None and cli.trainer.precision == "bf16-mixed"
    conv = next(m for m in cli.model.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    finder = next(c for c in cli.trainer.callbacks if type(c).__name__ == "LRRangeTest")
    assert finder.results["steps"] > 0 and cli.model.lr > 0
    monitor = next(c for c in cli.trainer.callbacks if type(c).__name__ == "DataLoadingMonitor")
    assert monitor.every_n_steps == 10 and monitor.summary["steps"] >= 1
    assert cli.trainer.progress_bar_callback.refresh_rate == 10
    result = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert 0.0 < result["test/acc"] <= 1.0 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
