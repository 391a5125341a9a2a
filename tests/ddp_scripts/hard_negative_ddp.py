"""HardNegativeMining under ``torchrun --nproc_per_node=2`` (CPU, gloo, strategy=ddp): a one-vs-rest
task with a budget of negatives, selection by positive score among the negatives only.

Each rank writes ``rank<r>.json`` into ``OUT_DIR`` (argv[1]): what it selected each round, hashes of
the sampler weights per epoch, the shard it scored, the negatives and positives of the training
split, and the pool indices of its training batches per epoch. Then a second fit in the same
processes scores a random ``candidates_per_round`` sample each round and writes
``rank<r>_sampled.json`` (also each round's candidates and each round's shard), and a third draws
the hard negatives among them at random, proportionally to the score (``rank<r>_drawn.json``).
tests/test_hard_negative.py::test_ddp_same_selection_negatives_only_disjoint_shards checks them.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from lit_recipes.callbacks import HardNegativeMining
from lit_recipes.datamodules import DigitsDataModule, OneVsRestDataModule
from lit_recipes.module import ClassifierModule


class Recorder(Callback):
    def __init__(self, mining: HardNegativeMining) -> None:
        self.mining = mining
        self.indices: dict[int, list[int]] = {}
        self.weight_hash: dict[int, str | None] = {}
        self.hard: list[list[int]] = []
        self.shards: list[list[int]] = []
        self.positive_weights: set[float] = set()

    def on_train_epoch_start(self, trainer, pl_module):
        w = trainer.datamodule.sample_weights
        self.weight_hash[trainer.current_epoch] = None if w is None else digest(w)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.indices.setdefault(trainer.current_epoch, []).extend(batch[2].tolist())

    def on_train_epoch_end(self, trainer, pl_module):  # runs after the mining callback's
        self.hard.append(torch.nonzero(self.mining.hard).flatten().tolist())
        self.shards.append(self.mining.scored_indices.tolist())


def digest(w) -> str:
    return hashlib.sha256(np.ascontiguousarray(w.numpy()).tobytes()).hexdigest()


def fit(out_dir: str, name: str, candidates: int | None, draw: str = "top") -> None:
    L.seed_everything(0, verbose=False)
    dm = OneVsRestDataModule(DigitsDataModule(batch_size=16), positive="8")
    mining = HardNegativeMining(
        negative_classes=["rest"],
        negatives_ratio=1.0,
        top_k=4,
        verbose=False,
        candidates_per_round=candidates,
        draw=draw,
    )
    rec = Recorder(mining)
    module = ClassifierModule("lenet5_bn", num_classes=2, in_channels=1, lr=0.05)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=3,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(Path(out_dir, name)),
        callbacks=[mining, rec],
    )
    trainer.fit(module, datamodule=dm)
    train = np.asarray(dm.train_indices)
    targets = np.asarray(dm.train_targets)
    pos = train[targets[train] == 1]
    w = dm.sample_weights
    result = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "final_weights": digest(w),
        "epoch_weights": rec.weight_hash,
        "hard": rec.hard[:2],
        "scored": mining.scored_indices.tolist(),
        "candidates": mining.candidates(dm).tolist(),
        "round_candidates": [mining.candidates(dm, r).tolist() for r in range(mining.round)],
        "shards": rec.shards,
        "negatives": train[targets[train] == 0].tolist(),
        "positives": pos.tolist(),
        "positive_weights": sorted(set(w[torch.as_tensor(pos)].tolist())),
        "epoch_pad": dm.sample_epoch_size % 2,
        "batches": rec.indices,
    }
    Path(out_dir, f"rank{trainer.global_rank}{name}.json").write_text(json.dumps(result))


def main(out_dir: str) -> None:
    fit(out_dir, "", None)
    fit(out_dir, "_sampled", 300)
    fit(out_dir, "_drawn", 300, draw="proportional")


if __name__ == "__main__":
    main(sys.argv[1])
