"""Every callback at once, under DDP (torchrun, 2 CPU processes) and ddp_spawn (2 CPU processes in pytest).

Each callback must run to the end and write its outputs on rank 0 only, and the ranks must agree. The
README's strategy table points here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
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

AGREE = [
    "optimizer_lr", "range_test_suggestion", "param_sum", "param_sq_sum", "num_hard", "hard_index_sum",
    "num_included", "val/acc", "train_clean/acc", "gap/acc", "mining/num_hard", "gap_history_len",
]  # fmt: skip


class RankAgreement(L.Callback):
    """At the end of fit every rank reports what it ended with (the LR its optimizer used, the range test's
    suggestion, a checksum of its weights, the mining selection, synced metrics); the rows are all-gathered
    and rank 0 writes them to ``path`` (one row per rank, in AGREE's order)."""

    def __init__(self, path: str):
        self.path = path

    def on_fit_end(self, trainer, pl_module):
        by_type = {type(c).__name__: c for c in trainer.callbacks}
        finder, mining, gap = (by_type.get(n) for n in ("LRRangeTest", "HardNegativeMining", "GapMonitor"))
        hard = getattr(mining, "hard", None)
        included = getattr(mining, "included", None)
        metrics = trainer.callback_metrics
        params = [p.detach().double() for p in pl_module.parameters()]
        row = [
            trainer.optimizers[0].param_groups[0]["lr"],
            (finder.results.get("suggestion") if finder is not None else None) or -1.0,
            float(sum(p.sum() for p in params)),
            float(sum((p * p).sum() for p in params)),
            float(hard.sum()) if hard is not None else -1.0,
            float(torch.nonzero(hard).sum()) if hard is not None else -1.0,
            float(included.sum()) if included is not None else -1.0,
            *(float(metrics[k]) if k in metrics else -1.0 for k in ("val/acc", "train_clean/acc", "gap/acc")),
            float(metrics["mining/num_hard"]) if "mining/num_hard" in metrics else -1.0,
            float(len(gap.history)) if gap is not None else -1.0,
        ]
        rows = trainer.strategy.all_gather(torch.tensor(row, dtype=torch.float64, device=pl_module.device))
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps(rows.reshape(trainer.world_size, -1).tolist()))


def assert_ranks_agree(path: Path) -> None:
    rows = json.loads(path.read_text())
    assert len(rows) == 2 and all(len(r) == len(AGREE) for r in rows)
    r0, r1 = (dict(zip(AGREE, r)) for r in rows)
    assert all(v != -1.0 and math.isfinite(v) for v in r0.values()), r0  # every value was there to compare
    assert r0["num_hard"] > 0 and r0["range_test_suggestion"] > 0 and r0["gap_history_len"] >= 3
    for key in AGREE:
        assert r0[key] == pytest.approx(r1[key], rel=1e-9, abs=1e-12), (key, r0[key], r1[key])


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
@pytest.mark.timeout(600)  # two processes, every callback: ~2-3 min on a loaded 2-core machine
def test_every_callback_under_torchrun_ddp(tmp_path):
    agree = tmp_path / "agree.json"
    proc = run_torchrun(
        [
            str(REPO / "tests" / "ddp_scripts" / "fit_ddp.py"), str(tmp_path / "out"),
            "--config", "lit_recipes/configs/digits_lenet.yaml", f"--trainer.callbacks={CALLBACKS}",
            f"--trainer.callbacks+={{class_path: test_all_callbacks_strategies.RankAgreement, init_args: {{path: {agree}}}}}",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.max_epochs=3",
            "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2",
            "--data.init_args.batch_size=32", f"--trainer.default_root_dir={tmp_path / 'run'}", "--test_after_fit=false",
        ],
        env={"PYTHONPATH": str(REPO / "tests")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_ranks_agree(agree)
    r0, r1 = (json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1))
    for key in ("val/acc", "train_clean/acc", "gap/acc", "test/acc"):
        assert r0["metrics"][key] == pytest.approx(r1["metrics"][key], abs=1e-6), key
    assert "perf/data_wait_frac" in r0["metrics"] and "mining/num_hard" in r0["metrics"]
    assert _outputs(tmp_path / "run") == dict.fromkeys(OUTPUTS, 1)  # rank 0 wrote each once
    lr = json.loads(next((tmp_path / "run").rglob("lr_find.json")).read_text())
    assert lr["suggestion"] is not None and lr["suggestion"] > 0


@pytest.mark.ddp
@pytest.mark.timeout(600)  # two processes, every callback: ~2-3 min on a loaded 2-core machine
def test_every_callback_under_ddp_spawn(trainer_kwargs, tmp_path):
    L.seed_everything(0)
    model = ClassifierModule("lenet5_bn", num_classes=10, in_channels=1, lr=0.05)
    callbacks = [
        LRRangeTest(num_steps=30),
        GapMonitor(subset_size=300, print_report=False),
        HardNegativeMining(every_n_epochs=1, verbose=False),
        DataLoadingMonitor(),
        ConfusionMatrix(),
        RankAgreement(str(tmp_path / "agree.json")),
    ]
    trainer = L.Trainer(**{**trainer_kwargs, "devices": 2, "max_epochs": 3}, strategy="ddp_spawn", callbacks=callbacks)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.world_size == 2
    metrics = trainer.callback_metrics
    assert "train_clean/acc" in metrics and "gap/acc" in metrics and "perf/samples_per_s" in metrics
    assert "mining/num_hard" in metrics
    assert _outputs(tmp_path) == dict.fromkeys(OUTPUTS, 1)
    assert_ranks_agree(tmp_path / "agree.json")
