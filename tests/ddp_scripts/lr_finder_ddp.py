"""LRRangeTest under DDP (2 CPU ranks, gloo): run by tests/test_lr_finder.py through torchrun.

Each rank writes ``OUT/rank<r>.json``: the callback's curve and suggestion, the rank-local losses
its module computed during the sweep, the LRs applied during training, and a checksum of the weights.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import lightning as L

from lit_recipes.callbacks import LRRangeTest
from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.module import ClassifierModule
from lit_recipes.schedules import OneCycle


class LocalLosses(ClassifierModule):
    """Records the rank-local loss of every ``training_loss`` call made during the sweep."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.local: list[float] = []
        self.sweeping = True

    def training_loss(self, batch):
        out = super().training_loss(batch)
        if self.sweeping:
            self.local.append(float(out[0].detach()))
        return out

    def on_train_start(self) -> None:
        self.sweeping = False


class AppliedLR(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def main(out: Path) -> None:
    L.seed_everything(0, verbose=False)
    finder = LRRangeTest(min_lr=1e-4, max_lr=100.0, num_steps=60)
    applied = AppliedLR()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
        callbacks=[finder, applied],
    )
    model = LocalLosses(model="lenet5_bn", num_classes=10, in_channels=1, lr=0.05, lr_scheduler=partial(OneCycle))
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    res = finder.results
    record = {
        "lrs": res["lrs"],
        "losses": res["losses"],
        "smoothed": res["smoothed"],
        "steps": res["steps"],
        "stop_reason": res["stop_reason"],
        "suggestion": res["suggestion"],
        "world_size": res["world_size"],
        "local": model.local,
        "module_lr": model.lr,
        "applied": applied.lrs,
        "checksum": float(sum(p.double().sum() for p in model.parameters())),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
