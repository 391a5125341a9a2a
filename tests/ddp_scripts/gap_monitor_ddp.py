"""GapMonitor under DDP (2 CPU ranks, gloo): run by tests/test_gap_monitor.py through torchrun.

Each rank writes its monitor history to ``OUT/rank<r>.json``; rank 0 also scores the whole subset
in one process with the final weights, for comparison with the all-reduced numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from lit_recipes.callbacks import GapMonitor
from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.module import ClassifierModule


def main(out: Path) -> None:
    L.seed_everything(0, verbose=False)
    monitor = GapMonitor(subset_size=300)
    dm = DigitsDataModule(batch_size=32)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        limit_train_batches=8,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
        callbacks=[monitor],
    )
    model = ClassifierModule("lenet5_bn", num_classes=10, in_channels=1, lr=0.05)
    trainer.fit(model, datamodule=dm)
    record: dict = {"history": monitor.history}
    shards = trainer.strategy.all_gather(torch.tensor(len(monitor._loader.dataset)))
    record["shard_sizes"] = [int(v) for v in shards]
    if trainer.is_global_zero:
        model.eval()
        with torch.no_grad():
            outs = [(model(x), y) for x, y, _ in dm.eval_dataloader("train", indices=monitor.subset)]
        logits = torch.cat([o[0] for o in outs])
        targets = torch.cat([o[1] for o in outs])
        record["single_process_acc"] = float((logits.argmax(-1) == targets).double().mean())
        record["single_process_loss"] = float(F.cross_entropy(logits.double(), targets))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
    # rank 0 scores alone above: let both ranks finish and tear gloo down before the interpreter exits
    # (a rank leaving with the process group alive could abort with "terminate called without an
    # active exception" while the other rank still worked)
    trainer.strategy.barrier()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
