"""HardNegativeMining under ``torchrun --nproc_per_node=2`` (CPU, gloo, strategy=ddp).

Each rank writes ``rank<r>.json`` into ``OUT_DIR`` (argv[1]): the hash of the sampling weights it
ended with, the pool shard it scored, the candidates, and the pool indices of its training batches
per epoch. tests/test_hard_negative.py::test_ddp_identical_weights_disjoint_shards checks them.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback

from lit_recipes.callbacks import HardNegativeMining
from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.module import ClassifierModule


class Recorder(Callback):
    def __init__(self) -> None:
        self.indices: dict[int, list[int]] = {}
        self.weight_hash: dict[int, str | None] = {}
        self.weights_epoch1: list[float] | None = None

    def on_train_epoch_start(self, trainer, pl_module):
        w = trainer.datamodule.sample_weights
        self.weight_hash[trainer.current_epoch] = None if w is None else digest(w)
        if trainer.current_epoch == 1:
            self.weights_epoch1 = w.tolist()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.indices.setdefault(trainer.current_epoch, []).extend(batch[2].tolist())


def digest(w) -> str:
    return hashlib.sha256(np.ascontiguousarray(w.numpy()).tobytes()).hexdigest()


def main(out_dir: str) -> None:
    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=32)
    mining = HardNegativeMining(every_n_epochs=1, boost=3.0, top_k=4, verbose=False)
    rec = Recorder()
    module = ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=0.05)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out_dir,
        callbacks=[rec, mining],
    )
    trainer.fit(module, datamodule=dm)
    result = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "final_weights": digest(dm.sample_weights),
        "mining_weights": digest(mining.weights()),
        "epoch_weights": rec.weight_hash,
        "scored": mining.scored_indices.tolist(),
        "candidates": mining.candidates(dm).tolist(),
        "train_indices": np.asarray(dm.train_indices).tolist(),
        "seed": dm.seed,
        "batches": rec.indices,
        "num_hard": [h["num_hard"] for h in mining.history],
        "weights_epoch1": rec.weights_epoch1,
    }
    Path(out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
