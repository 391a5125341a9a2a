r"""Train/val gap monitoring, the training "doctor": is the run healthy, under-fitting, over-fitting, or not learning?

The running training metrics (``train/loss``, ``train/acc``) are averaged over an epoch in which
the weights changed, under augmentation, dropout and mixup: they mislead. At every validation
:class:`GapMonitor` measures the *clean* training loss and accuracy instead - eval mode, eval
transforms, no grad - on a fixed, stratified, seeded subset of the training split, and the
per-sample spread of the clean-train and val losses; the rules of
:mod:`lit_recipes.callbacks.doctor_rules` turn them into a verdict with a confidence, the evidence
and the intervals behind it, and the classic remedy.

Verdicts come from evidence (intervals, a confirmed change), not point values: see ``docs/doctor.md``.

Timing (read from Lightning 2.6's loops): validation at the end of an epoch runs *inside* the
training epoch loop, before ``on_train_epoch_end``; the val losses are collected per batch in
``on_validation_batch_end`` (``validation_step`` returns the logits), the verdict is made in
``on_validation_epoch_end`` from the clean-train and val metrics of the same weights; the epoch's
running train metrics are added at ``on_train_epoch_end`` for the curves and the report only.

The hook class is thin: the measurements are in :mod:`~lit_recipes.callbacks.doctor_measure`, the
rules in :mod:`~lit_recipes.callbacks.doctor_rules`, the report in
:mod:`~lit_recipes.callbacks.doctor_report`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden
from typing_extensions import override

from lit_recipes.artifacts import log_image, run_dir
from lit_recipes.callbacks import doctor_measure as measure
from lit_recipes.callbacks import doctor_report as report
from lit_recipes.callbacks.doctor_measure import stratified_subset
from lit_recipes.callbacks.doctor_report import REMEDIES
from lit_recipes.callbacks.doctor_rules import VERDICTS, Hysteresis, Thresholds, assess, judged
from lit_recipes.contracts import IndexedDataModule, check_contract
from lit_recipes.lightning_compat import batch_progress


class GapMonitor(Callback):
    r"""Measure clean train metrics at every validation, judge the train/val gap, diagnose the run.

    Logs ``train_clean/loss``, ``train_clean/acc``, ``gap/acc`` (clean train acc - val acc),
    ``gap/loss_ratio`` (val loss / clean train loss) and ``doctor/confidence`` at each validation;
    prints one line per validation (rank zero): verdict, confidence, evidence; draws ``curves.png``
    in the run directory (marker opacity = confidence, bands = intervals; logged to W&B); writes
    ``diagnosis.json`` (per validation: verdict, confidence, evidence, intervals) and prints a rich
    table at the end of ``fit``.

    The clean loss is the plain cross-entropy of ``predict_logits`` (no label smoothing, class
    weights or mixup) - the same loss as ``val/loss``. Under DDP each rank scores its shard; the
    sums are all-reduced, so every rank has the same numbers and verdict. The measurement runs
    under ``isolate_rng`` and restores each submodule's train/eval mode, so a run with the monitor
    trains exactly like one without.

    Args:
        subset_size: training samples scored at each validation (fixed, stratified, seeded).
        min_train_acc: a clean train accuracy whose interval lies below this, with the train error at
            least the train - val gap (bias dominates variance), is ``underfitting``.
        overfit_acc_gap: a train - val accuracy gap whose interval lies above this (and at or above
            the train error: variance dominates bias) is ``overfitting`` (default 0.05).
        overfit_loss_ratio, min_loss_gap: val / train loss at or above the ratio, with the val - train
            loss interval above ``min_loss_gap`` nats and an accuracy gap above 0, is ``overfitting``:
            tiny losses (0.001 vs 0.05) never qualify.
        onset_rise, onset_min_delta: the val loss must rise above its running minimum by more than
            ``max(onset_min_delta, onset_rise * minimum)`` with its interval (relative 0.10, 0 nats).
        chance_loss_frac, flat_window, min_improvement: a clean train loss >= ``chance_loss_frac *
            ln(C)`` that improved by less than ``min_improvement`` over ``flat_window`` validations
            is ``not_converging``.
        min_learning: val accuracy whose interval stays below chance + this share of the way to 100 %
            is ``not_converging`` (nothing learned generalises: labels, inputs or LR).
        confidence_level: the two-sided level of every interval (default 0.9: decisions at 95 %
            one-sided).
        confirm: consecutive validations that must support a new verdict before it is shown.
        warmup_validations: the first N validations only report ``warming_up`` unless overwhelming.
        stop_on: ``"overfitting"`` stops after ``patience`` validations shown as ``overfitting`` or
            ``overfitting_onset`` and restores the best weights at fit end (the checkpoint
            callback's best checkpoint, else the weights at the val-loss minimum).
        patience: shown over-fitting validations before stopping (default 1: already confirmed).
        plot_every_n_epochs, batch_size, seed, num_classes, val_loss_key, val_acc_key, print_report:
            plotting cadence, scoring batch size, subset seed, class count (default: the
            datamodule's), the logged val metrics, the end-of-fit table.

    State (history, subset, hysteresis, stopping) is saved in checkpoints under :attr:`state_key`,
    which names the arguments that differ from the defaults, so two monitors can coexist.

    Raises:
        ValueError: a setting out of range (at construction); no validation loop or no validation
            split (at fit start); no ``val/loss``/``val/acc`` logged.
        ContractError: the datamodule lacks ``eval_dataloader``, ``train_indices`` or
            ``train_targets`` (not a lit_recipes datamodule; at fit start).
    """

    def __init__(
        self,
        subset_size: int = 1000,
        min_train_acc: float = 0.99,
        overfit_acc_gap: float = 0.05,
        overfit_loss_ratio: float = 2.0,
        min_loss_gap: float = 0.3,
        onset_rise: float = 0.10,
        onset_min_delta: float = 0.0,
        chance_loss_frac: float = 0.9,
        flat_window: int = 3,
        min_improvement: float = 0.05,
        min_learning: float = 0.1,
        confidence_level: float = 0.9,
        confirm: int = 2,
        warmup_validations: int = 1,
        stop_on: Literal["overfitting"] | None = None,
        patience: int = 1,
        plot_every_n_epochs: int = 1,
        batch_size: int | None = None,
        seed: int = 0,
        num_classes: int | None = None,
        val_loss_key: str = "val/loss",
        val_acc_key: str = "val/acc",
        print_report: bool = True,
    ) -> None:
        super().__init__()

        measure.check_settings(subset_size=subset_size)
        self.th = Thresholds(
            min_train_acc, overfit_acc_gap, overfit_loss_ratio, min_loss_gap, onset_rise, onset_min_delta,
            chance_loss_frac, flat_window, min_improvement, confidence_level, confirm, warmup_validations,
            min_learning=min_learning,
        ).check()  # fmt: skip
        measure.check_settings(
            stop_on=stop_on, patience=patience, plot_every_n_epochs=plot_every_n_epochs, batch_size=batch_size,
            num_classes=num_classes,
        )  # fmt: skip
        self.subset_size = subset_size
        self.thresholds = self.th.as_dict()
        self.stop_on, self.patience = stop_on, patience
        self.plot_every_n_epochs, self.batch_size, self.seed = plot_every_n_epochs, batch_size, seed
        self.num_classes, self.val_loss_key, self.val_acc_key = num_classes, val_loss_key, val_acc_key
        self.print_report = print_report
        self.history: list[dict[str, Any]] = []
        self.train_running: list[dict[str, Any]] = []
        self.subset: np.ndarray | None = None
        self.chance_acc: float | None = None
        self.hysteresis = Hysteresis(confirm)
        self.bad_count = 0
        self.stopped_epoch: int | None = None
        self.diagnosis: dict[str, Any] | None = None
        self._loader = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self._best_val_loss = math.inf
        self._val_sums = torch.zeros(4, dtype=torch.float64)  # count, loss sum, loss^2 sum, correct
        self._lr_prev: float | None = None
        state_args = {"subset_size": subset_size, "seed": seed, "num_classes": num_classes, "stop_on": stop_on,
                      "patience": patience, "val_loss_key": val_loss_key, "val_acc_key": val_acc_key,
                      **self.thresholds}  # fmt: skip
        defaults = {**Thresholds().as_dict(), **report.signature_defaults(GapMonitor.__init__)}
        self._key_args = {k: v for k, v in state_args.items() if v != defaults[k]}

    @property
    @override
    def state_key(self) -> str:
        """``"GapMonitor"`` with default arguments (as before keys existed), else ``GapMonitor{...}``
        naming the arguments that differ from the defaults."""
        return self._generate_state_key(**self._key_args) if self._key_args else type(self).__qualname__

    # ------------------------------------------------------------------ set-up checks
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        if trainer.limit_val_batches == 0 or not is_overridden("validation_step", pl_module):
            why = "limit_val_batches=0" if trainer.limit_val_batches == 0 else "the module has no validation_step"
            raise ValueError(f"GapMonitor needs a validation loop to compare with, but this run has none ({why})")
        dm = trainer.datamodule
        check_contract(dm, IndexedDataModule, _DATA_NEEDS, role="data", user="GapMonitor")
        if getattr(dm, "val_indices", None) is None and getattr(dm, "val_source", None) is None:
            raise ValueError(
                f"GapMonitor needs a validation split, but {type(dm).__name__} has none (val_fraction=0 and no val source)"
            )
        self.subset = measure.choose_subset(
            self.subset, dm.train_targets, dm.train_indices, self.subset_size, self.seed
        )
        if self.num_classes is None:
            self.num_classes = int(getattr(dm, "num_classes", None) or pl_module.num_classes)
        self.chance_acc = measure.chance_accuracy(np.asarray(dm.train_targets), self.subset, self.num_classes)
        self._loader = None  # built at the first measurement (after a resume restored the subset)

    # ------------------------------------------------------------------ the measurements
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[float, float, int, float]:
        """Clean ``(loss, acc, count, loss sd)`` on the subset, summed over ranks (every rank gets the same)."""
        if self._loader is None:
            self._loader = trainer.datamodule.eval_dataloader(
                "train", indices=self.subset, rank=trainer.global_rank, world_size=trainer.world_size,
                batch_size=self.batch_size,
            )  # fmt: skip
        predict = getattr(pl_module, "predict_logits", pl_module)
        context = trainer.precision_plugin.forward_context
        totals = measure.clean_loss_sums(pl_module, self._loader, predict, context, device=pl_module.device)
        return measure.sums_to_metrics(trainer.strategy.reduce(totals, reduce_op="sum").cpu())

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_sums = torch.zeros(4, dtype=torch.float64, device=pl_module.device)

    @override
    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        """Per-sample val losses from the logits ``validation_step`` returns: the count and the spread."""
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        measure.add_val_batch(self._val_sums, outputs, batch[1])

    # ------------------------------------------------------------------ hooks
    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or self.subset is None:
            return
        clean = self.measure(trainer, pl_module)
        metrics = trainer.callback_metrics
        vl, va = measure.logged_value(metrics, self.val_loss_key), measure.logged_value(metrics, self.val_acc_key)
        val_sums = trainer.strategy.reduce(self._val_sums, reduce_op="sum").cpu()
        lr = measure.current_lr(trainer.optimizers)
        warming = self._lr_prev is not None and lr > self._lr_prev * (1 + 1e-9)
        self._lr_prev = lr
        fraction = measure.epoch_fraction(batch_progress(trainer).current.ready, trainer.num_training_batches)
        record = measure.validation_record(
            epoch=trainer.current_epoch, step=trainer.global_step, fraction=fraction, clean=clean,
            val_loss=vl, val_acc=va, val_sums=val_sums, lr=lr, warming_up=warming,
        )  # fmt: skip
        ev = assess(record, self.history, self.num_classes, self.th, self.chance_acc)
        verdict, confidence, note = self.hysteresis.update(ev, record["epoch"])
        record.update(judged(ev, verdict, confidence, note), remedy=REMEDIES[verdict])
        self.history.append(record)
        pl_module.log_dict(report.logged_scalars(record), on_step=False, on_epoch=True, sync_dist=False)
        rank_zero_info(report.validation_line(record, confidence))
        self._track_best(pl_module, vl)
        self._maybe_stop(trainer, verdict)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._lr_prev is None and trainer.optimizers and not self.history:
            self._lr_prev = measure.current_lr(trainer.optimizers)

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # the LR of the first step (after an LR range test and the scheduler's first value): warm-up reference
        if not self.history and trainer.global_step == 0 and trainer.optimizers:
            self._lr_prev = measure.current_lr(trainer.optimizers)

    def _track_best(self, pl_module: L.LightningModule, val_loss: float) -> None:
        if self.stop_on is None or not math.isfinite(val_loss) or val_loss >= self._best_val_loss:
            return
        self._best_val_loss = val_loss
        self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}

    def _maybe_stop(self, trainer: L.Trainer, verdict: str) -> None:
        if self.stop_on is None:
            return
        self.bad_count = self.bad_count + 1 if verdict in ("overfitting", "overfitting_onset") else 0
        stop = trainer.strategy.reduce_boolean_decision(self.bad_count >= self.patience, all=False)
        if stop and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            rank_zero_info(f"GapMonitor: stopping at epoch {self.stopped_epoch} ({verdict} confirmed)")

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_running.append(measure.add_running(self.history, trainer.current_epoch, trainer.callback_metrics))
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if (trainer.current_epoch + 1) % self.plot_every_n_epochs == 0 or last or trainer.should_stop:
            self._plot(trainer)

    def _plot(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero or not self.history:
            return
        path = report.write_curves(run_dir(trainer), self.history, self.train_running)
        log_image(trainer, "gap_monitor/curves", path, step=trainer.global_step)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stopped = self.stopped_epoch is not None
        restored = report.restore_best(trainer, pl_module, self._best_state, self._best_val_loss) if stopped else None
        self.diagnosis = {**self.summary(), "restored": restored}
        if trainer.is_global_zero:
            self._plot(trainer)
            report.publish(run_dir(trainer), self.diagnosis, table=self.print_report)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A run stopped on a non-finite loss still gets its ``diagnosis.json``: the final verdict
        says it diverged, where, and at which LR (no table: the error line follows)."""
        from lit_recipes.errors import NonFiniteLoss

        if not isinstance(exception, NonFiniteLoss) or trainer.state.fn != TrainerFn.FITTING:
            return
        self.stopped_epoch = exception.epoch
        final = report.nonfinite_final(exception.epoch, exception.step, exception.value, exception.lr)
        self.diagnosis = {**self.summary(), "restored": None, "final": final}
        if trainer.is_global_zero:
            report.write_diagnosis(run_dir(trainer), self.diagnosis)
            rank_zero_info(report.final_line(final))

    def summary(self) -> dict[str, Any]:
        """The diagnosis: final verdict (run-level evidence), val-loss minimum, onset vs EarlyStopping, history."""
        return report.diagnosis(
            self.history, self.train_running, self.th, self.num_classes, stopped_epoch=self.stopped_epoch,
            subset_size=int(len(self.subset)) if self.subset is not None else None, chance_acc=self.chance_acc,
        )  # fmt: skip

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return measure.pack_state(
            self.history, self.train_running, self.subset, self.hysteresis, self._lr_prev, self.bad_count,
            self.stopped_epoch, self._best_val_loss,
        )  # fmt: skip

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, value in measure.unpack_state(state_dict, self.th.confirm).items():
            setattr(self, {"lr_prev": "_lr_prev", "best_val_loss": "_best_val_loss"}.get(name, name), value)
        self._loader = None


_DATA_NEEDS = ("eval_dataloader", "train_indices", "train_targets")

__all__ = ["GapMonitor", "REMEDIES", "VERDICTS", "stratified_subset"]
