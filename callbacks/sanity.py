"""Overfit a tiny subset before any long run: if the loss does not go to ~0, something is wrong.

:func:`overfit_tiny_subset` takes the user's module and datamodule, turns augmentation (the eval
transform is used for training), dropout, weight decay, mixup and label smoothing off, and trains
a *copy* of the network on ``n`` samples (a few per class, stratified) for up to ``max_steps``
full-batch steps at the configured LR (constant, no schedule). PASS: the loss on the subset fell
below ``loss_threshold`` and accuracy is 100 %. FAIL comes with the likely causes, found by
probes run before training (labels read twice, images compared, input statistics) and by the
shape of the loss curve. :class:`OverfitSanityCheck` runs it at the start of ``fit``;
``lit-recipes sanity --config ...`` runs it from the command line.

The run is :mod:`lit_recipes.callbacks.sanity_overfit`, its verdict
:mod:`lit_recipes.callbacks.sanity_rules`; both are re-exported here.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lit_recipes.callbacks.sanity_overfit import DEFAULT_PER_CLASS, overfit_tiny_subset
from lit_recipes.callbacks.sanity_rules import SanityCheckError, SanityResult
from lit_recipes.contracts import ContractError


class OverfitSanityCheck(Callback):
    """Run :func:`overfit_tiny_subset` at the start of ``fit`` and stop (or warn) on FAIL.

    It trains a copy of the network, so the real run starts from untouched weights, under
    ``isolate_rng`` so the random stream is unchanged. Rank zero runs it and broadcasts the
    result; every rank then raises (or warns) together. Skipped when resuming from a checkpoint.

    Args:
        n: samples in the tiny subset (default: 5 per class; at least the number of classes).
        max_steps: optimizer steps at most.
        loss_threshold: PASS needs the subset loss below this and 100 % accuracy.
        lr: constant LR of the check (default: the module's ``lr``).
        on_fail: ``"raise"`` (:class:`SanityCheckError`, a ``ValueError``) or ``"warn"``.
        seed: seed of the subset and of the shuffling.

    Example::

        trainer = L.Trainer(callbacks=[OverfitSanityCheck()])
        trainer.fit(model, datamodule=dm)  # raises before the first epoch if the setup cannot learn
    """

    def __init__(
        self,
        n: int | None = None,
        max_steps: int = 300,
        loss_threshold: float = 0.05,
        lr: float | None = None,
        on_fail: Literal["raise", "warn"] = "raise",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if n is not None and (not isinstance(n, int) or n < 2):
            raise ValueError(f"OverfitSanityCheck: n must be an integer >= 2 or null, got {n!r}")
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"OverfitSanityCheck: max_steps must be an integer >= 1, got {max_steps!r}")
        if not (isinstance(loss_threshold, int | float) and loss_threshold > 0):
            raise ValueError(f"OverfitSanityCheck: loss_threshold must be > 0, got {loss_threshold!r}")
        if on_fail not in ("raise", "warn"):
            raise ValueError(f"OverfitSanityCheck: on_fail must be 'raise' or 'warn', got {on_fail!r}")
        self.n = n
        self.max_steps = max_steps
        self.loss_threshold = loss_threshold
        self.lr = lr
        self.on_fail = on_fail
        self.seed = seed
        self.result: SanityResult | None = None

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path:
            return
        outcome: dict[str, Any] | None = None
        error: tuple[str, str, tuple[str, ...]] | None = None  # (type, message, missing members)
        if trainer.is_global_zero:
            try:
                outcome = overfit_tiny_subset(
                    pl_module,
                    trainer.datamodule,
                    n=self.n,
                    max_steps=self.max_steps,
                    loss_threshold=self.loss_threshold,
                    lr=self.lr,
                    seed=self.seed,
                    device=pl_module.device,
                ).to_dict()
            except ContractError as err:
                error = ("contract", str(err), err.missing)
            except ValueError as err:
                error = ("value", str(err), ())
        outcome, error = trainer.strategy.broadcast((outcome, error), src=0)
        if error is not None:  # every rank raises the same error
            kind, message, missing = error
            raise ContractError(message, missing) if kind == "contract" else ValueError(message)
        self.result = SanityResult(**outcome)
        if self.result.passed:
            rank_zero_info(self.result.summary())
            return
        if self.on_fail == "raise":
            raise SanityCheckError(f"{self.result.summary()} - likely causes: {'; '.join(self.result.causes)}")
        rank_zero_warn(self.result.report())


__all__ = ["DEFAULT_PER_CLASS", "OverfitSanityCheck", "SanityCheckError", "SanityResult", "overfit_tiny_subset"]
