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
    """The epoch's train/loss, train/acc and train/acc5 equal a recount over the logits, targets and losses of
    every training step of that epoch (recorded as the module computed them)."""
    from lit_recipes.module import ClassifierModule

    model = ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=0.05)
    seen: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
    real_loss = model.training_loss

    def recording_loss(batch):
        loss, logits, targets = real_loss(batch)
        seen.append((model.current_epoch, logits.detach().clone(), targets.clone(), float(loss.detach())))
        return loss, logits, targets

    model.training_loss = recording_loss
    trainer = L.Trainer(**{**trainer_kwargs, "max_epochs": 2, "limit_val_batches": 1})
    trainer.fit(model, datamodule=digits_dm)
    last = [s for s in seen if s[0] == 1]
    n = sum(len(t) for _, _, t, _ in last)
    top5 = [lg.topk(5, dim=1).indices for _, lg, _, _ in last]
    acc = sum(int((lg.argmax(1) == t).sum()) for _, lg, t, _ in last) / n
    acc5 = sum(int((k == t[:, None]).any(1).sum()) for k, (_, _, t, _) in zip(top5, last)) / n
    loss = sum(v * len(t) for _, _, t, v in last) / n
    m = trainer.callback_metrics
    assert float(m["train/acc"]) == pytest.approx(acc, abs=1e-6)
    assert float(m["train/acc5"]) == pytest.approx(acc5, abs=1e-6)
    assert float(m["train/loss"]) == pytest.approx(loss, rel=1e-5)
    assert 0.0 < acc <= acc5 <= 1.0
    assert int(model.train_stats.total) == 0  # reset at the end of every epoch
