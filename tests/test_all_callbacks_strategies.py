"""Every callback at once, under DDP (torchrun, 2 CPU processes) and ddp_spawn (2 CPU processes in pytest).

Each callback must run to the end and write its outputs on rank 0 only, and the ranks must agree. The
README's strategy table points here.
"""

from __future__ import annotations

import json

import lightning as L
import pytest
from conftest import REPO, run_torchrun

from lit_recipes.callbacks import (
    ConfusionMatrix,
    DataLoadingMonitor,
    GapMonitor,
    HardNegativeMining,
    LRRangeTest,
)
from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.module import ClassifierModule

CALLBACKS = (
    "[{class_path: lit_recipes.callbacks.LRRangeTest, init_args: {num_steps: 30}},"
    " {class_path: lit_recipes.callbacks.GapMonitor, init_args: {subset_size: 300, print_report: false}},"
    " {class_path: lit_recipes.callbacks.HardNegativeMining, init_args: {every_n_epochs: 1, verbose: false}},"
    " {class_path: lit_recipes.callbacks.DataLoadingMonitor},"
    " {class_path: lit_recipes.callbacks.ConfusionMatrix}]"
)
OUTPUTS = ["lr_find.json", "lr_find.png", "curves.png", "diagnosis.json", "confusion_matrix_val.png",
           "hard_negative_mining/history.json"]  # fmt: skip


def _outputs(root):
    found = {}
    for name in OUTPUTS:
        hits = list(root.rglob(name))
        found[name] = len(hits)
    return found


@pytest.mark.ddp
def test_every_callback_under_torchrun_ddp(tmp_path):
    proc = run_torchrun(
        [
            str(REPO / "tests" / "ddp_scripts" / "fit_ddp.py"), str(tmp_path / "out"),
            "--config", "lit_recipes/configs/digits_lenet.yaml", f"--trainer.callbacks={CALLBACKS}",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.max_epochs=3",
            "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2",
            "--data.init_args.batch_size=32", f"--trainer.default_root_dir={tmp_path / 'run'}", "--test_after_fit=false",
        ]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1))
    for key in ("val/acc", "train_clean/acc", "gap/acc", "test/acc"):
        assert r0["metrics"][key] == pytest.approx(r1["metrics"][key], abs=1e-6), key
    assert "perf/data_wait_frac" in r0["metrics"] and "mining/num_hard" in r0["metrics"]
    assert _outputs(tmp_path / "run") == dict.fromkeys(OUTPUTS, 1)  # rank 0 wrote each once
    lr = json.loads(next((tmp_path / "run").rglob("lr_find.json")).read_text())
    assert lr["suggestion"] is not None and lr["suggestion"] > 0


@pytest.mark.ddp
def test_every_callback_under_ddp_spawn(trainer_kwargs, tmp_path):
    L.seed_everything(0)
    model = ClassifierModule("lenet5_bn", num_classes=10, in_channels=1, lr=0.05)
    callbacks = [
        LRRangeTest(num_steps=30),
        GapMonitor(subset_size=300, print_report=False),
        HardNegativeMining(every_n_epochs=1, verbose=False),
        DataLoadingMonitor(),
        ConfusionMatrix(),
    ]
    trainer = L.Trainer(**{**trainer_kwargs, "devices": 2, "max_epochs": 3}, strategy="ddp_spawn", callbacks=callbacks)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.world_size == 2
    metrics = trainer.callback_metrics
    assert "train_clean/acc" in metrics and "gap/acc" in metrics and "perf/samples_per_s" in metrics
    assert "mining/num_hard" in metrics
    assert _outputs(tmp_path) == dict.fromkeys(OUTPUTS, 1)
