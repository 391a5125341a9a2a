"""TrainStats: the training step's loss and top-k accuracies in one metric, against torchmetrics and by hand."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_recipes.metrics import TrainStats, topk_correct


def test_matches_torchmetrics_over_several_batches():
    g = torch.Generator().manual_seed(0)
    stats = TrainStats(top_k=(1, 5))
    acc, acc5, mean = (
        MulticlassAccuracy(10, average="micro"),
        MulticlassAccuracy(10, top_k=5, average="micro"),
        MeanMetric(),
    )
    for n in (64, 64, 17):  # a short last batch: the means are per sample, not per batch
        logits, target = torch.randn(n, 10, generator=g), torch.randint(0, 10, (n,), generator=g)
        loss = torch.rand((), generator=g)
        stats.update(logits, target, loss)
        acc.update(logits, target)
        acc5.update(logits, target)
        mean.update(loss, weight=n)
    out = stats.compute()
    assert set(out) == {"loss", "acc", "acc5"}
    assert out["acc"] == pytest.approx(float(acc.compute()), abs=1e-7)
    assert out["acc5"] == pytest.approx(float(acc5.compute()), abs=1e-7)
    assert out["loss"] == pytest.approx(float(mean.compute()), abs=1e-6)
    stats.reset()
    assert int(stats.total) == 0 and stats.correct.tolist() == [0, 0]


def test_topk_correct_by_hand_and_k_above_the_class_count():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    target = torch.tensor([0, 2, 0])  # ranks 1, 2, 3
    assert topk_correct(logits, target, (1, 2, 3, 5)).tolist() == [1, 2, 3, 3]
    with pytest.raises(ValueError, match="top_k must be a non-empty list of integers >= 1"):
        TrainStats(top_k=(0,))


def test_module_logs_the_same_epoch_values(trainer_kwargs, digits_dm):
    """The epoch's train/acc, train/acc5 and train/loss equal a recount over the batches the model saw."""
    from lit_recipes.module import ClassifierModule

    class Recount(L.Callback):
        def __init__(self):
            self.correct = self.correct5 = self.n = 0
            self.loss = 0.0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == trainer.max_epochs - 1:
                self.loss += float(outputs["loss"]) * len(batch[1])
                self.n += len(batch[1])

    model = ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=0.05)
    recount = Recount()
    trainer = L.Trainer(**{**trainer_kwargs, "max_epochs": 2, "limit_val_batches": 1}, callbacks=[recount])
    trainer.fit(model, datamodule=digits_dm)
    m = trainer.callback_metrics
    assert float(m["train/loss"]) == pytest.approx(recount.loss / recount.n, rel=1e-5)
    assert 0.0 <= float(m["train/acc"]) <= float(m["train/acc5"]) <= 1.0
    assert int(model.train_stats.total) == 0  # reset at the end of every epoch
