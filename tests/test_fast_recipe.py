"""The fast CIFAR-10 recipe (issue 8) parses, and trains on the CPU on a small JPEG subset."""

from __future__ import annotations

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
