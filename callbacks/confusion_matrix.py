r"""
ConfusionMatrix
===============

At the end of every validation (and test) run: the confusion matrix of the whole split, accumulated
across ranks with torchmetrics' ``MulticlassConfusionMatrix`` (``dist_reduce_fx="sum"``), the
per-class accuracy (recall) read off its diagonal, a PNG (matrix + per-class accuracy bars) and a
JSON file in the run directory, and the PNG logged to W&B as ``val/confusion_matrix``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torchmetrics.classification import MulticlassConfusionMatrix
from typing_extensions import override

from lit_recipes.artifacts import log_image, run_dir, save_figure, save_json


def per_class_accuracy(matrix: torch.Tensor) -> torch.Tensor:
    """Per-class accuracy (recall) from a confusion matrix with true classes on the rows (NaN: no sample)."""
    matrix = matrix.double()
    support = matrix.sum(1)
    return torch.where(support > 0, matrix.diagonal() / support.clamp_min(1), torch.full_like(support, float("nan")))


def plot_confusion(matrix: torch.Tensor, class_names: list[str], title: str, annotate_max: int = 20):
    """A matplotlib figure: the row-normalised matrix (counts annotated) and per-class accuracy bars."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    m = matrix.double().cpu()
    norm = (m / m.sum(1, keepdim=True).clamp_min(1)).numpy()
    acc = per_class_accuracy(m).numpy()
    n = len(class_names)
    size = max(5.0, 0.45 * n + 3)
    fig, (ax, bar) = plt.subplots(1, 2, figsize=(size * 1.7, size), gridspec_kw={"width_ratios": [1.3, 0.7]})
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= annotate_max:
        counts = m.long().numpy()
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.barh(range(n), acc, color="tab:blue")
    bar.set_yticks(range(n), class_names, fontsize=8)
    bar.invert_yaxis()
    bar.set_xlim(0, 1)
    bar.set_xlabel("per-class accuracy")
    fig.tight_layout()
    return fig


class ConfusionMatrix(Callback):
    r"""Confusion matrix and per-class accuracy at the end of validation / test, as PNG, JSON and W&B image.

    Args:
        stages: which runs to cover: any of ``"val"``, ``"test"``.
        every_n_epochs: validation matrices every n epochs (test: always).
        annotate_max: write the counts into the cells up to this many classes.

    Predictions come from the logits the ``validation_step`` / ``test_step`` returns when it returns
    a ``(batch, num_classes)`` tensor (or a dict with ``"logits"``); otherwise the callback runs
    ``pl_module.predict_logits`` (or the forward pass) on the batch itself, under ``no_grad``.

    Files in the run directory: ``confusion_matrix_val.png`` / ``.json`` (the latest epoch) and
    ``confusion_matrix_test.png`` / ``.json``. ``last`` holds the latest result per stage.

    Example::

        from lightning.pytorch import Trainer
        from lit_recipes.callbacks.confusion_matrix import ConfusionMatrix

        trainer = Trainer(callbacks=[ConfusionMatrix()])
    """

    def __init__(self, stages: list[str] | None = None, every_n_epochs: int = 1, annotate_max: int = 20) -> None:
        super().__init__()
        stages = ["val", "test"] if stages is None else list(stages)
        bad = [s for s in stages if s not in ("val", "test")]
        if bad:
            raise ValueError(f"ConfusionMatrix: stages must be among val, test; got {bad}")
        if every_n_epochs < 1:
            raise ValueError(f"ConfusionMatrix: every_n_epochs must be >= 1, got {every_n_epochs}")
        self.stages = stages
        self.every_n_epochs = every_n_epochs
        self.annotate_max = annotate_max
        self.metrics: dict[str, MulticlassConfusionMatrix] = {}
        self.last: dict[str, dict[str, Any]] = {}

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        num_classes = int(getattr(pl_module, "num_classes", 0) or trainer.datamodule.num_classes)
        for s in self.stages:
            self.metrics[s] = MulticlassConfusionMatrix(num_classes).to(pl_module.device)

    def _active(self, trainer: L.Trainer, stage: str) -> bool:
        if stage not in self.metrics or trainer.sanity_checking:
            return False
        return stage == "test" or (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @staticmethod
    def _logits(pl_module: L.LightningModule, outputs: Any, batch: Any) -> torch.Tensor:
        if isinstance(outputs, dict):
            outputs = outputs.get("logits")
        if isinstance(outputs, torch.Tensor) and outputs.ndim == 2 and outputs.shape[0] == len(batch[1]):
            return outputs.detach()
        with torch.no_grad():
            fn = getattr(pl_module, "predict_logits", pl_module)
            return fn(batch[0])

    def _update(self, trainer, pl_module, outputs, batch, stage: str) -> None:
        if not self._active(trainer, stage):
            return
        metric = self.metrics[stage].to(pl_module.device)
        metric.update(self._logits(pl_module, outputs, batch).argmax(-1), batch[1])

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(trainer, pl_module, outputs, batch, "val")

    @override
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(trainer, pl_module, outputs, batch, "test")

    def _finish(self, trainer: L.Trainer, stage: str) -> None:
        if not self._active(trainer, stage):
            if stage in self.metrics:
                self.metrics[stage].reset()
            return
        matrix = self.metrics[stage].compute().cpu()  # every rank: the sum over ranks (a collective)
        self.metrics[stage].reset()
        names = _class_names(trainer, matrix.shape[0])
        acc = per_class_accuracy(matrix)
        result = {
            "stage": stage,
            "epoch": trainer.current_epoch,
            "class_names": names,
            "matrix": matrix.long().tolist(),
            "per_class_acc": [None if torch.isnan(a) else float(a) for a in acc],
            "accuracy": float(matrix.diagonal().sum() / matrix.sum().clamp_min(1)),
        }
        self.last[stage] = result
        if trainer.is_global_zero:
            out = run_dir(trainer)
            save_json(out / f"confusion_matrix_{stage}.json", result)
            title = f"{stage} confusion (epoch {trainer.current_epoch}, acc {result['accuracy']:.3f})"
            png = save_figure(
                plot_confusion(matrix, names, title, self.annotate_max), out / f"confusion_matrix_{stage}.png"
            )
            log_image(trainer, f"{stage}/confusion_matrix", png)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, "val")

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, "test")


def _class_names(trainer: L.Trainer, n: int) -> list[str]:
    dm = getattr(trainer, "datamodule", None)
    names = None
    try:
        names = list(dm.class_names) if dm is not None and hasattr(dm, "class_names") else None
    except (ValueError, NotImplementedError):
        names = None
    return [str(c) for c in names] if names and len(names) == n else [str(i) for i in range(n)]


__all__ = ["ConfusionMatrix", "per_class_accuracy", "plot_confusion"]
