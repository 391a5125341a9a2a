"""LRRangeTest on real digits runs: the curve, the suggestion, the exact restore, the bad inputs,
and a point-by-point peer check against Lightning's ``Tuner.lr_find``."""

from __future__ import annotations

import json
import logging
import math
from functools import partial

import lightning as L
import pytest
import torch

from lit_recipes.callbacks import LRRangeTest
from lit_recipes.callbacks.lr_finder import smooth_losses, suggest_index, sweep_lrs
from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.module import ClassifierModule
from lit_recipes.schedules import OneCycle


class Probe(L.Callback):
    """Records the LR applied at every step, the first batch's indices, and the parameters then."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.first_indices: torch.Tensor | None = None
        self.first_params: dict[str, torch.Tensor] | None = None
        self.first_step: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        if self.first_indices is None:
            self.first_indices = batch[2].clone()
            self.first_step = trainer.global_step
            self.first_params = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def make_module(seed: int = 0, scheduler: bool = True, **kw) -> ClassifierModule:
    L.seed_everything(seed, verbose=False)
    return ClassifierModule("lenet5_bn", 10, 1, lr=0.05, lr_scheduler=partial(OneCycle) if scheduler else None, **kw)


def fit(module, trainer_kwargs, callbacks, **overrides):
    trainer = L.Trainer(**{**trainer_kwargs, **overrides}, callbacks=callbacks)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=64))
    return trainer


# ----------------------------------------------------------------------------- maths
def test_sweep_lrs_and_smoothing():
    lrs = sweep_lrs(1e-7, 10, 100)
    assert lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(10) and len(lrs) == 100
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios))
    lin = sweep_lrs(0.1, 1.0, 10, "linear")
    assert lin[1] - lin[0] == pytest.approx(0.1) and lin[-1] == pytest.approx(1.0)
    # bias correction: a constant loss stays constant from the very first point
    assert smooth_losses([2.0] * 20) == pytest.approx([2.0] * 20)
    sm = smooth_losses([1.0, 3.0], beta=0.5)
    assert sm == pytest.approx([1.0, (0.5 * 0.5 + 0.5 * 3.0) / (1 - 0.25)])
    assert math.isnan(smooth_losses([1.0, float("inf"), 1.0])[2])


def test_suggestion_rules_on_a_synthetic_curve():
    lrs = sweep_lrs(1e-6, 10, 100)
    logs = [math.log10(x) for x in lrs]
    # flat until 1e-3, falls steepest around 1e-1.5, minimum at 1, then blows up
    losses = [2.3 - 1.5 / (1 + math.exp(-4 * (x + 1.5))) + (5 * x * x if x > 0 else 0) for x in logs]
    i_min = min(range(100), key=lambda i: losses[i])
    steep = suggest_index(lrs, losses, "steepest")
    assert abs(logs[steep] + 1.5) < 0.15  # the log-slope is steepest at the sigmoid's centre
    assert lrs[suggest_index(lrs, losses, "minimum_div_10")] == pytest.approx(lrs[i_min] / 10, rel=0.1)
    assert suggest_index(lrs, losses, "minimum") == i_min
    # valley: halfway (in log-LR) from the start of the decreasing run to the minimum
    valley = suggest_index(lrs, losses, "valley")
    assert lrs[10] < lrs[valley] < lrs[i_min]
    # Lightning's raw-LR slope prefers small LRs: it lands below the log-slope's steepest point
    assert suggest_index(lrs, losses, "lightning") < steep
    # a curve that never falls has no suggestion
    assert suggest_index(lrs, [2.0 + i for i in range(100)], "valley") is None
    with pytest.raises(ValueError, match="suggestion rule"):
        suggest_index(lrs, losses, "fastest")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_lr": 1.0, "max_lr": 1.0}, "min_lr < max_lr"),
        ({"min_lr": 0.0}, "min_lr must be a positive"),
        ({"num_steps": 5}, "num_steps must be an integer >= 10"),
        ({"mode": "cubic"}, "mode must be"),
        ({"suggestion": "best"}, "suggestion must be one of"),
        ({"divergence_factor": 0.5}, "divergence_factor"),
        ({"epoch": -1}, "epoch must be"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRRangeTest(**kwargs)


def test_module_without_lr(trainer_kwargs):
    module = make_module()
    del module.lr
    with pytest.raises(ValueError, match="has no numeric `lr` attribute"):
        fit(module, trainer_kwargs, [LRRangeTest()])


# ----------------------------------------------------------------------------- at fit start
def test_fit_start_restores_state_and_onecycle_peaks_at_suggestion(trainer_kwargs, tmp_path, caplog):
    base = Probe()
    fit(make_module(), trainer_kwargs, [base], limit_train_batches=6, limit_val_batches=1)

    probe = Probe()
    finder = LRRangeTest(min_lr=1e-5, max_lr=10, num_steps=60)
    module = make_module()
    with caplog.at_level(logging.INFO):
        trainer = fit(module, trainer_kwargs, [finder, probe], limit_train_batches=6, limit_val_batches=1)
    res = finder.results
    # the sweep ran, on the full loader (21 batches: cycled, said once), and found an LR
    assert 10 <= res["steps"] <= 60 and len(res["lrs"]) == len(res["losses"]) == len(res["smoothed"])
    assert sum("cycling it" in r.getMessage() for r in caplog.records) == 1
    lr = res["suggestion"]
    assert lr is not None and 1e-5 < lr < 10 and res["lrs"][0] == pytest.approx(1e-5)
    assert min(res["smoothed"]) < res["smoothed"][0] - 0.1  # the model learned during the sweep
    # nothing of the sweep leaked into training: same first batch, same weights, step 0
    assert probe.first_step == 0
    assert torch.equal(probe.first_indices, base.first_indices)
    for k, v in base.first_params.items():
        assert torch.equal(v, probe.first_params[k]), k
    # the suggestion is the module's LR and the OneCycle built after it peaks exactly there
    assert module.lr == lr
    assert max(probe.lrs) == pytest.approx(lr, rel=1e-9)
    assert probe.lrs[0] == pytest.approx(lr / 10, rel=1e-9)
    # JSON + PNG in the run directory
    saved = json.loads((tmp_path / "lr_find.json").read_text())
    assert saved["suggestion"] == pytest.approx(lr) and saved["rule"] == "minimum"
    assert set(saved["suggestions"]) == {"minimum", "valley", "steepest", "minimum_div_10", "lightning"}
    assert (tmp_path / "lr_find.png").stat().st_size > 5000
    assert trainer.global_step == 6


# ----------------------------------------------------------------------------- mid-training
def test_mid_training_sweep_leaves_training_bit_identical(trainer_kwargs):
    kw = dict(max_epochs=2, limit_train_batches=5, limit_val_batches=1)
    ref_probe = Probe()
    ref = make_module()
    ref_trainer = fit(ref, trainer_kwargs, [ref_probe], **kw)

    finder = LRRangeTest(min_lr=1e-4, max_lr=1, num_steps=20, epoch=1, update_lr=False, plot=False)
    probe = Probe()
    module = make_module()
    trainer = fit(module, trainer_kwargs, [finder, probe], **kw)
    assert finder.results["epoch"] == 1 and finder.results["global_step"] == 5
    # Lightning's finder breaks here (#4846: best loss 0 -> stops at once); this one sweeps on
    assert finder.results["steps"] > 10 and finder.results["suggestion"] is not None
    assert trainer.global_step == ref_trainer.global_step == 10
    assert probe.lrs == ref_probe.lrs
    for (k, a), b in zip(ref.state_dict().items(), module.state_dict().values()):
        assert torch.equal(a, b), k
    sa, sb = ref_trainer.optimizers[0].state_dict(), trainer.optimizers[0].state_dict()
    for pid, st in sa["state"].items():
        assert torch.equal(st["momentum_buffer"], sb["state"][pid]["momentum_buffer"])

    # with update_lr the schedule keeps its position, rescaled to the new LR
    finder = LRRangeTest(min_lr=1e-4, max_lr=1, num_steps=20, epoch=1, plot=False)
    probe = Probe()
    module = make_module()
    fit(module, trainer_kwargs, [finder, probe], **kw)
    factor = finder.results["suggestion"] / 0.05
    assert module.lr == finder.results["suggestion"]
    assert probe.lrs[:5] == ref_probe.lrs[:5]
    assert probe.lrs[5:] == pytest.approx([v * factor for v in ref_probe.lrs[5:]], rel=1e-9)


# ----------------------------------------------------------------------------- divergence
def test_divergence_at_first_steps_keeps_lr(trainer_kwargs):
    finder = LRRangeTest(min_lr=50, max_lr=1e5, num_steps=30, plot=False)
    module = make_module()
    with pytest.warns(UserWarning, match=r"no suggestion \(diverged at step 1 .*keeping lr=0.05"):
        fit(module, trainer_kwargs, [finder], limit_train_batches=2, limit_val_batches=1)
    assert finder.results["suggestion"] is None
    assert finder.results["steps"] == 2
    assert module.lr == 0.05


@pytest.mark.parametrize("policy", ["keep", "apply"])
def test_suggestion_at_the_end_of_a_sweep_that_never_diverged(trainer_kwargs, policy):
    """A sweep that stays in the low-LR region keeps improving to its end: the minimum is simply where the
    model trained longest, so by default the module's LR is kept (the failure seen on 10k CIFAR images)."""
    finder = LRRangeTest(min_lr=1e-3, max_lr=3e-2, num_steps=30, plot=False, on_no_divergence=policy)
    module = make_module()
    with pytest.warns(UserWarning, match="at the end of a sweep that never diverged"):
        fit(module, trainer_kwargs, [finder], limit_val_batches=1)
    res = finder.results
    assert res["stop_reason"] == "completed" and res["suggestion_index"] >= 0.9 * (res["steps"] - 1)
    assert res["applied"] == (policy == "apply")
    assert module.lr == (res["suggestion"] if policy == "apply" else 0.05)


class NaNAfter(ClassifierModule):
    """Its loss turns NaN after ``n`` training losses."""

    def __init__(self, n: int, **kw) -> None:
        super().__init__(**kw)
        self.n, self.calls = n, 0

    def training_loss(self, batch):
        self.calls += 1
        loss, logits, targets = super().training_loss(batch)
        return (loss * float("nan") if self.calls > self.n else loss), logits, targets


def test_nan_loss_is_divergence(trainer_kwargs):
    L.seed_everything(0, verbose=False)
    module = NaNAfter(25, model="lenet5_bn", num_classes=10, in_channels=1, lr=0.05)
    finder = LRRangeTest(min_lr=1e-3, max_lr=1, num_steps=40, plot=False)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    fit(module, trainer_kwargs, [finder], limit_train_batches=1, limit_val_batches=0, max_epochs=0)
    res = finder.results
    assert res["steps"] == 26 and "non-finite loss at step 25" in res["stop_reason"]
    assert math.isnan(res["losses"][-1]) and all(math.isfinite(v) for v in res["smoothed"][:-1])
    for k, v in before.items():  # NaN never reached the weights
        assert torch.equal(v, module.state_dict()[k]), k


# ----------------------------------------------------------------------------- peer check
class AlignedModule(ClassifierModule):
    """Reseeds right before Lightning's finder draws its first batch (see the peer test)."""

    reseed = False

    def on_train_epoch_start(self) -> None:
        if self.reseed:
            torch.manual_seed(123)
            for _ in range(2):  # the two base-seed draws our flow makes before its first batch
                torch.empty((), dtype=torch.int64).random_()


class Reseed(L.Callback):
    def on_fit_start(self, trainer, pl_module) -> None:
        torch.manual_seed(123)


def test_matches_lightning_tuner_point_by_point(trainer_kwargs):
    """Same model, data, seed and LRs as ``Tuner.lr_find`` -> the same smoothed curve.

    Three documented differences are mapped, not tolerated:

    * data: both flows shuffle from the global torch RNG but open their iterators at different
      points (Lightning inside its fit loop; ours after the fit loop opened its epoch-0 iterator,
      one draw each), so both are reseeded right before their first batch;
    * LRs: Lightning's sweep is ``min * r ** ((k + 1) / n)`` for k >= 1 (ours: ``k / (n - 1)``),
      so the callback is fed the very LRs Lightning recorded;
    * bias correction: Lightning divides by ``1 - beta ** (k + 2)`` (it reads ``global_step``
      after the optimizer step incremented it), ours by ``1 - beta ** (k + 1)``; theirs is converted.

    The remaining tolerance (rtol 1e-5) is float32 round-off.
    """
    from lightning.pytorch.tuner import Tuner

    beta, n = 0.98, 60
    kw = {**trainer_kwargs, "limit_val_batches": 0, "num_sanity_val_steps": 0}
    L.seed_everything(0, verbose=False)
    module = AlignedModule("lenet5_bn", 10, 1, lr=0.05)
    module.reseed = True
    theirs = Tuner(L.Trainer(**kw)).lr_find(
        module,
        datamodule=DigitsDataModule(batch_size=16),
        min_lr=1e-3,
        max_lr=3.0,
        num_training=n,
        mode="exponential",
        early_stop_threshold=4.0,
        update_attr=False,
    )
    their_lrs, their_loss = theirs.results["lr"], theirs.results["loss"]

    class SameLRs(LRRangeTest):
        def lr_at(self, step: int) -> float:  # Lightning's _ExponentialLR sequence
            return 1e-3 * (3.0 / 1e-3) ** ((step + 1) / n) if step else 1e-3

    finder = SameLRs(min_lr=1e-3, max_lr=3.0, num_steps=n, suggestion="lightning", plot=False, update_lr=False)
    L.seed_everything(0, verbose=False)
    ours_module = AlignedModule("lenet5_bn", 10, 1, lr=0.05)
    trainer = L.Trainer(**kw, callbacks=[Reseed(), finder], max_steps=0)
    trainer.fit(ours_module, datamodule=DigitsDataModule(batch_size=16))
    ours = finder.results
    # both stop on divergence, within one step of each other (the bias corrections differ slightly)
    m = min(ours["steps"], len(their_loss))
    assert abs(ours["steps"] - len(their_loss)) <= 1 and m > 40
    assert ours["lrs"][:m] == pytest.approx(their_lrs[:m], rel=1e-12)
    converted = [v * (1 - beta ** (k + 2)) / (1 - beta ** (k + 1)) for k, v in enumerate(their_loss)]
    assert ours["smoothed"][:m] == pytest.approx(converted[:m], rel=1e-5)
    # the rule is theirs: on their curve it picks their LR, and on our raw losses smoothed their
    # way (beta ** (k + 2)) it picks the very same step ...
    i_theirs = their_lrs.index(theirs.suggestion())
    assert suggest_index(their_lrs, their_loss, "lightning") == i_theirs
    their_way = [v * (1 - beta ** (k + 1)) / (1 - beta ** (k + 2)) for k, v in enumerate(ours["smoothed"])]
    assert suggest_index(ours["lrs"], their_way, "lightning") == i_theirs
    # ... while on our correctly bias-corrected curve the raw-LR slope drifts even lower (their
    # under-corrected first points make an artificial rise that pushes their pick right), and the
    # log-LR ``steepest`` rule lands above both
    assert ours["suggestion_index"] <= i_theirs
    assert ours["suggestions"]["steepest"] > theirs.suggestion()


# ----------------------------------------------------------------------------- DDP
@pytest.mark.ddp
def test_ddp_ranks_share_the_curve_the_stop_and_the_suggestion(torchrun, tmp_path):
    from conftest import REPO

    out = tmp_path / "ddp"
    result = torchrun([str(REPO / "tests" / "ddp_scripts" / "lr_finder_ddp.py"), str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == 2
    # the same LRs, the same (all-reduced) curve, the same stop step and the same suggestion
    assert r0["lrs"] == r1["lrs"] and r0["losses"] == r1["losses"] and r0["smoothed"] == r1["smoothed"]
    assert r0["steps"] == r1["steps"] < 60 and "diverged" in r0["stop_reason"]
    assert r0["suggestion"] == r1["suggestion"] is not None
    # each rank saw its own shard (local losses differ); the curve is their mean, step by step
    n = r0["steps"]
    assert r0["local"][:n] != r1["local"][:n]
    assert r0["losses"][: n - 1] == pytest.approx(
        [(a + b) / 2 for a, b in zip(r0["local"][: n - 1], r1["local"][: n - 1])], rel=1e-6
    )
    # both ranks applied it: OneCycle peaks at the suggestion on both, the weights stay in sync
    assert r0["module_lr"] == r1["module_lr"] == r0["suggestion"]
    assert max(r0["applied"]) == pytest.approx(r0["suggestion"], rel=1e-9)
    assert r0["applied"] == r1["applied"]
    assert r0["checksum"] == r1["checksum"]


def test_wandb_gets_the_curve_and_the_suggestion(trainer_kwargs, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path), project="lrf", offline=True)
    finder = LRRangeTest(min_lr=1e-4, max_lr=10, num_steps=30)
    fit(make_module(), trainer_kwargs, [finder], logger=logger, limit_train_batches=1, limit_val_batches=0)
    logger.experiment.finish()
    assert list(tmp_path.rglob("media/images/lr_find/curve*.png"))
    (record,) = tmp_path.rglob("run-*.wandb")  # offline: the logged history is in the run file
    assert b"lr_find/suggestion" in record.read_bytes()
    assert list(tmp_path.rglob("lr_find.json"))  # and the JSON sits in the run directory
