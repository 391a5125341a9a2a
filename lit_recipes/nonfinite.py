"""Watching the training loss for nan/inf without a device sync per step (``ClassifierModule(on_nonfinite=...)``).

Reading a GPU tensor's value waits for the device (a sync per step would cost throughput), so each step
only keeps a reference to its (detached) loss: no kernel, no sync. Every 256 steps the kept losses are
folded on the device into "any non-finite, the first one, its value" (a few kernels, no sync), and the
device is read back once, only where a value is read anyway: the steps whose loss is logged or shown
(``check``: the logging/progress-bar cadence and the epoch's last batch, the same steps on every DDP
rank). On the CPU in one process the value is read at every step instead (a plain ``.item()``, no device
to wait for: about 5 us a step). Stopping from the step itself means no optimizer step follows the check;
a non-finite loss between two checks on a GPU may update the weights for those few steps, but no
checkpoint is written from them (``ClassifierModule.on_save_checkpoint`` refuses non-finite weights).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

FOLD_EVERY = 256


class NonFiniteWatch:
    """The first non-finite training loss of a run: the losses since the last check ``(step, tensor)``
    (``pending``), folded on the device every :data:`FOLD_EVERY` steps (``chunks``), and what a check
    read back (``found``: ``(step, value)``)."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.chunks: list[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.found: tuple[int, float] | None = None
        self.warned = False

    def watch(self, trainer: Any, loss: torch.Tensor, check: bool, mode: str) -> None:
        """Record this step's loss; act on a non-finite one (``mode``: ``"stop"`` or ``"warn"``) at a
        check, or at once on the CPU in one process."""
        if self.warned:
            return  # on_nonfinite: warn has said it once
        step = int(trainer.global_step) if trainer is not None else 0
        if loss.device.type == "cpu" and (trainer is None or trainer.world_size == 1):
            if self.found is None:
                value = float(loss.item())
                if math.isfinite(value):
                    return
                self.found = (step, value)
            self.act(trainer, mode)
            return
        self.pending.append((step, loss))  # a reference: no device work per step
        if len(self.pending) >= FOLD_EVERY:
            self._fold()
        if check:  # every rank reaches the same checks (DDP: seen() gathers)
            self.act(trainer, mode)

    def _fold(self) -> None:
        """The pending losses -> (their steps, any non-finite, index of the first, its value), on the
        device: a handful of kernels per 256 steps, no sync."""
        if not self.pending:
            return
        losses = torch.stack([loss.float().reshape(()) for _, loss in self.pending])
        bad = ~torch.isfinite(losses)
        first = bad.int().argmax()
        steps = [s for s, _ in self.pending]
        self.chunks.append((steps, bad.any(), first, losses[first]))
        self.pending = []

    def _local(self) -> tuple[int, float] | None:
        """This process's first non-finite loss ``(step, value)``: reads the device back once."""
        if self.found is None:
            self._fold()
            if self.chunks:
                flags = torch.stack([c[1] for c in self.chunks]).cpu().tolist()
                for (steps, _, first, value), flag in zip(self.chunks, flags, strict=True):
                    if flag:
                        self.found = (steps[int(first)], float(value))
                        break
                self.chunks = []
        return self.found

    def seen(self, trainer: Any) -> tuple[int, float] | None:
        """``(step, value)`` of the first non-finite loss, or ``None``. Under DDP the ranks' records are
        gathered (every rank checks at the same steps), so all ranks stop together: a rank stopping
        alone would leave the others waiting in the next gradient all-reduce."""
        local = self._local()
        if trainer is not None and trainer.world_size > 1:
            row = [float(local[0]), local[1]] if local is not None else [-1.0, 0.0]
            mine = torch.tensor(row, dtype=torch.float64, device=trainer.strategy.root_device)
            rows = trainer.strategy.all_gather(mine).reshape(-1, 2).cpu().tolist()
            seen = [(int(s), float(v)) for s, v in rows if s >= 0]
            return min(seen) if seen else None
        return local

    def act(self, trainer: Any, mode: str, weights_nonfinite: bool = False) -> None:
        """Nothing if all is finite; else ``mode="warn"``: one warning, ``"stop"``: raise
        :class:`~lit_recipes.errors.NonFiniteLoss` naming the epoch, step, value and LR."""
        seen = self.seen(trainer)
        if seen is None and not weights_nonfinite:
            return
        epoch = int(trainer.current_epoch) if trainer is not None else 0
        lr = None
        if trainer is not None and trainer.optimizers:
            lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        step, value = seen if seen is not None else (int(trainer.global_step) if trainer is not None else 0, math.nan)
        what = (
            f"training loss is not finite ({value}) at epoch {epoch}, step {step}"
            if seen is not None
            else f"the weights are not finite at epoch {epoch}, step {step}"
        )
        what += f" (lr {lr:.3g})" if lr is not None else ""
        if mode == "warn":
            if not self.warned:
                self.warned = True
                rank_zero_warn(f"{what}; training goes on (on_nonfinite: warn)")
            return
        from lit_recipes.errors import NonFiniteLoss

        raise NonFiniteLoss(
            what,
            "lower the learning rate (model.init_args.lr), or find one with `lit-recipes lr-find`",
            epoch=epoch, step=step, value=value, lr=lr,
        )  # fmt: skip


__all__ = ["FOLD_EVERY", "NonFiniteWatch"]
