"""Learning-rate schedules that follow the module's *current* LR.

:class:`OneCycle` is Leslie Smith's 1cycle policy (Smith 2018, "A disciplined approach to neural
network hyper-parameters"; Smith & Topin 2017, "Super-convergence") as a step-wise
``LRScheduler``. It is the scheduler of the recipes because every argument it needs can be filled
in when ``ClassifierModule.configure_optimizers`` runs — after an LR range test has set
``module.lr`` — so the found LR is never overwritten by a schedule built too early
(Lightning-AI/pytorch-lightning#16787, #10089).
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class OneCycle(LRScheduler):
    """The 1cycle policy with cyclical momentum, stepped once per optimizer step.

    Three phases over ``total_steps``:

    1. *warm-up*: LR rises from ``max_lr / div`` to ``max_lr`` while momentum (SGD's ``momentum``
       or Adam's β1) falls from ``max_momentum`` (0.95) to ``base_momentum`` (0.85);
    2. *cool-down*: the mirror image, back to ``max_lr / div`` and ``max_momentum``;
    3. *annihilation* (the last ``annihilation_pct`` of the steps): LR falls further to
       ``max_lr / (div * final_div)`` with momentum held at ``max_momentum``.

    By default phases 1 and 2 are equal (Smith's symmetric cycle); ``pct_start`` sets the share
    of phase 1 instead. ``anneal`` is ``"linear"`` (Smith) or ``"cos"`` (fast.ai).

    Args:
        optimizer: the wrapped optimizer; each parameter group may have its own peak LR.
        max_lr: peak LR, a float or one per group; ``None`` (default) or ``"auto"`` takes each
            group's current ``lr`` — which ``ClassifierModule`` sets from ``module.lr`` (times a
            group's ``lr_mult``) — i.e. the range test's suggestion when an
            :class:`~lit_recipes.callbacks.LRRangeTest` ran first (it rebuilds this scheduler
            after setting ``module.lr``).
        total_steps: length of the cycle in optimizer steps; ``None`` is filled in by
            ``ClassifierModule`` with ``trainer.estimated_stepping_batches``.
        div: ``max_lr / div`` is the starting LR (default 10: "the low value can be 10x lower").
        final_div: the last LR is ``max_lr / (div * final_div)`` (default 100).
        pct_start: share of phase 1 (default ``None``: ``(1 - annihilation_pct) / 2``).
        annihilation_pct: share of the final annihilation phase (default 0.1).
        cycle_momentum: cycle momentum / β1 inversely to the LR.
        base_momentum: momentum at the LR peak.
        max_momentum: momentum at the LR valleys.
        anneal: ``"linear"`` or ``"cos"`` interpolation inside each phase.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
        >>> sched = OneCycle(opt, total_steps=100)
        >>> round(opt.param_groups[0]["lr"], 3), opt.param_groups[0]["momentum"]
        (0.1, 0.95)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | list[float] | Literal["auto"] | None = None,
        total_steps: int | None = None,
        div: float = 10.0,
        final_div: float = 100.0,
        pct_start: float | None = None,
        annihilation_pct: float = 0.1,
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        anneal: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        if total_steps is None or int(total_steps) < 1:
            raise ValueError(f"OneCycle: total_steps must be a positive integer, got {total_steps!r}")
        if div <= 1 or final_div < 1:
            raise ValueError(f"OneCycle: need div > 1 and final_div >= 1, got div={div}, final_div={final_div}")
        if not 0.0 <= annihilation_pct < 1.0:
            raise ValueError(f"OneCycle: annihilation_pct must be in [0, 1), got {annihilation_pct}")
        symmetric = pct_start is None
        if pct_start is None:
            pct_start = (1.0 - annihilation_pct) / 2
        if not 0.0 < pct_start < 1.0 - annihilation_pct:
            raise ValueError(
                f"OneCycle: pct_start must be in (0, 1 - annihilation_pct = {1 - annihilation_pct:g}), got {pct_start}"
            )
        if anneal not in ("linear", "cos"):
            raise ValueError(f"OneCycle: anneal must be 'linear' or 'cos', got {anneal!r}")
        if not 0 <= base_momentum <= max_momentum < 1:
            raise ValueError(
                f"OneCycle: need 0 <= base_momentum <= max_momentum < 1, got {base_momentum}, {max_momentum}"
            )
        n = len(optimizer.param_groups)
        if max_lr == "auto":
            max_lr = None
        if isinstance(max_lr, str):
            raise ValueError(f"OneCycle: max_lr must be a number, a list, 'auto' or null, got {max_lr!r}")
        if max_lr is None:
            peaks = [g["lr"] for g in optimizer.param_groups]
        elif isinstance(max_lr, list | tuple):
            if len(max_lr) != n:
                raise ValueError(f"OneCycle: {len(max_lr)} max_lr values for {n} parameter groups")
            peaks = [float(v) for v in max_lr]
        else:
            peaks = [float(max_lr)] * n
        if min(peaks) <= 0:
            raise ValueError(f"OneCycle: max_lr must be > 0, got {peaks}")
        self.total_steps = int(total_steps)
        self.div = div
        self.final_div = final_div
        self.pct_start = pct_start
        self.annihilation_pct = annihilation_pct
        self.cycle_momentum = cycle_momentum
        self.base_momentum = base_momentum
        self.max_momentum = max_momentum
        self.anneal = anneal
        self.max_lrs = peaks
        # phases end at optimizer-step indices; the last applied step (total_steps - 1) gets the final LR
        last = max(self.total_steps - 1, 1)
        up = min(max(1, round(pct_start * last)), last)
        down_end = min(max(up, 2 * up if symmetric else round((1.0 - annihilation_pct) * last)), last)
        self.phase_ends = (up, down_end, last)
        self._use_betas = "betas" in optimizer.defaults
        if cycle_momentum and "momentum" not in optimizer.defaults and not self._use_betas:
            raise ValueError(f"OneCycle: {type(optimizer).__name__} has neither momentum nor betas to cycle")
        for group, peak in zip(optimizer.param_groups, peaks):
            group["initial_lr"] = peak / div
            group["max_lr"] = peak
        super().__init__(optimizer, last_epoch)

    def _interp(self, start: float, end: float, frac: float) -> float:
        frac = min(max(frac, 0.0), 1.0)
        if self.anneal == "cos":
            return end + (start - end) * (1 + math.cos(math.pi * frac)) / 2
        return start + (end - start) * frac

    def lr_and_momentum(self, step: int, max_lr: float) -> tuple[float, float]:
        """LR and momentum at optimizer step ``step`` (0-based) for a group peaking at ``max_lr``."""
        low, final = max_lr / self.div, max_lr / (self.div * self.final_div)
        up, down_end, total = self.phase_ends
        if step <= up:
            f = step / up
            return self._interp(low, max_lr, f), self._interp(self.max_momentum, self.base_momentum, f)
        if step <= down_end:
            f = (step - up) / (down_end - up)
            return self._interp(max_lr, low, f), self._interp(self.base_momentum, self.max_momentum, f)
        f = (step - down_end) / max(1, total - down_end)
        return self._interp(low, final, f), self.max_momentum

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("_past_end_noted", None)  # the "cycle is over" note is per process, not saved
        return state

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        if step > self.total_steps and not getattr(self, "_past_end_noted", False):
            # e.g. a finished run extended with --ckpt_path last.ckpt and a larger max_epochs: the
            # checkpoint's cycle length wins, and training goes on at the final LR (said once)
            self._past_end_noted = True
            final = ", ".join(f"{self.lr_and_momentum(self.phase_ends[2], p)[0]:.3g}" for p in self.max_lrs)
            warnings.warn(
                f"OneCycle: the cycle of {self.total_steps} steps is over (step {step}); continuing at its "
                f"final LR {final}. Start a new run (no --ckpt_path) for a new cycle",
                stacklevel=2,
            )
        lrs = []
        for group, peak in zip(self.optimizer.param_groups, self.max_lrs):
            lr, mom = self.lr_and_momentum(min(step, self.phase_ends[2]), peak)
            lrs.append(lr)
            if self.cycle_momentum:
                if self._use_betas:
                    group["betas"] = (mom, *group["betas"][1:])
                else:
                    group["momentum"] = mom
        return lrs


def schedule_preview(scheduler_factory, steps: int, lr: float = 1.0) -> dict[str, list[float]]:
    """LR and momentum of every step of a schedule on a throwaway SGD optimizer (for plots)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
    sched = scheduler_factory(opt, total_steps=steps)
    lrs, moms = [], []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0].get("momentum", 0.0))
        opt.step()
        sched.step()
    return {"lr": lrs, "momentum": moms}


def halve(epoch: int) -> float:
    """A ``MultiplicativeLR`` factor usable from YAML: halve the LR every epoch."""
    return 0.5
