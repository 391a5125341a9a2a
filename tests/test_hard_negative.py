"""HardNegativeMining on real (small) runs: the weights it sets, the batches the next epoch draws,
the two-stage start, stopping, resume, views and bad input."""

from __future__ import annotations

import json
import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_recipes.callbacks import HardNegativeMining
from lit_recipes.datamodules import DigitsDataModule, OneVsRestDataModule, WeightedEpochSampler
from lit_recipes.module import ClassifierModule


class BatchRecorder(Callback):
    """Records the pool indices of every training batch and the sampler weights at each epoch start."""

    def __init__(self) -> None:
        self.indices: dict[int, list[int]] = {}
        self.weights: dict[int, torch.Tensor | None] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        w = trainer.datamodule.sample_weights
        self.weights[trainer.current_epoch] = None if w is None else w.clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.indices.setdefault(trainer.current_epoch, []).extend(batch[2].tolist())


class LogConstant(Callback):
    """Logs a metric that never improves."""

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log("const", 1.0)


def fit(dm, callbacks, trainer_kwargs, num_classes=10, model="lenet5", lr=0.05, seed=0, **overrides):
    L.seed_everything(seed, verbose=False)
    module = ClassifierModule(model, num_classes=num_classes, in_channels=1, lr=lr)
    trainer = L.Trainer(**{**trainer_kwargs, **overrides}, callbacks=callbacks)
    trainer.fit(module, datamodule=dm)
    return trainer, module


def misclassified(module, dm, indices):
    module.eval()
    wrong = []
    with torch.no_grad():
        for images, targets, idx in dm.eval_dataloader("pool", indices=indices):
            wrong += idx[module.predict_logits(images).argmax(-1) != targets].tolist()
    return sorted(wrong)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"boost": 0}, "boost must be a finite number > 0"),
        ({"boost": -2.0}, "boost must be a finite number > 0"),
        ({"every_n_epochs": -1}, "every_n_epochs"),
        ({"every_n_epochs": 0, "mine_on_plateau": 0}, "never mines"),
        ({"selection": "random"}, "selection must be"),
        ({"fraction": 0.0}, "fraction must be in"),
        ({"initial_negative_fraction": 0.0}, "initial_negative_fraction must be in"),
        ({"initial_negative_fraction": 0.5}, "needs negative_classes"),
        ({"negative_classes": []}, "at least one class"),
        ({"patience": 0}, "patience must be"),
        ({"mode": "up"}, "mode must be"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HardNegativeMining(**kwargs)


def test_unknown_negative_class_is_named(trainer_kwargs):
    dm = OneVsRestDataModule(DigitsDataModule(batch_size=64), positive="8")
    cb = HardNegativeMining(negative_classes=["rest", "ship"])
    with pytest.raises(ValueError, match=r"negative_classes: unknown class 'ship'; the classes are rest, 8"):
        fit(dm, [cb], trainer_kwargs, num_classes=2)


def test_datamodule_without_index_contract(trainer_kwargs):
    from torch.utils.data import DataLoader, TensorDataset

    class PlainDataModule(L.LightningDataModule):
        def train_dataloader(self):
            x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
            return DataLoader(TensorDataset(x, y, torch.arange(64)), batch_size=32)

    with pytest.raises(ValueError, match=r"index contract of DESIGN.md §3.*PlainDataModule lacks train_targets"):
        fit(PlainDataModule(), [HardNegativeMining()], trainer_kwargs)


def test_unknown_positive_class_of_one_vs_rest():
    dm = OneVsRestDataModule(DigitsDataModule(), positive="ship")
    with pytest.raises(ValueError, match=r"positive: unknown class 'ship'; the classes are 0, 1"):
        dm.setup("fit")


# ---------------------------------------------------------------------------------------------- rounds
def test_round_boosts_misclassified_and_next_epoch_draws_from_new_weights(trainer_kwargs):
    dm = DigitsDataModule(batch_size=64)
    rec = BatchRecorder()
    cb = HardNegativeMining(every_n_epochs=1, boost=4.0, top_k=8)
    trainer, module = fit(dm, [rec, cb], trainer_kwargs, max_epochs=2, lr=0.05, limit_train_batches=8)
    train_idx = np.asarray(dm.train_indices)

    # epoch 0: plain shuffling, no sample twice
    assert rec.weights[0] is None
    assert len(set(rec.indices[0])) == len(rec.indices[0]) == 8 * 64 and set(rec.indices[0]) <= set(train_idx)
    # epoch 1: the reloaded loader draws exactly what the weighted sampler of round 1 draws
    w1 = rec.weights[1]
    assert w1 is not None and set(w1[train_idx].unique().tolist()) == {1.0, 4.0}
    sampler = WeightedEpochSampler(w1[torch.as_tensor(train_idx)], seed=dm.seed)
    sampler.set_epoch(1)
    assert rec.indices[1] == train_idx[list(iter(sampler))].tolist()[: 8 * 64]

    # the last round ran on the final model: its hard set is exactly what that model misclassifies
    assert [h["round"] for h in cb.history] == [1, 2]
    expected = misclassified(module, dm, train_idx)
    hard = torch.nonzero(cb.hard).flatten().tolist()
    assert hard == expected and cb.history[-1]["num_hard"] == len(expected) > 0
    w = dm.sample_weights
    assert torch.all(w[hard] == 4.0)
    assert torch.all(w[np.setdiff1d(train_idx, hard)] == 1.0)
    assert cb.history[-1]["num_repeat"] == int((cb.hard & torch.as_tensor(w1 == 4.0)).sum())
    assert cb.history[-1]["pool_error"] == pytest.approx(len(expected) / len(train_idx))
    # scoring is one pass over the pool and is logged
    assert trainer.callback_metrics["mining/num_hard"] == len(expected)
    assert 0 < cb.history[-1]["seconds"]

    # views: a PNG grid per round and the JSON history in the run directory
    out = trainer.default_root_dir + "/hard_negative_mining"
    history = json.load(open(out + "/history.json"))
    assert [h["num_hard"] for h in history] == [h["num_hard"] for h in cb.history]
    from PIL import Image

    assert Image.open(out + "/hardest_round02_epoch001.png").size[0] > 400
    losses = [h["loss"] for h in history[-1]["hardest"]]
    assert len(losses) == 8 and losses == sorted(losses, reverse=True)


def test_top_loss_selection(trainer_kwargs):
    dm = DigitsDataModule(batch_size=64)
    cb = HardNegativeMining(selection="top_loss", fraction=0.05, boost=2.0, top_k=0)
    fit(dm, [cb], trainer_kwargs, max_epochs=1, limit_train_batches=4)
    k = math.ceil(0.05 * len(dm.train_indices))
    assert cb.history[0]["num_hard"] == k == int((dm.sample_weights == 2.0).sum())


def test_two_stage_start_pulls_false_positives_in(trainer_kwargs):
    dm = OneVsRestDataModule(DigitsDataModule(batch_size=32), positive="8")
    rec = BatchRecorder()
    cb = HardNegativeMining(negative_classes=["rest"], initial_negative_fraction=0.2, boost=3.0, top_k=4)
    fit(dm, [rec, cb], trainer_kwargs, num_classes=2, max_epochs=2, model="lenet5_bn", limit_train_batches=12)
    train_idx = np.asarray(dm.train_indices)
    targets = np.asarray(dm.train_targets)
    negatives = train_idx[targets[train_idx] == 0]
    positives = train_idx[targets[train_idx] == 1]

    w0 = rec.weights[0]  # the two-stage start: every positive, 20% of the negatives
    in_play = np.flatnonzero(w0.numpy() > 0)
    assert set(positives) <= set(in_play)
    assert len(np.intersect1d(in_play, negatives)) == round(0.2 * len(negatives))
    assert set(rec.indices[0]) <= set(in_play)  # held-back negatives are never drawn in stage one

    # round 1 scored every negative (held-back included) and pulled its false positives in
    first = cb.history[0]
    assert first["pool_size"] == len(negatives) and first["num_new"] > 0
    w1 = rec.weights[1]
    pulled = np.setdiff1d(np.flatnonzero(w1.numpy() > 0), in_play)
    assert len(pulled) == first["num_new"] and set(pulled) <= set(negatives)
    assert torch.all(w1[pulled] == 3.0)
    held_back = np.setdiff1d(negatives, in_play)
    assert int((w1[held_back] == 0).sum()) == len(held_back) - len(pulled)  # the easy ones stay out
    assert set(rec.indices[1]) <= set(np.flatnonzero(w1.numpy() > 0))
    assert len(set(rec.indices[1]) & set(pulled)) > 0


def test_no_hard_examples_keeps_weights(trainer_kwargs):
    dm = OneVsRestDataModule(DigitsDataModule(batch_size=64), positive="8")
    cb = HardNegativeMining(negative_classes=["rest"], top_k=0)
    L.seed_everything(0, verbose=False)
    module = ClassifierModule("lenet5", num_classes=2, in_channels=1, lr=1e-9)
    with torch.no_grad():  # a model that always says "rest": no false positive can exist
        module.model.classifier.weight.zero_()
        module.model.classifier.bias.copy_(torch.tensor([50.0, -50.0]))
    trainer = L.Trainer(**{**trainer_kwargs, "limit_train_batches": 2}, callbacks=[cb])
    with pytest.warns(UserWarning, match="no hard examples among the .* pool samples; sampling weights kept"):
        trainer.fit(module, datamodule=dm)
    assert dm.sample_weights is None
    assert cb.history[0]["num_hard"] == 0 and cb.history[0]["applied"] is False


def test_patience_stops_mining_and_plateau_trigger(trainer_kwargs):
    dm = DigitsDataModule(batch_size=64, test_fraction=0.7)
    cb = HardNegativeMining(every_n_epochs=1, monitor="const", patience=2, top_k=0)
    fit(dm, [LogConstant(), cb], trainer_kwargs, max_epochs=5, limit_train_batches=2, limit_val_batches=1)
    # round 1 sets the best, round 2 is one without improvement, the third pass hits patience=2
    assert [(h["round"], h["applied"]) for h in cb.history] == [(1, True), (2, True), (2, False)]
    assert cb.stopped and len(cb.history) == 3  # no scoring after stopping

    dm = DigitsDataModule(batch_size=64, test_fraction=0.7)
    cb = HardNegativeMining(every_n_epochs=0, mine_on_plateau=2, monitor="const", patience=5, top_k=0)
    fit(dm, [LogConstant(), cb], trainer_kwargs, max_epochs=5, limit_train_batches=2, limit_val_batches=1)
    # epoch 0 sets the best; 2 epochs without improvement -> mine after epochs 2 and 4
    assert [h["epoch"] for h in cb.history] == [2, 4]


def test_resume_continues_the_same_round(trainer_kwargs, tmp_path):
    kwargs = {**trainer_kwargs, "enable_checkpointing": True, "limit_train_batches": 3, "limit_val_batches": 1}
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb = HardNegativeMining(every_n_epochs=1, top_k=0, selection="top_loss", fraction=0.1)
    dm = DigitsDataModule(batch_size=64)
    fit(dm, [cb, ckpt], kwargs, max_epochs=2)
    assert cb.round == 2

    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    (saved,) = (v for k, v in state.items() if k.startswith("HardNegativeMining"))
    assert saved["round"] == 2 and torch.equal(saved["hard"], cb.hard)

    resumed = HardNegativeMining(every_n_epochs=1, top_k=0, selection="top_loss", fraction=0.1)
    dm2 = DigitsDataModule(batch_size=64)
    rec = BatchRecorder()
    L.seed_everything(0, verbose=False)
    module = ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=0.05)
    trainer = L.Trainer(
        **{**kwargs, "max_epochs": 3}, callbacks=[rec, resumed, ModelCheckpoint(dirpath=tmp_path / "c2")]
    )
    trainer.fit(module, datamodule=dm2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    # epoch 2 trained on round 2's weights, then round 3 ran
    assert torch.equal(rec.weights[2], cb.weights())
    assert [h["round"] for h in resumed.history] == [1, 2, 3] and resumed.round == 3


def test_wandb_table_of_hardest_examples(trainer_kwargs, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    dm = DigitsDataModule(batch_size=64)
    cb = HardNegativeMining(top_k=4)
    logger = WandbLogger(save_dir=str(tmp_path), project="hnm", offline=True)
    fit(dm, [cb], {**trainer_kwargs, "logger": logger}, limit_train_batches=2, limit_val_batches=1)
    logger.experiment.finish()
    tables = list(tmp_path.rglob("mining/hardest_table*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["round", "index", "image", "true", "pred", "loss"] and len(table["data"]) == 4
    assert list(tmp_path.rglob("mining/hardest*.png"))  # the grid, logged as an image


# ---------------------------------------------------------------------------------------------- DDP
@pytest.mark.ddp
def test_ddp_identical_weights_disjoint_shards(torchrun, tmp_path):
    from pathlib import Path

    script = Path(__file__).parent / "ddp_scripts" / "hard_negative_ddp.py"
    res = torchrun([str(script), str(tmp_path)], nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    # every rank built the same weights, after each round and at the end
    assert r0["epoch_weights"] == r1["epoch_weights"] and r0["epoch_weights"]["1"] is not None
    assert r0["final_weights"] == r1["final_weights"] == r0["mining_weights"] == r1["mining_weights"]
    assert r0["num_hard"] == r1["num_hard"] and len(r0["num_hard"]) == 2
    # each rank scored its own shard: disjoint, and together the whole pool
    s0, s1 = set(r0["scored"]), set(r1["scored"])
    assert not s0 & s1 and s0 | s1 == set(r0["candidates"]) and abs(len(s0) - len(s1)) <= 1
    # epoch 1 batches: each rank drew its strided shard of the same weighted draw
    train_idx = np.asarray(r0["train_indices"])
    w = torch.tensor(r0["weights_epoch1"], dtype=torch.double)[torch.as_tensor(train_idx)]
    for r, rec in enumerate((r0, r1)):
        sampler = WeightedEpochSampler(w, seed=r0["seed"], num_replicas=2, rank=r)
        sampler.set_epoch(1)
        expected = train_idx[list(iter(sampler))].tolist()
        assert rec["batches"]["1"] == expected[: len(rec["batches"]["1"])] and len(rec["batches"]["1"]) == 4 * 32
