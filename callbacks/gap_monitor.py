r"""Train/val gap monitoring, the training "doctor": is the run healthy, under-fitting, over-fitting, or not learning?

The running training metrics (``train/loss``, ``train/acc``) are averaged over an epoch in which
the weights changed, under augmentation, dropout and mixup: they mislead. At every validation
:class:`GapMonitor` measures the *clean* training loss and accuracy instead - eval mode, eval
transforms, no grad - on a fixed, stratified, seeded subset of the training split, and the
per-sample spread of the clean-train and val losses; the rules of
:mod:`lit_recipes.callbacks.doctor_rules` turn them into a verdict with a confidence, the evidence
and the intervals behind it, and the classic remedy.

Verdicts come from evidence, not point values: Wilson intervals from the number of scored images
for accuracies, standard errors from the per-sample spread for losses, a val-loss onset only when
it stays significantly above its running minimum, ``warming_up`` while the LR still rises, and a
shown verdict that changes only after ``confirm`` consecutive validations agree (at once on a
non-finite or diverging loss). See ``docs/doctor.md``.

Timing (read from Lightning 2.6's loops): validation at the end of an epoch runs *inside* the
training epoch loop, before ``on_train_epoch_end``; the val losses are collected per batch in
``on_validation_batch_end`` (``validation_step`` returns the logits), the verdict is made in
``on_validation_epoch_end`` from the clean-train and val metrics of the same weights; the epoch's
running train metrics are added at ``on_train_epoch_end`` for the curves and the report only.
"""

from __future__ import annotations

import math
from copy import deepcopy
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from lit_recipes.artifacts import log_image, run_dir, save_figure, save_json
from lit_recipes.callbacks.doctor_rules import VERDICTS, Hysteresis, Thresholds, assess, judged, summarize

REMEDIES = {
    "warming_up": "none yet: the LR is still warming up (or this is the first validation); wait for the evidence",
    "healthy": "nothing to fix; if val accuracy is still too low, train longer or try a bigger model",
    "underfitting": (
        "the model has not fitted its own training set: train longer while the loss still falls, "
        "else a bigger model (more capacity) or a better LR (run `lit-recipes lr-find`); "
        "lower regularisation (dropout, weight decay, mixup) if it is strong"
    ),
    "overfitting_onset": (
        "val loss has turned up while train loss keeps falling: stop early (keep the val-loss minimum, "
        "or set stop_on: overfitting), or add regularisation (dropout, weight decay) or augmentation"
    ),
    "overfitting": (
        "the model memorises the training set: more data or stronger augmentation; dropout or weight "
        "decay; early stopping (stop_on: overfitting restores the best checkpoint)"
    ),
    "not_converging": (
        "the loss stays flat and high, diverges, or nothing learned reaches val: check the LR with the range "
        "test (`lit-recipes lr-find`) - far too high diverges, far too low never moves; then run "
        "`lit-recipes sanity` (normalised inputs, labels tied to their images, a model able to fit a tiny subset)"
    ),
}


def stratified_subset(targets: np.ndarray, candidates: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` positions from ``candidates``, each class in proportion to its share, seeded.

    Proportional allocation with the largest-remainder rule (every present class gets at least one
    sample when ``size`` allows); returns sorted pool positions. ``size >= len(candidates)`` returns
    all of them.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    if size >= len(candidates):
        return np.sort(candidates)
    labels = np.asarray(targets)[candidates]
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(candidates)
    take = np.floor(exact).astype(int)
    if size >= len(classes):
        take = np.maximum(take, 1)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    i = 0
    while take.sum() < size:
        c = order[i % len(order)]
        if take[c] < counts[c]:
            take[c] += 1
        i += 1
    while take.sum() > size:  # the "at least one" floor overshot: trim the largest classes
        take[np.argmax(take)] -= 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(candidates[labels == c], size=k, replace=False) for c, k in zip(classes, take) if k > 0]
    return np.sort(np.concatenate(chosen))


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

    Raises:
        ValueError: a setting out of range (at construction); no validation loop or no
            lit_recipes datamodule (at fit start); no ``val/loss``/``val/acc`` logged.
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

        def check(name: str, value: Any, ok: bool, want: str) -> None:
            if not ok:
                raise ValueError(f"GapMonitor: {name} must be {want}, got {value!r}")

        def integer(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        check("subset_size", subset_size, integer(subset_size) and subset_size >= 1, "an integer >= 1")
        self.th = Thresholds(
            min_train_acc, overfit_acc_gap, overfit_loss_ratio, min_loss_gap, onset_rise, onset_min_delta,
            chance_loss_frac, flat_window, min_improvement, confidence_level, confirm, warmup_validations,
            min_learning=min_learning,
        ).check()  # fmt: skip
        check("stop_on", stop_on, stop_on in (None, "overfitting"), "'overfitting' or null")
        check("patience", patience, integer(patience) and patience >= 1, "an integer >= 1")
        check(
            "plot_every_n_epochs",
            plot_every_n_epochs,
            integer(plot_every_n_epochs) and plot_every_n_epochs >= 1,
            ">= 1",
        )
        check("batch_size", batch_size, batch_size is None or (integer(batch_size) and batch_size >= 1), ">= 1 or null")
        check("num_classes", num_classes, num_classes is None or (integer(num_classes) and num_classes >= 2), ">= 2")
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

    # ------------------------------------------------------------------ set-up checks
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        if trainer.limit_val_batches == 0 or not is_overridden("validation_step", pl_module):
            why = "limit_val_batches=0" if trainer.limit_val_batches == 0 else "the module has no validation_step"
            raise ValueError(f"GapMonitor needs a validation loop to compare with, but this run has none ({why})")
        dm = trainer.datamodule
        if dm is None or not all(hasattr(dm, a) for a in ("eval_dataloader", "train_indices", "train_targets")):
            raise ValueError(
                "GapMonitor needs a lit_recipes datamodule (eval_dataloader, train_indices, train_targets); "
                f"got {type(dm).__name__ if dm is not None else 'no datamodule'}"
            )
        if getattr(dm, "val_indices", None) is None and getattr(dm, "val_source", None) is None:
            raise ValueError(
                f"GapMonitor needs a validation split, but {type(dm).__name__} has none (val_fraction=0 and no val source)"
            )
        train_idx = np.asarray(dm.train_indices)
        if self.subset is None or not np.isin(self.subset, train_idx).all():
            if self.subset_size > len(train_idx):
                rank_zero_info(
                    f"GapMonitor: subset_size {self.subset_size} > {len(train_idx)} training samples; "
                    "scoring all of them"
                )
            self.subset = stratified_subset(np.asarray(dm.train_targets), train_idx, self.subset_size, self.seed)
        if self.num_classes is None:
            self.num_classes = int(getattr(dm, "num_classes", None) or pl_module.num_classes)
        counts = np.bincount(np.asarray(dm.train_targets)[self.subset], minlength=self.num_classes)
        self.chance_acc = float(max(counts.max() / max(counts.sum(), 1), 1.0 / self.num_classes))
        self._loader = None  # built at the first measurement (after a resume restored the subset)

    # ------------------------------------------------------------------ the measurements
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[float, float, int, float]:
        """Clean ``(loss, acc, count, loss sd)`` on the subset, summed over ranks (every rank gets the same)."""
        if self._loader is None:
            self._loader = trainer.datamodule.eval_dataloader(
                "train", indices=self.subset, rank=trainer.global_rank, world_size=trainer.world_size,
                batch_size=self.batch_size,
            )  # fmt: skip
        totals = torch.zeros(4, dtype=torch.float64, device=pl_module.device)
        modes = [(m, m.training) for m in pl_module.modules()]
        predict = getattr(pl_module, "predict_logits", pl_module)
        try:
            pl_module.eval()
            with isolate_rng(), torch.no_grad():
                for batch in self._loader:
                    images = batch[0].to(pl_module.device, non_blocking=True)
                    targets = batch[1].to(pl_module.device, non_blocking=True)
                    with trainer.precision_plugin.forward_context():
                        logits = predict(images)
                    totals += _loss_sums(logits, targets).to(totals.device)
        finally:
            for m, mode in modes:
                m.train(mode)
        count, loss_sum, sq_sum, correct = (float(v) for v in trainer.strategy.reduce(totals, reduce_op="sum").cpu())
        return loss_sum / max(count, 1), correct / max(count, 1), int(count), _sd(loss_sum, sq_sum, count)

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
        targets = batch[1]
        if isinstance(outputs, torch.Tensor) and outputs.ndim == 2 and len(outputs) == len(targets):
            self._val_sums += _loss_sums(outputs.detach(), targets.to(outputs.device)).to(self._val_sums.device)
        else:  # no logits: count only (the val-loss spread is unknown, the onset test uses the margin alone)
            self._val_sums[0] += len(targets)
            self._val_sums[1] = float("nan")

    def _val_metric(self, trainer: L.Trainer, key: str) -> float:
        value = trainer.callback_metrics.get(key)
        if value is None:
            logged = ", ".join(sorted(k for k in trainer.callback_metrics if k.startswith("val"))) or "none"
            raise ValueError(f"GapMonitor: {key!r} was not logged at validation (logged val metrics: {logged})")
        return float(value)

    # ------------------------------------------------------------------ hooks
    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or self.subset is None:
            return
        tl, ta, count, tsd = self.measure(trainer, pl_module)
        vl, va = self._val_metric(trainer, self.val_loss_key), self._val_metric(trainer, self.val_acc_key)
        nv, vsum, vsq, _ = (float(v) for v in trainer.strategy.reduce(self._val_sums, reduce_op="sum").cpu())
        lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else float("nan")
        warming = self._lr_prev is not None and lr > self._lr_prev * (1 + 1e-9)
        self._lr_prev = lr
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        total = trainer.num_training_batches
        record: dict[str, Any] = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "epoch_fraction": min(1.0, done / total) if total and math.isfinite(total) and done else 1.0,
            "train_clean/loss": tl,
            "train_clean/acc": ta,
            "train_clean/loss_sd": tsd,
            "subset_count": count,
            "val/loss": vl,
            "val/acc": va,
            "val/loss_sd": _sd(vsum, vsq, nv) if math.isfinite(vsum) else None,
            "val_count": int(nv),
            "gap/acc": ta - va,
            "gap/loss_ratio": vl / max(tl, 1e-8),
            "lr": lr,
            "warming_up": warming,
        }
        ev = assess(record, self.history, self.num_classes, self.th, self.chance_acc)
        verdict, confidence, note = self.hysteresis.update(ev, record["epoch"])
        record.update(judged(ev, verdict, confidence, note), remedy=REMEDIES[verdict])
        self.history.append(record)
        for key in ("train_clean/loss", "train_clean/acc", "gap/acc", "gap/loss_ratio", "confidence"):
            value = record[key] if math.isfinite(record[key]) else float("nan")
            name = "doctor/confidence" if key == "confidence" else key
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)
        rank_zero_info(
            f"GapMonitor epoch {record['epoch']}: {verdict} (confidence {confidence:.2f}) - {record['evidence']}"
        )
        self._track_best(pl_module, vl)
        self._maybe_stop(trainer, verdict)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._lr_prev is None and trainer.optimizers and not self.history:
            self._lr_prev = float(trainer.optimizers[0].param_groups[0]["lr"])

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # the LR of the first step (after an LR range test and the scheduler's first value): warm-up reference
        if not self.history and trainer.global_step == 0 and trainer.optimizers:
            self._lr_prev = float(trainer.optimizers[0].param_groups[0]["lr"])

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
        metrics = trainer.callback_metrics
        running = {"epoch": trainer.current_epoch}
        running.update({k: float(metrics[k]) for k in ("train/loss", "train/acc") if k in metrics})
        self.train_running.append(running)
        for record in self.history:
            if record["epoch"] == trainer.current_epoch:
                record.update({k: v for k, v in running.items() if k != "epoch"})
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if (trainer.current_epoch + 1) % self.plot_every_n_epochs == 0 or last or trainer.should_stop:
            self._plot(trainer)

    def _plot(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero or not self.history:
            return
        from lit_recipes.callbacks.learning_curves import plot_curves

        path = save_figure(plot_curves(self.history, self.train_running), run_dir(trainer) / "curves.png")
        log_image(trainer, "gap_monitor/curves", path, step=trainer.global_step)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        restored = self._restore_best(trainer, pl_module) if self.stopped_epoch is not None else None
        self.diagnosis = self.summary()
        self.diagnosis["restored"] = restored
        if not trainer.is_global_zero:
            return
        self._plot(trainer)
        save_json(run_dir(trainer) / "diagnosis.json", self.diagnosis)
        final = self.diagnosis["final"]
        if not self.history:  # e.g. the sweeps of lr-find: no validation ran, nothing to report
            return
        rank_zero_info(f"GapMonitor final: {final['verdict']} (confidence {final['confidence']}) - {final['evidence']}")
        if self.history and self.print_report:
            from rich.console import Console

            from lit_recipes.callbacks.learning_curves import report_table

            Console(width=max(Console().width, 120)).print(report_table(self.history, final))

    def _restore_best(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
        ckpt_cb = trainer.checkpoint_callback
        path = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
        if path:
            checkpoint = trainer.strategy.load_checkpoint(path)
            pl_module.load_state_dict(checkpoint["state_dict"])
            rank_zero_info(f"GapMonitor: restored the best checkpoint {path}")
            return str(path)
        if self._best_state is not None:
            pl_module.load_state_dict(self._best_state)
            rank_zero_info(f"GapMonitor: restored the weights at the val-loss minimum ({self._best_val_loss:.4f})")
            return "val_loss_minimum"
        rank_zero_warn("GapMonitor: stopped early but found no best weights to restore")
        return None

    def summary(self) -> dict[str, Any]:
        """The diagnosis: final verdict (run-level evidence), val-loss minimum, onset vs EarlyStopping, history."""
        out = summarize(self.history, self.th, self.num_classes or 2)
        out["final"]["remedy"] = REMEDIES.get(out["final"]["verdict"], "")
        out.update(
            verdict_counts={v: sum(r["verdict"] == v for r in self.history) for v in VERDICTS},
            first_overfitting_epoch=next((r["epoch"] for r in self.history if r["verdict"] == "overfitting"), None),
            stopped_epoch=self.stopped_epoch,
            subset_size=int(len(self.subset)) if self.subset is not None else None,
            chance_acc=self.chance_acc,
            thresholds=dict(self.thresholds),
            history=self.history,
            train_running=self.train_running,
        )
        return out

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": deepcopy(self.history),
            "train_running": deepcopy(self.train_running),
            "subset": None if self.subset is None else self.subset.tolist(),
            "hysteresis": self.hysteresis.state_dict(),
            "lr_prev": self._lr_prev,
            "bad_count": self.bad_count,
            "stopped_epoch": self.stopped_epoch,
            "best_val_loss": self._best_val_loss,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.train_running = list(state_dict.get("train_running", []))
        subset = state_dict.get("subset")
        self.subset = None if subset is None else np.asarray(subset, dtype=np.int64)
        self.hysteresis = Hysteresis(**state_dict.get("hysteresis", {"confirm": self.th.confirm}))
        self._lr_prev = state_dict.get("lr_prev")
        self.bad_count = int(state_dict.get("bad_count", 0))
        self.stopped_epoch = state_dict.get("stopped_epoch")
        self._best_val_loss = float(state_dict.get("best_val_loss", math.inf))
        self._loader = None


def _loss_sums(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[count, sum of per-sample CE, sum of squares, correct]`` in float64."""
    losses = F.cross_entropy(logits.float(), targets, reduction="none").double()
    correct = (logits.argmax(-1) == targets).sum().double()
    return torch.stack([torch.tensor(float(len(targets)), dtype=torch.float64, device=losses.device),
                        losses.sum(), (losses * losses).sum(), correct])  # fmt: skip


def _sd(total: float, squares: float, count: float) -> float:
    if count < 2 or not math.isfinite(total) or not math.isfinite(squares):
        return float("nan") if not (math.isfinite(total) and math.isfinite(squares)) else 0.0
    mean = total / count
    return math.sqrt(max(squares / count - mean * mean, 0.0) * count / (count - 1))


__all__ = ["GapMonitor", "REMEDIES", "VERDICTS", "stratified_subset"]
