"""DataLoadingMonitor on real fits (a deliberately slow loader vs the device-resident path), and the
``lit-recipes stats`` / ``bench-data`` commands."""

from __future__ import annotations

import json
import time
import warnings

import lightning as L
import pytest

from lit_recipes.callbacks.data_monitor import DataLoadingMonitor
from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.datamodules.sources import ToTensorNormalize
from lit_recipes.module import ClassifierModule

SLEEP_S = 0.03
"""Per image: 32 x 30 ms = 0.96 s per batch against ~10 ms of LeNet-5 compute, so the loader dominates
even when an oversubscribed CPU slows the step 30-fold (at 10 ms a loaded run measured 0.49)."""


class SlowDigits(DigitsDataModule):
    """Digits whose training transform sleeps ``SLEEP_S`` per image: a loader that starves the model."""

    def build_train_transform(self):
        tf = ToTensorNormalize(self.mean, self.std)

        def slow(image):
            time.sleep(SLEEP_S)
            return tf(image)

        return slow


def _fit(dm, trainer_kwargs, monitor):
    model = ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=0.05)
    trainer = L.Trainer(**{**trainer_kwargs, "limit_train_batches": 12, "limit_val_batches": 2}, callbacks=[monitor])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=dm)
    return trainer, [str(w.message) for w in caught if "DataLoadingMonitor" in str(w.message)]


def test_slow_loader_is_detected_and_warned_once(trainer_kwargs):
    monitor = DataLoadingMonitor(threshold=0.5, window=5, warmup_steps=1)
    trainer, msgs = _fit(SlowDigits(batch_size=32), trainer_kwargs, monitor)
    assert len(msgs) == 1, msgs
    assert "more DataLoader workers (num_workers" in msgs[0] and "device_resident: true" in msgs[0]
    assert monitor.summary["data_wait_frac"] > 0.5 and monitor.summary["steps"] == 11
    assert trainer.callback_metrics["perf/data_wait_frac"] > 0.5
    # 32 images x SLEEP_S of sleeping per batch bounds the throughput
    assert monitor.summary["samples_per_s"] < 1 / SLEEP_S
    assert monitor.state_dict() == {"warned": True}


def test_device_resident_loader_does_not_starve_the_model(trainer_kwargs):
    dm = DigitsDataModule(batch_size=32)
    dm.device_resident = True
    monitor = DataLoadingMonitor(threshold=0.5, window=5, warmup_steps=1)
    trainer, msgs = _fit(dm, trainer_kwargs, monitor)
    assert msgs == []
    assert type(trainer.train_dataloader).__name__ == "DeviceResidentLoader"
    assert monitor.summary["data_wait_frac"] < 0.5 and monitor.summary["samples_per_s"] > 0


def test_every_n_steps_measures_and_reads_the_clock_only_on_sampled_steps(trainer_kwargs):
    """every_n_steps: 3 measures batches 1, 4, 7, 10 of 12 (warm-up 1); the clock (a CUDA sync on a GPU)
    is read three times per measured step (the previous step's end, its start and its end), not on every step."""
    dm = DigitsDataModule(batch_size=32)
    dm.device_resident = True
    monitor = DataLoadingMonitor(window=5, warmup_steps=1, every_n_steps=3)
    reads = []
    real_now = monitor._now
    monitor._now = lambda pl_module: reads.append(1) or real_now(pl_module)
    trainer, msgs = _fit(dm, trainer_kwargs, monitor)
    assert monitor.summary["steps"] == 4
    assert len(reads) == 4 * 3
    assert 0 <= trainer.callback_metrics["perf/data_wait_frac"] < 1
    assert trainer.callback_metrics["perf/samples_per_s"] > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="threshold must be in \\(0, 1\\)"):
        DataLoadingMonitor(threshold=1.5)
    with pytest.raises(ValueError, match="window must be >= 1"):
        DataLoadingMonitor(window=0)
    with pytest.raises(ValueError, match="every_n_steps must be >= 1, got 0"):
        DataLoadingMonitor(every_n_steps=0)


def test_two_monitors_keep_separate_state(tmp_path):
    strict, loose = DataLoadingMonitor(threshold=0.3), DataLoadingMonitor(threshold=0.6)
    assert strict.state_key == "DataLoadingMonitor{'threshold': 0.3}" != loose.state_key
    # the Trainer refuses two stateful callbacks with one key; these two are accepted
    L.Trainer(callbacks=[strict, loose], logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    strict.warned = True
    saved = {m.state_key: m.state_dict() for m in (strict, loose)}  # as Lightning writes checkpoint["callbacks"]
    strict2, loose2 = DataLoadingMonitor(threshold=0.3), DataLoadingMonitor(threshold=0.6)
    for m in (strict2, loose2):
        m.load_state_dict(saved[m.state_key])
    assert strict2.warned and not loose2.warned
    old = DataLoadingMonitor(threshold=0.3)  # a checkpoint keyed by the bare class name still loads
    old.on_load_checkpoint(None, None, {"callbacks": {"DataLoadingMonitor": {"warned": True}}})
    assert old.warned


def test_stats_and_bench_data_commands(cifar_jpeg_root, tmp_path, cli_runner):
    proc = cli_runner("stats", "--data", str(cifar_jpeg_root), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert info["classes"][0] == "airplane" and info["train_counts"] == [36] * 10 and info["test"] == 100
    assert info["image_shape"] == [32, 32, 3] and all(0.3 < m < 0.6 for m in info["mean"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"""
model:
  class_path: lit_recipes.module.ClassifierModule
  init_args: {{model: cifar_resnet20, lr: 0.1}}
data:
  class_path: lit_recipes.datamodules.CIFAR10DataModule
  init_args: {{root: {cifar_jpeg_root}, batch_size: 32}}
"""
    )
    proc = cli_runner("bench-data", "--config", str(cfg), "--batches", "3", "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert res["loader_images_per_s"] > 0 and res["train_step_images_per_s"] > 0
    assert res["bottleneck"] in ("data loading", "training step") and res["loader"] == "DataLoader"
    bad = cli_runner("stats", "--data", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "data not found" in bad.stderr and str(tmp_path / "nope") in bad.stderr
