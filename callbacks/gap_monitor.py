r"""Train/val gap monitoring: is the model under-fitting, over-fitting, healthy, or not learning?

The running training metrics (``train/loss``, ``train/acc``) are averaged over an epoch in which
the weights changed, under augmentation, dropout and mixup: they mislead. At every validation
:class:`GapMonitor` measures the *clean* training loss and accuracy instead — eval mode, eval
transforms, no grad — on a fixed, stratified, seeded subset of the training split, compares them
with the validation metrics of the same weights, and names the state of the run with the
evidence and the classic remedy.

Verdicts, first match wins (thresholds are the constructor's arguments)::

    not_converging     clean train loss non-finite, or >= chance_loss_frac * ln(C) and it improved by
                       less than min_improvement over the last flat_window validations
    overfitting        train acc - val acc >= overfit_acc_gap and >= the train error (variance
                       dominates bias), or
                       val loss / train loss >= overfit_loss_ratio and val - train loss >= min_loss_gap
    overfitting_onset  val loss >= (1 + onset_rise) x its minimum so far (and >= it + onset_min_delta),
                       reached at an earlier validation, while the clean train loss kept falling
    underfitting       clean train acc < min_train_acc (a classifier should first fit its own
                       training set, whatever val says)
    healthy            none of the above

Timing (read from Lightning 2.6's loops): validation at the end of an epoch runs *inside* the
training epoch loop, before ``on_train_epoch_end``; so at validation time the running
``train/*`` metrics of the current epoch are not yet aggregated. The verdict therefore uses only
the clean train and the val metrics (same weights, measured in ``on_validation_epoch_end``); the
epoch's running train metrics are added to the record at ``on_train_epoch_end`` and appear in the
curves and the report only.
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

VERDICTS = ("healthy", "underfitting", "overfitting_onset", "overfitting", "not_converging")

REMEDIES = {
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
        "the loss stays flat and high: check the LR with the range test (`lit-recipes lr-find`) - far "
        "too high diverges, far too low never moves; then run `lit-recipes sanity` (normalised inputs, "
        "labels tied to their images, a model able to fit a tiny subset)"
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


def val_loss_onset(
    current: dict[str, float], previous: list[dict[str, Any]], onset_rise: float, onset_min_delta: float = 0.0
) -> int | None:
    """Index in ``previous`` of the val-loss minimum when ``current`` shows the onset of
    over-fitting (val loss >= (1 + onset_rise) x that minimum and >= minimum + onset_min_delta,
    while the clean train loss fell below its value there), else ``None``."""
    finite = [(r["val/loss"], i) for i, r in enumerate(previous) if math.isfinite(r["val/loss"])]
    if not finite or not math.isfinite(current["val/loss"]):
        return None
    best_loss, best_i = min(finite)
    vl = current["val/loss"]
    if vl >= (1 + onset_rise) * best_loss and vl - best_loss >= onset_min_delta:
        if current["train_clean/loss"] < previous[best_i]["train_clean/loss"]:
            return best_i
    return None


def diagnose(
    current: dict[str, float],
    previous: list[dict[str, Any]],
    num_classes: int,
    thresholds: dict[str, float],
) -> tuple[str, str]:
    """``(verdict, evidence)`` of one validation from its clean-train and val metrics.

    Args:
        current: ``train_clean/loss``, ``train_clean/acc``, ``val/loss``, ``val/acc``.
        previous: the earlier records (same keys), oldest first.
        num_classes: for the chance-level loss ``ln(num_classes)``.
        thresholds: :class:`GapMonitor`'s threshold arguments by name.
    """
    t = thresholds
    tl, ta = current["train_clean/loss"], current["train_clean/acc"]
    vl, va = current["val/loss"], current["val/acc"]
    chance = math.log(num_classes)
    if not math.isfinite(tl) or not math.isfinite(vl):
        return "not_converging", f"non-finite loss (clean train {tl:.4g}, val {vl:.4g}): the optimisation diverged"
    window = [r["train_clean/loss"] for r in previous[-(int(t["flat_window"]) - 1) :]] if t["flat_window"] > 1 else []
    window.append(tl)
    if tl >= t["chance_loss_frac"] * chance and len(window) >= 2:
        first = window[0]
        improvement = (first - tl) / first if math.isfinite(first) and first > 0 else 0.0
        if improvement < t["min_improvement"]:
            return "not_converging", (
                f"clean train loss {tl:.4f} is >= {t['chance_loss_frac']:.0%} of the chance level ln({num_classes})"
                f"={chance:.3f} and improved {improvement:+.1%} over the last {len(window)} validations "
                f"(clean train acc {ta:.2%})"
            )
    gap = ta - va
    ratio = vl / max(tl, 1e-8)
    if gap >= t["overfit_acc_gap"] and gap >= 1 - ta:
        return "overfitting", (
            f"clean train acc {ta:.2%} vs val acc {va:.2%}: gap {gap * 100:+.1f} points >= "
            f"{t['overfit_acc_gap'] * 100:.1f} and >= the train error {(1 - ta) * 100:.1f} "
            f"(losses: train {tl:.4f}, val {vl:.4f})"
        )
    if ratio >= t["overfit_loss_ratio"] and vl - tl >= t["min_loss_gap"]:
        return "overfitting", (
            f"val loss {vl:.4f} is {ratio:.1f}x the clean train loss {tl:.4f} (>= {t['overfit_loss_ratio']:g}x "
            f"and {vl - tl:.3f} >= {t['min_loss_gap']:g} apart); accuracies {ta:.2%} vs {va:.2%}"
        )
    onset = val_loss_onset(current, previous, t["onset_rise"], t["onset_min_delta"])
    if onset is not None:
        best = previous[onset]
        return "overfitting_onset", (
            f"val loss rose from its minimum {best['val/loss']:.4f} (epoch {best['epoch']}) to {vl:.4f} "
            f"({vl / best['val/loss'] - 1:+.0%}) while the clean train loss fell from "
            f"{best['train_clean/loss']:.4f} to {tl:.4f}"
        )
    if ta < t["min_train_acc"]:
        extra = f"; clean train loss {tl:.4f} is above val loss {vl:.4f}" if tl > vl else ""
        trend = ""
        if previous and math.isfinite(previous[-1]["train_clean/loss"]) and previous[-1]["train_clean/loss"] > 0:
            drop = 1 - tl / previous[-1]["train_clean/loss"]
            trend = f"; clean train loss {'still falling' if drop > 0.05 else 'flat'} ({-drop:+.0%} since last)"
        return "underfitting", (
            f"clean train acc {ta:.2%} < {t['min_train_acc']:.0%} (val acc {va:.2%}, gap {gap * 100:+.1f} points)"
            f"{extra}{trend}"
        )
    return "healthy", (
        f"clean train acc {ta:.2%} >= {t['min_train_acc']:.0%}, val acc {va:.2%} (gap {gap * 100:+.1f} points), "
        f"val/train loss {vl:.4f}/{tl:.4f}"
    )


class GapMonitor(Callback):
    r"""Measure clean train metrics at every validation, log the train/val gap and diagnose the run.

    Logs ``train_clean/loss``, ``train_clean/acc``, ``gap/acc`` (clean train acc - val acc) and
    ``gap/loss_ratio`` (val loss / clean train loss) at each validation; prints one verdict line
    per validation (rank zero); draws ``curves.png`` in the run directory every epoch (logged to
    W&B); writes ``diagnosis.json`` and prints a rich table at the end of ``fit``.

    The clean loss is the plain cross-entropy of ``predict_logits`` (no label smoothing, class
    weights or mixup) - the same loss as ``val/loss`` - so the two compare like with like. Under
    DDP each rank scores its shard of the subset; the sums are all-reduced, so every rank has the
    same numbers and the same verdict. The measurement runs under ``isolate_rng`` and restores each
    submodule's train/eval mode, so a run with the monitor trains exactly like one without.

    Args:
        subset_size: training samples scored at each validation (fixed, stratified, seeded). 1000
            gives a standard error of at most 1.6 accuracy points (0.3 near 99 %), enough to tell
            99 % from 95 %; larger than the training split: the whole split is used (said once).
        min_train_acc: below this clean train accuracy the run is ``underfitting`` (default 0.99:
            a classifier should first reach ~99 % on its own training set).
        overfit_acc_gap: train - val accuracy at or above this - and at or above the train error,
            i.e. variance dominates bias - is ``overfitting`` (default 0.05: about 3 standard errors
            of the accuracy of a 95 %-accurate val set of 144 images, the digits split).
        overfit_loss_ratio: val / train loss at or above this (together with ``min_loss_gap``) is
            ``overfitting`` (default 2.0; the classic 0.8-vs-2.0 example is 2.5).
        min_loss_gap: the absolute val - train loss difference the ratio also needs (default 0.3
            nats): near-zero losses make any ratio large (0.01 vs 0.05 is 5x and harmless), and a
            converged classifier's val loss is dominated by its few confident errors (3 % errors at
            ~5 nats each is already 0.15).
        onset_rise: val loss this far above its minimum so far (relative; default 0.10), while the
            clean train loss keeps falling, is ``overfitting_onset``.
        onset_min_delta: the rise must also be at least this many nats (default 0.05): one
            confidently wrong image (~5 nats) among the 144 of the digits val split moves the
            val loss by 0.035, and near-zero losses make any relative rise large.
        chance_loss_frac: a clean train loss at or above this fraction of the chance-level loss
            ``ln(num_classes)`` counts as "high" (default 0.9).
        flat_window: validations over which a high loss must improve (default 3).
        min_improvement: relative improvement over ``flat_window`` below which a high loss is
            "flat": ``not_converging`` (default 0.05).
        stop_on: ``"overfitting"`` stops training after ``patience`` consecutive validations judged
            ``overfitting`` or ``overfitting_onset`` and restores the best weights at fit end
            (the checkpoint callback's best checkpoint, else the weights at the val-loss minimum).
            ``None`` (default): diagnose only.
        patience: consecutive over-fitting validations before stopping (default 2).
        plot_every_n_epochs: redraw ``curves.png`` every N epochs (the last epoch always).
        batch_size: batch size of the scoring pass (default: the datamodule's eval batch size).
        seed: seed of the subset choice.
        num_classes: for the chance-level loss (default: the datamodule's / module's).
        val_loss_key, val_acc_key: the logged validation metrics to compare with.
        print_report: print the rich table at the end of ``fit`` (rank zero).

    Example::

        from lit_recipes.callbacks import GapMonitor
        trainer = L.Trainer(max_epochs=20, callbacks=[GapMonitor(stop_on="overfitting")])
        trainer.fit(ClassifierModule("lenet5", num_classes=10, in_channels=1), datamodule=DigitsDataModule())
        # -> runs/.../curves.png, diagnosis.json; callback.history[-1]["verdict"]

    Raises:
        ValueError: a threshold out of range (at construction); no validation loop or no
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
        onset_min_delta: float = 0.05,
        chance_loss_frac: float = 0.9,
        flat_window: int = 3,
        min_improvement: float = 0.05,
        stop_on: Literal["overfitting"] | None = None,
        patience: int = 2,
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

        def number(v: Any) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        def integer(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        check("subset_size", subset_size, integer(subset_size) and subset_size >= 1, "an integer >= 1")
        check("min_train_acc", min_train_acc, number(min_train_acc) and 0 < min_train_acc <= 1, "in (0, 1]")
        check("overfit_acc_gap", overfit_acc_gap, number(overfit_acc_gap) and 0 < overfit_acc_gap < 1, "in (0, 1)")
        check("overfit_loss_ratio", overfit_loss_ratio, number(overfit_loss_ratio) and overfit_loss_ratio > 1, "> 1")
        check("min_loss_gap", min_loss_gap, number(min_loss_gap) and min_loss_gap >= 0, ">= 0")
        check("onset_rise", onset_rise, number(onset_rise) and onset_rise > 0, "> 0")
        check("onset_min_delta", onset_min_delta, number(onset_min_delta) and onset_min_delta >= 0, ">= 0")
        check("chance_loss_frac", chance_loss_frac, number(chance_loss_frac) and 0 < chance_loss_frac <= 2, "in (0, 2]")
        check("flat_window", flat_window, integer(flat_window) and flat_window >= 2, "an integer >= 2")
        check("min_improvement", min_improvement, number(min_improvement) and 0 <= min_improvement < 1, "in [0, 1)")
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
        self.thresholds = {
            "min_train_acc": float(min_train_acc),
            "overfit_acc_gap": float(overfit_acc_gap),
            "overfit_loss_ratio": float(overfit_loss_ratio),
            "min_loss_gap": float(min_loss_gap),
            "onset_rise": float(onset_rise),
            "onset_min_delta": float(onset_min_delta),
            "chance_loss_frac": float(chance_loss_frac),
            "flat_window": int(flat_window),
            "min_improvement": float(min_improvement),
        }
        self.stop_on = stop_on
        self.patience = patience
        self.plot_every_n_epochs = plot_every_n_epochs
        self.batch_size = batch_size
        self.seed = seed
        self.num_classes = num_classes
        self.val_loss_key = val_loss_key
        self.val_acc_key = val_acc_key
        self.print_report = print_report

        self.history: list[dict[str, Any]] = []
        self.train_running: list[dict[str, Any]] = []
        self.subset: np.ndarray | None = None
        self.bad_count = 0
        self.stopped_epoch: int | None = None
        self.diagnosis: dict[str, Any] | None = None
        self._loader = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self._best_val_loss = math.inf

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
        self._loader = None  # built at the first measurement (after a resume restored the subset)

    # ------------------------------------------------------------------ the measurement
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[float, float, int]:
        """Clean ``(loss, acc, count)`` on the subset, summed over ranks (every rank gets the same)."""
        if self._loader is None:
            self._loader = trainer.datamodule.eval_dataloader(
                "train",
                indices=self.subset,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
                batch_size=self.batch_size,
            )
        totals = torch.zeros(3, dtype=torch.float64, device=pl_module.device)
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
                    loss = F.cross_entropy(logits.float(), targets, reduction="sum")
                    correct = (logits.argmax(-1) == targets).sum()
                    totals += torch.stack(
                        [
                            loss.double(),
                            correct.double(),
                            torch.tensor(len(targets), device=totals.device, dtype=torch.float64),
                        ]
                    )
        finally:
            for m, mode in modes:
                m.train(mode)
        totals = trainer.strategy.reduce(totals, reduce_op="sum")
        loss_sum, correct, count = (float(v) for v in totals.cpu())
        return loss_sum / max(count, 1), correct / max(count, 1), int(count)

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
        tl, ta, count = self.measure(trainer, pl_module)
        vl = self._val_metric(trainer, self.val_loss_key)
        va = self._val_metric(trainer, self.val_acc_key)
        record: dict[str, Any] = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "train_clean/loss": tl,
            "train_clean/acc": ta,
            "val/loss": vl,
            "val/acc": va,
            "gap/acc": ta - va,
            "gap/loss_ratio": vl / max(tl, 1e-8),
            "subset_count": count,
        }
        verdict, evidence = diagnose(record, self.history, self.num_classes, self.thresholds)
        record.update(verdict=verdict, evidence=evidence, remedy=REMEDIES[verdict])
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        total = trainer.num_training_batches
        record["epoch_fraction"] = min(1.0, done / total) if total and math.isfinite(total) and done else 1.0
        self.history.append(record)
        for key in ("train_clean/loss", "train_clean/acc", "gap/acc", "gap/loss_ratio"):
            value = record[key] if math.isfinite(record[key]) else float("nan")
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False)
        rank_zero_info(f"GapMonitor epoch {record['epoch']}: {verdict} - {evidence}")
        self._track_best(pl_module, vl)
        self._maybe_stop(trainer, verdict)

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
            rank_zero_info(
                f"GapMonitor: stopping at epoch {self.stopped_epoch} after {self.bad_count} over-fitting validations"
            )

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        running = {"epoch": trainer.current_epoch}
        for key in ("train/loss", "train/acc"):
            if key in metrics:
                running[key] = float(metrics[key])
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
        if self.history and self.print_report:
            from rich.console import Console

            from lit_recipes.callbacks.learning_curves import report_table

            Console(width=max(Console().width, 120)).print(report_table(self.history, self.diagnosis["final"]))

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
        """The diagnosis: final verdict, val-loss minimum, overfitting onset, thresholds, history."""
        final = (
            dict(self.history[-1]) if self.history else {"verdict": None, "evidence": "no validation ran", "remedy": ""}
        )
        losses = [(r["val/loss"], i) for i, r in enumerate(self.history) if math.isfinite(r["val/loss"])]
        best = self.history[min(losses)[1]] if losses else None
        first_over = next(
            (r["epoch"] for r in self.history if r["verdict"] in ("overfitting_onset", "overfitting")), None
        )
        onset = next(
            (
                r["epoch"]
                for i, r in enumerate(self.history)
                if val_loss_onset(
                    r, self.history[:i], self.thresholds["onset_rise"], self.thresholds["onset_min_delta"]
                )
                is not None
            ),
            None,
        )
        counts = {v: sum(r["verdict"] == v for r in self.history) for v in VERDICTS}
        return {
            "final": {k: final.get(k) for k in ("epoch", "verdict", "evidence", "remedy")},
            "verdict_counts": counts,
            "val_loss_min_epoch": best["epoch"] if best else None,
            "val_loss_min": best["val/loss"] if best else None,
            "onset_epoch": onset,
            "first_overfitting_epoch": first_over,
            "stopped_epoch": self.stopped_epoch,
            "subset_size": int(len(self.subset)) if self.subset is not None else None,
            "thresholds": dict(self.thresholds),
            "history": self.history,
            "train_running": self.train_running,
        }

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": deepcopy(self.history),
            "train_running": deepcopy(self.train_running),
            "subset": None if self.subset is None else self.subset.tolist(),
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
        self.bad_count = int(state_dict.get("bad_count", 0))
        self.stopped_epoch = state_dict.get("stopped_epoch")
        self._best_val_loss = float(state_dict.get("best_val_loss", math.inf))
        self._loader = None


__all__ = ["GapMonitor", "REMEDIES", "VERDICTS", "diagnose", "stratified_subset", "val_loss_onset"]
