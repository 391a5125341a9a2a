"""Cost of GapMonitor's clean-train measurement per validation, relative to one training epoch.

Digits, LeNet-5 BN, batch 64, CPU, one process: for each subset size, a short fit with the
monitor; the time of each ``measure()`` call and of each training epoch (batches only, validation
excluded) is recorded, and the median ratio printed. Run: ``.venv/bin/python benchmarks/bench_gap_monitor.py``.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import subprocess
import tempfile
import time
import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lit_recipes.callbacks import GapMonitor
from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.module import ClassifierModule


class EpochTimer(Callback):
    """Wall time of the training batches of each epoch (validation excluded)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0
        self._val = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0, self._val = time.perf_counter(), 0.0

    def on_validation_start(self, trainer, pl_module):
        self._v0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        self._val += time.perf_counter() - self._v0

    def on_train_epoch_end(self, trainer, pl_module):
        self.times.append(time.perf_counter() - self._t0 - self._val)


class TimedGapMonitor(GapMonitor):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.measure_times: list[float] = []

    def measure(self, trainer, pl_module):
        t0 = time.perf_counter()
        out = super().measure(trainer, pl_module)
        self.measure_times.append(time.perf_counter() - t0)
        return out


def run(subset_size: int, epochs: int, seed: int) -> tuple[float, float, int]:
    L.seed_everything(seed, verbose=False)
    monitor, timer = (
        TimedGapMonitor(subset_size=subset_size, plot_every_n_epochs=10_000, print_report=False),
        EpochTimer(),
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
            callbacks=[monitor, timer],
        )
        trainer.fit(
            ClassifierModule("lenet5_bn", num_classes=10, in_channels=1, lr=0.05), datamodule=DigitsDataModule()
        )
    # the first epoch warms up (allocations, loaders): drop it
    return statistics.median(monitor.measure_times[1:]), statistics.median(timer.times[1:]), len(monitor.subset)


def sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 100_000])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        f"# bench_gap_monitor: torch {torch.__version__}, lightning {L.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), git {sha}"
    )
    print("subset | scored | measure ms (mean ± std over seeds) | train epoch ms | measure / epoch")
    for size in args.sizes:
        rows = [run(size, args.epochs, seed) for seed in range(args.seeds)]
        m = [r[0] * 1e3 for r in rows]
        e = [r[1] * 1e3 for r in rows]
        ratio = [a / b for a, b in zip(m, e)]
        print(
            f"{size:>6} | {rows[0][2]:>6} | {statistics.mean(m):7.1f} ± {sd(m):5.1f} | {statistics.mean(e):7.1f} ± {sd(e):5.1f} | "
            f"{statistics.mean(ratio):.3f} ± {sd(ratio):.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
