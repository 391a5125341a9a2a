"""GapMonitor on real digits runs: each verdict from a deliberately built case, plus the plumbing.

The rules themselves are tested on hand-built histories in ``test_doctor_rules.py``; here every
assertion on a real run holds with a margin (no epoch-level coincidences)."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lit_recipes.callbacks import GapMonitor
from lit_recipes.callbacks.doctor_rules import VERDICTS
from lit_recipes.callbacks.gap_monitor import REMEDIES, stratified_subset
from lit_recipes.contracts import ContractError
from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.module import ClassifierModule
from lit_recipes.schedules import OneCycle

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Small models on a shared 2-core machine: one intra-op thread is faster and steadier."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class PooledLinear(nn.Module):
    """Far too small for digits: a linear layer on the 2x2 average-pooled image (4 features)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(x).flatten(1))


class WideMLP(nn.Module):
    """Far too big for 71 training images: 64-512-512-10, no dropout."""

    def __init__(self, width: int = 512) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(1), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.classifier = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


def fit(trainer_kwargs, model, monitor, dm=None, **overrides):
    kwargs = {**trainer_kwargs, **overrides}
    callbacks = kwargs.pop("callbacks", [])
    trainer = L.Trainer(callbacks=[monitor, *callbacks], **kwargs)
    trainer.fit(model, datamodule=dm or DigitsDataModule(batch_size=64))
    return trainer


def few_samples_overfit(trainer_kwargs, monitor, epochs=8, **overrides):
    """WideMLP + Adam on 71 training digits (val_fraction 0.95), no regularisation."""
    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=16, val_fraction=0.95)
    model = ClassifierModule(WideMLP(), num_classes=10, in_channels=1, lr=3e-3, optimizer=partial(torch.optim.Adam))
    return fit(trainer_kwargs, model, monitor, dm, max_epochs=epochs, **overrides)


def verdicts(monitor):
    return [r["verdict"] for r in monitor.history]


# ---------------------------------------------------------------------------------- real runs
def test_healthy_recipe_plumbing_and_diagnosis_schema(trainer_kwargs, tmp_path, caplog):
    L.seed_everything(1, verbose=False)
    monitor = GapMonitor()
    model = ClassifierModule(
        "lenet5_bn",
        num_classes=10,
        in_channels=1,
        lr=0.05,
        init="kaiming_normal",
        lr_scheduler=partial(OneCycle, div=10, annihilation_pct=0.1),
    )
    with caplog.at_level("INFO", logger="lightning.pytorch"):
        trainer = fit(trainer_kwargs, model, monitor, max_epochs=10)
    hist = monitor.history
    final = hist[-1]
    # margins, not verdicts: the model fits its training set and generalises; the doctor finds no
    # over-fitting, no divergence and no missing fit (the verdict-level figures are in bench_doctor.py)
    assert final["train_clean/acc"] >= 0.99 and final["val/acc"] >= 0.93
    assert monitor.diagnosis["final"]["verdict"] not in ("overfitting", "not_converging", "underfitting")
    # schedule awareness: while the 1cycle LR rises (first 45 % of the steps) no problem is named
    rising = [r for r in hist if r["warming_up"]]
    assert len(rising) >= 3 and all(r["verdict"] == "warming_up" for r in rising)
    assert hist[0]["verdict"] == "warming_up" and final["verdict"] != "warming_up"
    # logged, and the logged values are the record's
    metrics = trainer.callback_metrics
    for key in ("train_clean/loss", "train_clean/acc", "gap/acc", "gap/loss_ratio"):
        assert math.isclose(float(metrics[key]), final[key], rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(float(metrics["doctor/confidence"]), final["confidence"], abs_tol=1e-4)
    assert math.isclose(final["gap/acc"], final["train_clean/acc"] - final["val/acc"], abs_tol=1e-9)
    assert all("train/loss" in r for r in hist) and len(monitor.train_running) == 10
    # the console line: verdict, confidence, evidence
    assert f"GapMonitor epoch 9: {final['verdict']} (confidence {final['confidence']:.2f}) - " in caplog.text
    # the subset: stratified, fixed, of the default size
    dm = trainer.datamodule
    assert len(monitor.subset) == 1000 and np.isin(monitor.subset, dm.train_indices).all()
    shares = np.bincount(dm.train_targets[monitor.subset], minlength=10) / 1000
    full = np.bincount(dm.train_targets[dm.train_indices], minlength=10) / len(dm.train_indices)
    assert np.abs(shares - full).max() < 0.002
    # the clean numbers (and their spread) are what the final model scores on that subset in eval mode
    model.eval()

    def scored(loader):
        with torch.no_grad():
            outs = [(model(b[0]), b[1]) for b in loader]
        logits, targets = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        return F.cross_entropy(logits, targets, reduction="none").double(), (logits.argmax(-1) == targets).double()

    losses, correct = scored(dm.eval_dataloader("train", indices=monitor.subset))
    assert math.isclose(float(correct.mean()), final["train_clean/acc"], abs_tol=1e-9)
    assert math.isclose(float(losses.mean()), final["train_clean/loss"], rel_tol=1e-4)
    assert math.isclose(float(losses.std()), final["train_clean/loss_sd"], rel_tol=1e-3, abs_tol=1e-7)
    val_losses, val_correct = scored(dm.val_dataloader())
    assert final["val_count"] == len(dm.val_indices) == len(val_losses)
    assert math.isclose(float(val_losses.std()), final["val/loss_sd"], rel_tol=1e-3, abs_tol=1e-7)
    # curves and diagnosis in the run directory (no logger: default_root_dir)
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    diagnosis = json.loads((tmp_path / "diagnosis.json").read_text())
    assert set(diagnosis["final"]) == {"epoch", "verdict", "confidence", "evidence", "remedy"}
    assert diagnosis["final"]["evidence"].startswith(diagnosis["final"]["verdict"] + "; best val loss ")
    assert [r["verdict"] for r in diagnosis["history"]] == [r["verdict"] for r in hist]
    assert diagnosis["verdict_changes"] == sum(a["verdict"] != b["verdict"] for a, b in zip(hist, hist[1:]))
    assert diagnosis["thresholds"]["min_train_acc"] == 0.99 and diagnosis["thresholds"]["confidence_level"] == 0.9
    for r in diagnosis["history"]:
        assert r["verdict"] in VERDICTS and r["raw_verdict"] in VERDICTS and 0 <= r["confidence"] <= 1
        assert r["evidence"] and r["remedy"] == REMEDIES[r["verdict"]]
        for name, point in (("train_acc", r["train_clean/acc"]), ("val_acc", r["val/acc"]), ("gap_acc", r["gap/acc"])):
            lo, hi = r["intervals"][name]
            assert lo <= point + 1e-9 and point - 1e-9 <= hi, (name, r["intervals"])
        lo, hi = r["intervals"]["val_loss"]
        assert lo < r["val/loss"] < hi


def test_too_small_model_underfits(trainer_kwargs):
    L.seed_everything(0, verbose=False)
    monitor = GapMonitor(subset_size=300)
    model = ClassifierModule(PooledLinear(), num_classes=10, in_channels=1, lr=0.5)
    fit(trainer_kwargs, model, monitor, max_epochs=4, limit_train_batches=10, limit_val_batches=2)
    assert verdicts(monitor) == ["warming_up", "warming_up", "underfitting", "underfitting"], monitor.history
    final = monitor.history[-1]
    assert final["train_clean/acc"] < 0.7 and final["intervals"]["train_acc"][1] < 0.99
    assert abs(final["gap/acc"]) < 0.1  # no variance problem: a bias problem
    assert "bigger model" in final["remedy"] and "lr-find" in final["remedy"]
    assert monitor.diagnosis["final"]["verdict"] == "underfitting"


def test_big_model_few_samples_overfits_before_early_stopping(trainer_kwargs, tmp_path):
    monitor = GapMonitor()
    few_samples_overfit(trainer_kwargs, monitor, epochs=12)
    assert len(monitor.subset) == 71  # subset_size 1000 > the split: all of it
    final = monitor.history[-1]
    assert monitor.diagnosis["final"]["verdict"] == "overfitting"
    assert final["train_clean/acc"] == 1.0 and final["intervals"]["gap_acc"][0] >= 0.05
    assert "augmentation" in final["remedy"] and "dropout" in final["remedy"]
    diagnosis = json.loads((tmp_path / "diagnosis.json").read_text())
    val = [r["val/loss"] for r in monitor.history]
    assert diagnosis["val_loss_min_epoch"] == int(np.argmin(val))
    # flagged no later than EarlyStopping(monitor="val/loss", patience=3) would have stopped
    assert diagnosis["onset_epoch"] is not None
    if diagnosis["early_stopping_epoch"] is not None:
        assert diagnosis["onset_lead_epochs"] == diagnosis["early_stopping_epoch"] - diagnosis["onset_epoch"] >= 0


def test_absurd_lr_does_not_converge(trainer_kwargs):
    L.seed_everything(0, verbose=False)
    monitor = GapMonitor(subset_size=200)
    # on_nonfinite="warn": the run goes on through the nan losses, as the doctor's rule must judge them
    model = ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=50.0, on_nonfinite="warn")
    fit(trainer_kwargs, model, monitor, max_epochs=2, limit_train_batches=10, limit_val_batches=2)
    assert verdicts(monitor) == ["not_converging"] * 2  # overwhelming: no warm-up, no waiting
    assert monitor.history[-1]["confidence"] == 1.0
    assert "diverged" in monitor.history[-1]["evidence"] and "lr-find" in monitor.history[-1]["remedy"]


def test_tiny_lr_flat_loss_does_not_converge(trainer_kwargs):
    L.seed_everything(0, verbose=False)
    monitor = GapMonitor(subset_size=200)
    model = ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=1e-7)
    fit(trainer_kwargs, model, monitor, max_epochs=5, limit_train_batches=5, limit_val_batches=2)
    assert verdicts(monitor)[-2:] == ["not_converging"] * 2  # flat for 3 validations from epoch 2 on, confirmed
    assert monitor.history[-1]["train_clean/loss"] > 0.9 * math.log(10)
    assert monitor.diagnosis["final"]["verdict"] == "not_converging"


def test_stop_on_overfitting_restores_best_checkpoint(trainer_kwargs, tmp_path):
    monitor = GapMonitor(stop_on="overfitting")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", mode="min")
    trainer = few_samples_overfit(trainer_kwargs, monitor, epochs=30, callbacks=[ckpt], enable_checkpointing=True)
    first = next(i for i, v in enumerate(verdicts(monitor)) if v in ("overfitting", "overfitting_onset"))
    assert monitor.stopped_epoch == monitor.history[first]["epoch"]
    assert len(monitor.history) == first + 1 < 30 and trainer.current_epoch == first + 1
    best = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    for k, v in trainer.lightning_module.state_dict().items():
        assert torch.equal(v, best[k]), k
    assert monitor.diagnosis["restored"] == ckpt.best_model_path


class Snapshots(Callback):
    """The module's weights after every validation (to check what GapMonitor restored)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_stop_on_overfitting_restores_val_loss_minimum_without_checkpoint_callback(trainer_kwargs):
    # patience 8: stop 8 validations after over-fitting is shown, well after the val loss bottomed out
    monitor, snaps = GapMonitor(stop_on="overfitting", patience=8), Snapshots()
    trainer = few_samples_overfit(trainer_kwargs, monitor, epochs=30, callbacks=[snaps])
    assert trainer.checkpoint_callback is None and monitor.stopped_epoch is not None
    best = int(np.argmin([r["val/loss"] for r in monitor.history]))
    assert best < len(monitor.history) - 1  # the last weights are not the best ones
    restored = trainer.lightning_module.state_dict()
    assert all(torch.equal(restored[k], snaps.states[best][k]) for k in restored)
    assert not all(torch.equal(restored[k], snaps.states[-1][k]) for k in restored)
    assert monitor.diagnosis["restored"] == "val_loss_minimum"


def test_monitor_does_not_disturb_training(trainer_kwargs):
    """Same seed, with and without the monitor: identical weights (RNG stream and train mode untouched)."""

    def run(with_monitor: bool):
        L.seed_everything(3, verbose=False)
        model = ClassifierModule("lenet5", num_classes=10, in_channels=1, lr=0.05, dropout=0.3)
        trainer = L.Trainer(
            **{**trainer_kwargs, "max_epochs": 2, "limit_train_batches": 6, "limit_val_batches": 2},
            callbacks=[GapMonitor(subset_size=100)] if with_monitor else [],
        )
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
        return model.state_dict()

    a, b = run(True), run(False)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_keeps_history(trainer_kwargs, tmp_path):
    def trainer(epochs, monitor):
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        kw = {**trainer_kwargs, "enable_checkpointing": True, "limit_train_batches": 4, "limit_val_batches": 1}
        return L.Trainer(**{**kw, "max_epochs": epochs}, callbacks=[monitor, ckpt])

    first = GapMonitor(subset_size=50)
    L.seed_everything(0, verbose=False)
    trainer(2, first).fit(ClassifierModule("lenet5", num_classes=10, in_channels=1), datamodule=DigitsDataModule())
    resumed = GapMonitor(subset_size=50)
    t = trainer(3, resumed)
    t.fit(
        ClassifierModule("lenet5", num_classes=10, in_channels=1),
        datamodule=DigitsDataModule(),
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]
    assert resumed.history[:2] == first.history
    assert np.array_equal(resumed.subset, first.subset)


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"min_train_acc": 1.5}, "min_train_acc"),
        ({"overfit_acc_gap": 0.0}, "overfit_acc_gap"),
        ({"overfit_loss_ratio": 0.5}, "overfit_loss_ratio"),
        ({"onset_rise": -0.1}, "onset_rise"),
        ({"subset_size": 0}, "subset_size"),
        ({"flat_window": 1}, "flat_window"),
        ({"min_improvement": 1.0}, "min_improvement"),
        ({"stop_on": "underfitting"}, "stop_on"),
        ({"patience": 0}, "patience"),
        ({"min_loss_gap": float("nan")}, "min_loss_gap"),
        ({"confidence_level": 1.0}, "confidence_level"),
        ({"confidence_level": -0.5}, "confidence_level"),
        ({"confirm": 0}, "confirm"),
    ],
)
def test_thresholds_out_of_range(kwargs, name):
    with pytest.raises(ValueError, match=f"GapMonitor: {name} must be"):
        GapMonitor(**kwargs)


def test_no_validation_loop_is_a_clear_error_at_fit_start(trainer_kwargs):
    model = ClassifierModule("lenet5", num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="GapMonitor needs a validation loop.*limit_val_batches=0"):
        fit(trainer_kwargs, model, GapMonitor(), limit_val_batches=0)
    with pytest.raises(ValueError, match="GapMonitor needs a validation split.*DigitsDataModule"):
        fit(trainer_kwargs, model, GapMonitor(), DigitsDataModule(val_fraction=0.0))


def test_datamodule_without_the_index_contract_is_a_contract_error(trainer_kwargs):
    class Plain(L.LightningDataModule):
        def train_dataloader(self):
            return DigitsDataModule(batch_size=64).train_dataloader()

    model = ClassifierModule("lenet5", num_classes=10, in_channels=1)
    msg = r"GapMonitor needs data.eval_dataloader, data.train_indices, data.train_targets, which Plain lacks"
    with pytest.raises(ContractError, match=msg) as err:
        fit(trainer_kwargs, model, GapMonitor(), Plain())
    assert err.value.missing == ("eval_dataloader", "train_indices", "train_targets")


def test_state_key_names_the_arguments_that_differ_from_the_defaults():
    assert GapMonitor().state_key == "GapMonitor"  # checkpoints of default monitors load as before
    assert GapMonitor(subset_size=1000, seed=0, plot_every_n_epochs=3, print_report=False).state_key == "GapMonitor"
    assert GapMonitor(seed=3, confirm=1).state_key == "GapMonitor{'seed': 3, 'confirm': 1}"
    assert GapMonitor(seed=3).state_key != GapMonitor(seed=4).state_key


def test_two_monitors_save_and_restore_separate_state_in_one_checkpoint(trainer_kwargs, tmp_path):
    def trainer(epochs, monitors):
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        kw = {**trainer_kwargs, "enable_checkpointing": True, "limit_train_batches": 2, "limit_val_batches": 1}
        return L.Trainer(**{**kw, "max_epochs": epochs}, callbacks=[*monitors, ckpt])

    def monitors():
        return GapMonitor(subset_size=40, seed=1), GapMonitor(subset_size=60, seed=2, confirm=1)

    a, b = monitors()
    L.seed_everything(0, verbose=False)
    trainer(1, (a, b)).fit(ClassifierModule("lenet5", num_classes=10, in_channels=1), datamodule=DigitsDataModule())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]
    assert {a.state_key, b.state_key} <= set(saved) and a.state_key != b.state_key
    assert len(saved[a.state_key]["subset"]) == 40 and len(saved[b.state_key]["subset"]) == 60
    ra, rb = monitors()
    trainer(2, (ra, rb)).fit(
        ClassifierModule("lenet5", num_classes=10, in_channels=1),
        datamodule=DigitsDataModule(),
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    for first, resumed in ((a, ra), (b, rb)):
        assert np.array_equal(resumed.subset, first.subset)
        assert resumed.history[:1] == first.history and [r["epoch"] for r in resumed.history] == [0, 1]
    assert rb.history[1]["subset_count"] == 60 and ra.history[1]["subset_count"] == 40


def test_subset_larger_than_training_set_uses_all(trainer_kwargs, caplog):
    L.seed_everything(0, verbose=False)
    monitor = GapMonitor(subset_size=5000)
    model = ClassifierModule("lenet5", num_classes=10, in_channels=1)
    with caplog.at_level("INFO", logger="lightning.pytorch"):
        fit(trainer_kwargs, model, monitor, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    assert len(monitor.subset) == 1293 and monitor.history[0]["subset_count"] == 1293
    assert "subset_size 5000 > 1293 training samples; scoring all of them" in caplog.text


def test_stratified_subset_keeps_class_shares_and_is_seeded():
    targets = np.array([0] * 700 + [1] * 200 + [2] * 100)
    pool = np.arange(1000)
    sub = stratified_subset(targets, pool, 100, seed=1)
    assert len(sub) == 100 and list(np.bincount(targets[sub])) == [70, 20, 10]
    assert np.array_equal(sub, stratified_subset(targets, pool, 100, seed=1))
    assert not np.array_equal(sub, stratified_subset(targets, pool, 100, seed=2))
    assert list(np.bincount(targets[stratified_subset(targets, pool, 5, 0)])) == [3, 1, 1]  # every class present


@pytest.mark.ddp
def test_ddp_clean_metrics_are_synced_and_verdict_agrees(torchrun, tmp_path):
    out = tmp_path / "ddp"
    result = torchrun([str(REPO / "tests" / "ddp_scripts" / "gap_monitor_ddp.py"), str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["history"] == ranks[1]["history"]  # same numbers, same verdicts on both ranks
    hist = ranks[0]["history"]
    assert len(hist) == 2 and all(r["subset_count"] == 300 for r in hist)  # both shards summed
    # the all-reduced clean metrics equal a single-process pass over the whole subset
    assert math.isclose(ranks[0]["single_process_acc"], hist[-1]["train_clean/acc"], abs_tol=1e-9)
    assert math.isclose(ranks[0]["single_process_loss"], hist[-1]["train_clean/loss"], rel_tol=1e-4)
    assert ranks[0]["shard_sizes"] == [150, 150]
    combined = result.stdout + result.stderr
    assert combined.count("GapMonitor epoch 1:") == 1  # printed once
