"""``LRRangeTest``: Leslie Smith's learning-rate range test as a callback that leaves no trace.

The sweep runs inside the callback (manual steps on the real optimizer, never through the fit
loop), so the model, optimizer, schedulers, loop counters and RNG streams are exactly as before it
when training starts; the suggestion is then written to ``pl_module.lr`` and the optimizer and
scheduler are rebuilt from it (a 1cycle schedule built before the sweep can not overwrite it).

It closes three gaps of Lightning's ``Tuner.lr_find``:

* under DDP the loss of every step is averaged across ranks, so every rank sees the same curve,
  stops at the same step and applies the same LR (Lightning-AI/pytorch-lightning#19611, #19912);
* it works at any epoch, not only before the first step (#4846: there the best loss starts at 0);
* the schedulers are rebuilt after the LR is applied, so a ``OneCycle``/``OneCycleLR`` peaks at the
  found LR (#16787, #10089).

This module is the hook; the sweep, the snapshot and the results are functions of
:mod:`lit_recipes.callbacks.lr_sweep`, the rules pure functions of :mod:`lit_recipes.callbacks.lr_rules`,
the figures in :mod:`lit_recipes.callbacks.lr_plot`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from lit_recipes.artifacts import log_image, run_dir, save_figure, save_json
from lit_recipes.callbacks.keyed_state import argument_state_key, load_unkeyed_state
from lit_recipes.callbacks.lr_plot import range_test_figure
from lit_recipes.callbacks.lr_rules import DEFAULT_RULE, RULES, sweep_lrs
from lit_recipes.callbacks.lr_sweep import (
    Snapshot,
    check_arguments,
    cycle_batches,
    rescale_lrs,
    run_sweep,
    sweep_results,
)
from lit_recipes.lightning_compat import setup_fit_data

SUGGESTIONS = RULES
"""Suggestion rules (:data:`lit_recipes.callbacks.lr_rules.RULES`; default ``knee``)."""


# ---------------------------------------------------------------------------------------- callback
class LRRangeTest(Callback):
    """Learning-rate range test (Smith 2015/2018): train up to ``num_steps`` steps while the LR
    grows from ``min_lr`` to ``max_lr``, suggest an LR from the loss curve, put everything back and
    apply the suggestion to ``pl_module.lr`` (the full story: ``docs/lr_range_test.md``).

    Step ``k`` sets every group's LR to ``sweep_lr[k] * group["lr_mult"]`` and trains on the next
    batch of the training loader (cycled when shorter) with ``pl_module.training_loss`` (or the mean
    of ``per_sample_loss``); under DDP the loss and gradients are averaged over ranks, so all ranks
    share one curve. The sweep stops when the EMA-smoothed loss (``beta``, bias-corrected) exceeds
    ``divergence_factor`` x its best, or on a NaN/inf loss. Then weights, buffers, gradients,
    optimizer and scheduler states, train/eval modes and RNG states are restored. At fit start the
    optimizer and schedulers are rebuilt from the new ``pl_module.lr`` (a ``OneCycle`` peaks at the
    suggestion); at a later ``epoch`` every LR the optimizer and schedule carry is rescaled instead.

    Default rule ``knee`` (:func:`lit_recipes.callbacks.lr_rules.knee_rule`): on the losses smoothed
    by a moving median over half a decade of LR, the valley's right edge (largest LR within 10 % of the
    total drop of the minimum) when the curve rises out of it, else 10 x the knee (a plateau: BN nets
    that never diverge), read only up to LR 1 (past it BN nets dip again to a chance-level loss after
    blowing up: not a trainable LR). The older rules stay selectable; with ``minimum``, a suggestion in the last
    10 % of a sweep that never diverged is not applied unless ``on_no_divergence: apply``.

    Applying the suggestion is never silent: one info line ``range test overrides lr=0.05 with
    0.079; set update_lr: false to keep yours`` (``lit-recipes fit`` turns ``update_lr`` off itself
    when an LR is given on the command line: the LR you typed wins).

    Outputs on rank 0 in ``run_dir(trainer)``: ``lr_find.json`` (``lr_find_epoch{E}.json``) with the
    curve, every rule's suggestion, the marks the rule used, stop reason and wall time; the PNG curve
    with the knee/valley edge/plateau marked (W&B: ``lr_find/curve``, ``lr_find/suggestion``).
    ``self.results`` holds the same.

    Args:
        min_lr: first LR of the sweep (default 1e-4: on the benchmark's curves from 1e-7 the
            loss fell by a median 5 % of its total drop below it; lower it for Adam-type optimizers
            or models that train at 1e-5).
        max_lr: last LR of the sweep (reached only if the loss has not diverged by then).
        num_steps: number of steps (at least 10; default 150: 30 a decade from 1e-4 to 10, the
            sweep whose ``knee`` suggestion lay in the good 1cycle band on 23 of 23 labeled sweeps,
            against 23 of 27 for the old 1e-7 -> 10 in 100 steps; ``BENCHMARKS.md``).
        mode: ``"exponential"`` (geometric spacing) or ``"linear"``.
        suggestion: the rule whose LR is applied, one of :data:`SUGGESTIONS` (default ``knee``).
        divergence_factor: stop once the smoothed loss exceeds this times the best smoothed loss
            (``None``: run all ``num_steps``).
        beta: smoothing factor of the loss average.
        epoch: ``None`` runs the test at fit start (before the sanity check); an integer runs it
            at the start of that training epoch (re-running mid-training).
        update_lr: apply the suggestion (``False``: only record and plot it).
        skip_begin: points skipped at the start by the ``steepest``/``lightning`` rules.
        skip_end: points skipped at the end by the ``steepest``/``lightning`` rules.
        plot: write and log the PNG curve.
        on_no_divergence: what to do when the rule flags its suggestion as a fallback case (``minimum``:
            in the last 10 % of a sweep that never diverged): ``"keep"`` the module's LR (default;
            ``results["applied"]`` is then False) or ``"apply"`` it anyway.

    In YAML (``lit-recipes fit``)::

        trainer:
          callbacks:
            - class_path: lit_recipes.callbacks.LRRangeTest
              init_args: {min_lr: 1.0e-5, max_lr: 10, num_steps: 100}

    Raises:
        ValueError: ``min_lr >= max_lr``, ``num_steps < 10``, an unknown ``mode``/``suggestion``,
            a module without an ``lr`` attribute, or more than one optimizer.
    """

    def __init__(
        self,
        min_lr: float = 1e-4,
        max_lr: float = 10.0,
        num_steps: int = 150,
        mode: Literal["exponential", "linear"] = "exponential",
        suggestion: Literal["knee", "minimum", "valley", "steepest", "minimum_div_10", "lightning"] = DEFAULT_RULE,
        divergence_factor: float | None = 4.0,
        beta: float = 0.98,
        epoch: int | None = None,
        update_lr: bool = True,
        skip_begin: int = 10,
        skip_end: int = 1,
        plot: bool = True,
        on_no_divergence: Literal["keep", "apply"] = "keep",
    ) -> None:
        super().__init__()
        check_arguments(
            min_lr=min_lr,
            max_lr=max_lr,
            num_steps=num_steps,
            mode=mode,
            suggestion=suggestion,
            divergence_factor=divergence_factor,
            beta=beta,
            epoch=epoch,
            skip_begin=skip_begin,
            skip_end=skip_end,
            on_no_divergence=on_no_divergence,
        )
        self.on_no_divergence = on_no_divergence
        self.min_lr = float(min_lr)
        self.max_lr = float(max_lr)
        self.num_steps = int(num_steps)
        self.mode = mode
        self.suggestion = suggestion
        self.divergence_factor = divergence_factor
        self.beta = beta
        self.epoch = epoch
        self.update_lr = update_lr
        self.skip_begin = skip_begin
        self.skip_end = skip_end
        self.plot = plot
        self.results: dict[str, Any] = {}
        self.suggested_lr: float | None = None
        self._done: list[str] = []  # "fit_start" / "epoch{E}": sweeps already run (survives resume)

    # ------------------------------------------------------------------ state
    @property
    @override
    def state_key(self) -> str:
        """``LRRangeTest{'epoch': E}``: a fit-start and a mid-training range test keep separate state
        in one checkpoint (other settings may change on resume without re-running a finished sweep)."""
        return argument_state_key(self, epoch=self.epoch)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"done": list(self._done), "suggested_lr": self.suggested_lr}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._done = list(state_dict.get("done", []))
        self.suggested_lr = state_dict.get("suggested_lr")

    @override
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        load_unkeyed_state(self, checkpoint)  # a checkpoint from before the state key named the arguments

    def lr_at(self, step: int) -> float:
        """The sweep's LR at step ``step`` (override to test another spacing)."""
        return sweep_lrs(self.min_lr, self.max_lr, self.num_steps, self.mode)[step]

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        lr = getattr(pl_module, "lr", None)
        if not isinstance(lr, int | float) or isinstance(lr, bool):
            raise ValueError(
                f"LRRangeTest: {type(pl_module).__name__} has no numeric `lr` attribute to apply the suggestion to"
            )

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.epoch is not None:
            return
        if "fit_start" in self._done:  # resumed: the optimizer/scheduler come from the checkpoint
            if self.update_lr and self.suggested_lr is not None:
                pl_module.lr = self.suggested_lr
            return
        setup_fit_data(trainer)
        self._run(trainer, pl_module, "fit_start")

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        key = f"epoch{self.epoch}"
        if self.epoch is None or trainer.current_epoch != self.epoch or key in self._done:
            return
        self._run(trainer, pl_module, key)

    # ------------------------------------------------------------------ the sweep
    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, key: str) -> None:
        if trainer.fast_dev_run:
            rank_zero_warn("LRRangeTest: skipped because fast_dev_run is on")
            return
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"LRRangeTest: needs exactly one optimizer, the module configures {len(trainer.optimizers)}"
            )
        loader = trainer.train_dataloader
        if loader is None or isinstance(loader, dict | list | tuple):
            raise ValueError("LRRangeTest: needs a single training DataLoader")
        optimizer = trainer.optimizers[0]

        def clip() -> None:
            if trainer.gradient_clip_val:
                pl_module.configure_gradient_clipping(
                    optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm
                )

        start = time.perf_counter()
        with isolate_rng(), Snapshot(pl_module, optimizer, trainer.lr_scheduler_configs):
            curve = run_sweep(
                pl_module,
                optimizer,
                cycle_batches(loader, self.num_steps),
                [self.lr_at(k) for k in range(self.num_steps)],
                beta=self.beta,
                divergence_factor=self.divergence_factor,
                strategy=trainer.strategy,
                step_context=trainer.precision_plugin.train_step_context,
                clip=clip,
            )
        curve["elapsed_s"] = time.perf_counter() - start
        self._finish(trainer, pl_module, key, curve)

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, key: str, curve: dict[str, Any]) -> None:
        results, chosen = sweep_results(
            curve, rule=self.suggestion, mode=self.mode, min_lr=self.min_lr, max_lr=self.max_lr,
            num_steps=self.num_steps, beta=self.beta, skip_begin=self.skip_begin, skip_end=self.skip_end,
        )  # fmt: skip
        lr, old = chosen.lr, float(pl_module.lr)
        self.results = {
            **results,
            "lr_before": old,
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            "applied": False,
        }
        self._done.append(key)
        if lr is None:
            rank_zero_warn(
                f"LRRangeTest: no suggestion ({curve['stop_reason']} after {curve['steps']} steps; {chosen.reason}) "
                f"— keeping lr={old:g}. Lower min_lr or check the data/model."
            )
        else:
            rank_zero_info(
                f"LRRangeTest: suggested lr {lr:.4g} ({self.suggestion}: {chosen.reason}) after {curve['steps']} "
                f"steps, {curve['stop_reason']}; {curve['elapsed_s']:.1f}s"
            )
            reject = chosen.fallback and self.on_no_divergence == "keep"
            if chosen.fallback:
                rank_zero_warn(
                    f"LRRangeTest: the suggestion {lr:.3g} is at the end of a sweep that never diverged (the lowest "
                    "loss is then where the model trained longest, not a good peak LR); "
                    + (f"keeping lr={old:g}. " if reject else "applying it anyway (on_no_divergence: apply). ")
                    + "The default rule `knee` handles such curves"
                )
            self.suggested_lr = lr
            if self.update_lr and not reject:
                if not math.isclose(lr, old, rel_tol=1e-9):  # never replace the configured LR silently
                    rank_zero_info(
                        f"LRRangeTest: range test overrides lr={old:g} with {lr:.3g}; set update_lr: false to keep yours"
                    )
                self._apply(trainer, pl_module, lr, key == "fit_start")
                self.results["applied"] = True
        self._save(trainer, key)

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule, lr: float, at_fit_start: bool) -> None:
        old = float(pl_module.lr)
        pl_module.lr = lr
        if at_fit_start:  # rebuilt from the new lr: a OneCycle peaks at it
            trainer.strategy.setup_optimizers(trainer)
        else:  # mid-training: keep momentum and the schedule's position
            rescale_lrs(trainer.optimizers, trainer.lr_scheduler_configs, lr / old)

    def _save(self, trainer: L.Trainer, key: str) -> None:
        if not trainer.is_global_zero:
            return
        stem = "lr_find" if key == "fit_start" else f"lr_find_{key}"
        out = run_dir(trainer)
        save_json(out / f"{stem}.json", self.results)
        for logger in trainer.loggers:
            metrics = {"lr_find/steps": float(self.results["steps"])}
            if self.results["suggestion"] is not None:
                metrics["lr_find/suggestion"] = float(self.results["suggestion"])
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.plot:
            path = save_figure(range_test_figure(self.results), out / f"{stem}.png")
            log_image(trainer, "lr_find/curve", path)


__all__ = ["LRRangeTest", "SUGGESTIONS"]
