"""The fast CIFAR-10 recipe (issue 8) parses, and trains on the CPU on a small JPEG subset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import cifar_subset

from lit_recipes.commands.fit import build_cli

CONFIG = "lit_recipes/configs/cifar10_fast.yaml"
# the recipe's own callbacks, with a 10-step range test (the recipe's 100 steps take minutes on a CPU)
CALLBACKS = (
    "[{class_path: lit_recipes.callbacks.LRRangeTest, init_args: {min_lr: 1.0e-5, num_steps: 10, plot: false}},"
    " {class_path: lit_recipes.callbacks.DataLoadingMonitor, init_args: {every_n_steps: 10}}]"
)


def test_cifar10_fast_recipe_runs_on_cpu(tmp_path):
    """The recipe as shipped (range test first, then 1cycle at its suggestion, flip TTA at test time) on two
    classes of real JPEGs: the range test's suggestion is the cycle's peak, and test/acc is the flip-averaged
    prediction's accuracy, recounted here."""
    shipped = yaml.safe_load(Path(CONFIG).read_text())["trainer"]["callbacks"]
    assert [c["class_path"].rsplit(".", 1)[1] for c in shipped] == ["LRRangeTest", "DataLoadingMonitor"]
    root = cifar_subset(20, 10, classes=["airplane", "frog"])
    cli = build_cli(
        [
            "--config", CONFIG, f"--data.init_args.root={root}", "--data.init_args.batch_size=36",
            "--trainer.precision=bf16-mixed", "--trainer.accelerator=cpu", "--trainer.max_epochs=1",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.callbacks={CALLBACKS}", "--test_after_fit=false",
        ]
    )  # fmt: skip
    m = cli.model
    assert (m.model_name, m.tta_flip, m.use_channels_last, m.label_smoothing) == ("resnet9", True, True, 0.2)
    assert cli.datamodule.device_resident and m.num_classes == 2
    cli.trainer.fit(m, datamodule=cli.datamodule)
    finder = next(c for c in cli.trainer.callbacks if type(c).__name__ == "LRRangeTest")
    assert finder.results["steps"] == 10 and finder.results["suggestion"] is not None
    assert m.lr == finder.results["suggestion"] != 0.4  # the config's 0.4 was replaced by the suggestion
    sched = cli.trainer.lr_scheduler_configs[0].scheduler
    assert type(sched).__name__ == "OneCycle" and sched.max_lrs[0] == m.lr
    assert cli.trainer.global_step == 1  # 36 training images (40 less the 10 % validation split), batch 36

    result = cli.trainer.test(m, datamodule=cli.datamodule, verbose=False)[0]
    m.eval()
    hits, n = 0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x, y, *_ in cli.datamodule.test_dataloader():
            logits = (m(x) + m(torch.flip(x, dims=[-1]))) / 2
            hits, n = hits + int((logits.argmax(-1) == y).sum()), n + len(y)
    assert n == 20
    assert result["test/acc"] == pytest.approx(hits / n, abs=1.5 / n)  # bf16 may flip one near-tie, not two
    assert torch.isfinite(torch.tensor(result["test/loss"])) and result["test/loss"] > 0


def test_cifar10_fast_recipe_keeps_per_step_syncs_off(cifar_jpeg_root, tmp_path):
    """On a GPU every progress-bar refresh and every measured data-monitor step synchronises the device;
    the recipe refreshes / measures one step in ten."""
    cli = build_cli(
        [
            "--config", CONFIG, f"--data.init_args.root={cifar_jpeg_root}",
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
            "--config", CONFIG,
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
