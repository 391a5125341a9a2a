"""Run under torchrun (2 CPU processes): fit with ``sampling: oversample`` on the DataLoader path and on
the device-resident path, recording the batch ``indices`` each rank trains on, per epoch.

Usage: torchrun --standalone --nproc_per_node=2 tests/ddp_scripts/issue3_data.py ROOT OUT_DIR
Writes OUT_DIR/rank<R>.json: {"dataloader": {...}, "resident": {...}} with seen indices per epoch.
"""

import json
import sys

import lightning as L

from lit_recipes.datamodules import ImageFolderDataModule
from lit_recipes.module import ClassifierModule


class Record(L.Callback):
    def __init__(self):
        self.seen = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.setdefault(str(trainer.current_epoch), []).extend(batch[2].tolist())


def fit(root: str, out: str, resident: bool) -> dict:
    dm = ImageFolderDataModule(
        root, batch_size=8, val_fraction=0.0, sampling="oversample", normalize="none", device_resident=resident
    )
    model = ClassifierModule("lenet5", num_classes=3, in_channels=3, lr=0.01)
    rec = Record()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[rec],
        default_root_dir=out,
    )
    trainer.fit(model, datamodule=dm)
    return {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "seen": rec.seen,
        "num_training_batches": trainer.num_training_batches,
        "stepping_batches": trainer.estimated_stepping_batches,
        "loader": type(trainer.train_dataloader).__name__,
        "sampler": type(getattr(trainer.train_dataloader, "sampler", None)).__name__,
    }


if __name__ == "__main__":
    root, out = sys.argv[1], sys.argv[2]
    result = {"dataloader": fit(root, out, False), "resident": fit(root, out, True)}
    with open(f"{out}/rank{result['dataloader']['rank']}.json", "w") as fh:
        json.dump(result, fh)
