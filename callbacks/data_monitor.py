r"""
DataLoadingMonitor
==================

Is the model waiting for data? Measures, per training step, the time spent waiting for the batch
(from the end of the previous step to the start of this one: fetching, collating, the host-to-device
copy) against the time computing (forward, backward, optimizer step), and logs

* ``perf/data_wait_frac``: wait / (wait + compute) over the last ``window`` steps;
* ``perf/samples_per_s``: samples of this process per second over the same window.

When loading dominates (``data_wait_frac > threshold`` after ``warmup_steps``), it warns once, on
rank zero, with a concrete suggestion (more workers, pinned memory, the device-resident path).
Validation runs are excluded from the wait. On CUDA the device is synchronised at both ends of the
step (``cuda_sync``), so the compute time is the real one, not the launch time.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lit_recipes.callbacks.keyed_state import argument_state_key, load_unkeyed_state


class DataLoadingMonitor(Callback):
    r"""Log the share of each training step spent waiting for data, and warn when it dominates.

    Args:
        threshold: warn when the windowed wait fraction exceeds this (0 < threshold < 1).
        window: steps the logged figures are averaged over.
        warmup_steps: steps at the start of each epoch left out (worker start-up, first batch).
        cuda_sync: synchronise CUDA at the step boundaries for honest timings.
        every_n_steps: measure one step in ``n`` (after the warm-up). On CUDA each measured step
            synchronises the device twice, which stalls the host's queueing of kernels ahead of the
            GPU: ``every_n_steps: 10`` keeps the figures and removes ~90 % of that cost. The logged
            values are the latest window's, on every step.

    Example::

        from lightning.pytorch import Trainer
        from lit_recipes.callbacks.data_monitor import DataLoadingMonitor

        trainer = Trainer(callbacks=[DataLoadingMonitor(threshold=0.5)])

    After a run, ``monitor.summary`` holds ``{"data_wait_frac", "samples_per_s", "steps"}`` of the
    whole fit (warm-up steps excluded).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        window: int = 20,
        warmup_steps: int = 2,
        cuda_sync: bool = True,
        every_n_steps: int = 1,
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"DataLoadingMonitor: every_n_steps must be >= 1, got {every_n_steps}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"DataLoadingMonitor: threshold must be in (0, 1), got {threshold}")
        if window < 1:
            raise ValueError(f"DataLoadingMonitor: window must be >= 1, got {window}")
        if warmup_steps < 0:
            raise ValueError(f"DataLoadingMonitor: warmup_steps must be >= 0, got {warmup_steps}")
        self.threshold = threshold
        self.window = window
        self.warmup_steps = warmup_steps
        self.cuda_sync = cuda_sync
        self.every_n_steps = every_n_steps
        self._window = (0.0, 0.0)
        self.warned = False
        self._recent: deque[tuple[float, float, int]] = deque(maxlen=window)
        self._totals = [0.0, 0.0, 0]  # wait, compute, samples (after warm-up)
        self._steps = 0
        self._last_end: float | None = None
        self._start: float | None = None

    def _now(self, pl_module: L.LightningModule) -> float:
        if self.cuda_sync and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    @property
    def summary(self) -> dict[str, float]:
        """Wait fraction and samples/s over every measured (post-warm-up) step so far."""
        wait, compute, samples = self._totals
        total = wait + compute
        return {
            "data_wait_frac": wait / total if total > 0 else float("nan"),
            "samples_per_s": samples / total if total > 0 else float("nan"),
            "steps": self._steps,
        }

    def _measured(self, batch_idx: int) -> bool:
        return batch_idx >= self.warmup_steps and (batch_idx - self.warmup_steps) % self.every_n_steps == 0

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = self._now(pl_module) if self._measured(0) else None

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = self._now(pl_module) if self._measured(batch_idx) and self._last_end is not None else None

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        end = None
        if self._start is not None and self._last_end is not None:
            end = self._now(pl_module)
            self._record(self._start - self._last_end, end - self._start, _batch_size(batch), trainer)
        self._start = None
        # the wait of the next step runs from the end of this one: only then is a (synchronising) clock read needed
        self._last_end = (end or self._now(pl_module)) if self._measured(batch_idx + 1) else None
        if self._recent:
            pl_module.log("perf/data_wait_frac", self._window[0], on_step=True, on_epoch=False)
            pl_module.log("perf/samples_per_s", self._window[1], on_step=True, on_epoch=False)

    def _record(self, wait: float, compute: float, samples: int, trainer: L.Trainer) -> None:
        wait = max(wait, 0.0)
        self._recent.append((wait, compute, samples))
        self._totals[0] += wait
        self._totals[1] += compute
        self._totals[2] += samples
        self._steps += 1
        w = sum(r[0] for r in self._recent)
        c = sum(r[1] for r in self._recent)
        n = sum(r[2] for r in self._recent)
        frac = w / (w + c) if w + c > 0 else 0.0
        rate = n / (w + c) if w + c > 0 else 0.0
        self._window = (frac, rate)
        if not self.warned and len(self._recent) >= min(self.window, 5) and frac > self.threshold:
            self.warned = True
            rank_zero_warn(self._advice(trainer, frac, rate))

    def _advice(self, trainer: L.Trainer, frac: float, rate: float) -> str:
        loader = trainer.train_dataloader
        workers = getattr(loader, "num_workers", None)
        resident = type(loader).__name__ == "DeviceResidentLoader"
        tips = []
        if resident:
            tips.append("a larger batch_size (the device-resident path is already in use)")
        else:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            if workers is not None and workers < cpus:
                tips.append(f"more DataLoader workers (num_workers: {min(cpus, max(2, 2 * workers))}, now {workers})")
            if trainer.strategy.root_device.type == "cuda" and not getattr(loader, "pin_memory", False):
                tips.append("pin_memory: true")
            tips.append("device_resident: true (decode once, augment on the device) if the data set fits in memory")
            tips.append("a lighter train_transforms pipeline or a smaller image_size")
        return (
            f"DataLoadingMonitor: waiting for data takes {frac:.0%} of each training step "
            f"({rate:.0f} samples/s per process); the model is starved by the loader. Try: " + "; ".join(tips) + "."
        )

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_end is not None:
            self._last_end = self._now(pl_module)  # validation time is not data wait

    @property
    @override
    def state_key(self) -> str:
        """``DataLoadingMonitor{'threshold': t}``: monitors with other thresholds warn separately."""
        return argument_state_key(self, threshold=self.threshold)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"warned": self.warned}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.warned = bool(state_dict.get("warned", False))

    @override
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        load_unkeyed_state(self, checkpoint)  # a checkpoint from before the state key named the threshold


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, list | tuple) else batch
    if isinstance(first, torch.Tensor) and first.ndim > 0:
        return int(first.shape[0])
    try:
        return len(first)
    except TypeError:
        return 1


__all__ = ["DataLoadingMonitor"]
