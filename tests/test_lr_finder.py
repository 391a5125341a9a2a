"""LRRangeTest on real digits runs: the curve, the suggestion, the exact restore, the bad inputs;
the suggestion rules of ``lr_rules`` on constructed curves; a peer check of the ``lightning`` rule
against Lightning's own ``_LRFinder.suggestion`` on the same curves; OneCycle past its end."""

from __future__ import annotations

import json
import logging
import math
import time
from functools import partial

import lightning as L
import pytest
import torch

from lit_recipes.callbacks import LRRangeTest
from lit_recipes.callbacks.lr_rules import (
    RULES,
    apply_stop,
    knee_rule,
    smooth_log_lr,
    smooth_losses,
    suggest,
    suggest_index,
    sweep_lrs,
)
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
    # the default sweep: 1e-4 -> 10 in 150 steps, 30 a decade (bench_lr_rules' ``dense`` variant)
    finder = LRRangeTest()
    default = [finder.lr_at(k) for k in range(finder.num_steps)]
    assert default[0] == pytest.approx(1e-4) and default[-1] == pytest.approx(10) and len(default) == 150
    assert sum(1 for lr in default if 0.01 <= lr < 0.1) in (30, 31)
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
    with pytest.raises(ValueError, match="rule must be one of"):
        suggest_index(lrs, losses, "fastest")
    with pytest.raises(ValueError, match="suggestion rule must be one of"):
        suggest(lrs, losses, "fastest")


# ----------------------------------------------------------------------------- the knee rule
def test_smooth_log_lr_is_a_centred_window_in_decades():
    lrs = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    assert smooth_log_lr(lrs, [1.0, 2.0, 3.0, 4.0, 5.0], width=0) == [1.0, 2.0, 3.0, 4.0, 5.0]
    # width 2 decades: each point averages its neighbours one decade away on both sides
    assert smooth_log_lr(lrs, [1.0, 2.0, 3.0, 4.0, 5.0], width=2) == pytest.approx([1.5, 2.0, 3.0, 4.0, 4.5])
    out = smooth_log_lr(lrs, [1.0, 2.0, float("nan"), 4.0, 5.0], width=2)
    assert out[:2] == pytest.approx([1.5, 1.5]) and all(math.isnan(v) for v in out[2:])
    with pytest.raises(ValueError, match="differ in length"):
        smooth_log_lr(lrs, [1.0])


def _curve(fn, n=100, lo=1e-6, hi=10.0):
    lrs = sweep_lrs(lo, hi, n)
    return lrs, [fn(math.log10(x)) for x in lrs]


def test_knee_rule_takes_the_right_edge_of_the_valley_when_the_loss_blows_up():
    # 2.0 until 1e-3, linear fall to 0.5 at 1e-1, flat to 1, then rising steeply
    def fn(x):
        return 2.0 if x < -3 else 2.0 - 0.75 * (x + 3) if x < -1 else 0.5 if x < 0 else 0.5 + 3 * x

    lrs, losses = _curve(fn)
    res = knee_rule(lrs, losses, width=0, ceiling=None)
    # valley level: 0.5 + 0.1 * 1.5 = 0.65; the rise passes it at x = 0.05, the fall at x = -1.2
    edge = max(i for i, x in enumerate(lrs) if math.log10(x) < 0.05)
    knee = min(i for i, x in enumerate(lrs) if math.log10(x) >= -1.2 - 1e-9)
    assert res.level == pytest.approx(0.65)
    assert res.index == edge and res.lr == lrs[edge] and res.marks["edge"] == edge
    assert res.marks["knee"] == knee and not res.fallback
    assert suggest(lrs, losses, "knee", width=0, ceiling=None).lr == res.lr  # suggest() passes the options through


def test_knee_rule_on_a_plateau_takes_ten_times_the_knee():
    # a BN-like curve: falls from 1e-3 to 1e-2, then keeps sinking slowly to max_lr without blowing up
    def fn(x):
        return 2.3 if x < -3 else 2.3 - 1.2 * (x + 3) if x < -2 else 1.1 - 0.02 * (x + 2)

    lrs, losses = _curve(fn)
    res = knee_rule(lrs, losses, width=0, ceiling=None)
    knee = res.marks["knee"]
    # the minimum is the last point (where the model "trained longest"): not the suggestion
    assert res.marks["minimum"] == 99 and res.marks["plateau"] == 99 and "edge" not in res.marks
    assert -2.1 < math.log10(lrs[knee]) <= -1.9
    assert res.lr == pytest.approx(10 * lrs[knee]) and not res.fallback
    assert knee_rule(lrs, losses, width=0, plateau_mult=3, ceiling=None).lr == pytest.approx(3 * lrs[knee])
    # the old default picks the end of the sweep and flags it for the fallback
    old = suggest(lrs, losses, "minimum", diverged=False)
    assert old.index == 99 and old.fallback


def test_knee_rule_does_not_read_past_the_ceiling():
    # the BN shape of issue 13: a first valley at 1e-2..1e-1 (0.8), a blow-up at 0.1..1 (3.0), and a
    # deeper second valley past LR 1 (0.5) before the final divergence
    def fn(x):
        if x < -2:
            return 2.3
        if x < -1:
            return 0.8
        if x < 0:
            return 3.0
        return 0.5 if x < 0.6 else 5.0

    lrs, losses = _curve(fn)
    whole = knee_rule(lrs, losses, width=0, ceiling=None)
    assert whole.lr > 1  # read to the end, the rule lands in the second valley
    res = knee_rule(lrs, losses, width=0)  # default ceiling 1.0
    last = max(i for i, x in enumerate(lrs) if x <= 1.0)
    first_valley_edge = max(i for i, x in enumerate(lrs) if math.log10(x) < -1)
    assert res.marks["ceiling"] == last and res.index == first_valley_edge and not res.fallback
    assert len(res.curve) == len(lrs)  # the plot still shows the whole sweep
    # a lower ceiling cuts inside the first valley: a plateau to the ceiling, capped at its last point
    low = knee_rule(lrs, losses, width=0, ceiling=0.05)
    assert (
        low.lr == lrs[max(i for i, x in enumerate(lrs) if x <= 0.05)] and "plateau to the ceiling LR 0.05" in low.reason
    )
    # a sweep that ends below the ceiling is unaffected, and a ceiling leaving too few points is no suggestion
    short = [i for i, x in enumerate(lrs) if x <= 0.5]
    sub_lrs, sub = [lrs[i] for i in short], [losses[i] for i in short]
    assert knee_rule(sub_lrs, sub, width=0).lr == knee_rule(sub_lrs, sub, width=0, ceiling=None).lr
    assert "ceiling" not in knee_rule(sub_lrs, sub, width=0).marks
    assert knee_rule(lrs, losses, ceiling=2e-6).lr is None
    with pytest.raises(ValueError, match="ceiling"):
        knee_rule(lrs, losses, ceiling=0.0)


def test_knee_rule_without_a_drop_has_no_suggestion():
    lrs, losses = _curve(lambda x: 2.0 + 0.001 * math.sin(7 * x))
    res = knee_rule(lrs, losses)
    assert res.lr is None and res.fallback and "fell by only" in res.reason
    assert knee_rule(lrs[:3], losses[:3]).lr is None
    with pytest.raises(ValueError, match="frac"):
        knee_rule(lrs, losses, frac=1.5)


def test_apply_stop_replays_the_divergence_stop():
    lrs = sweep_lrs(1e-3, 1, 30)
    losses = [1.0] * 20 + [50.0] * 10
    cut_lrs, cut, reason = apply_stop(lrs, losses, divergence_factor=4.0, beta=0.0)
    assert reason == "diverged at step 20" and cut == losses[:21] and cut_lrs == lrs[:21]
    assert apply_stop(lrs, [1.0] * 30)[2] == "completed"
    assert apply_stop(lrs, [1.0, float("nan"), 1.0])[2] == "non-finite loss at step 1"


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
    assert saved["suggestion"] == pytest.approx(lr) and saved["rule"] == "knee"
    assert set(saved["suggestions"]) == set(RULES) and saved["marks"]["knee"] <= saved["marks"]["minimum"]
    # the configured LR was replaced, and one line said so
    said = [r.getMessage() for r in caplog.records if "overrides" in r.getMessage()]
    assert said == [f"LRRangeTest: range test overrides lr=0.05 with {lr:.3g}; set update_lr: false to keep yours"]
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
    finder = LRRangeTest(
        min_lr=1e-3, max_lr=3e-2, num_steps=30, plot=False, on_no_divergence=policy, suggestion="minimum"
    )
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
def _lightning_pick(lrs, smoothed, skip_begin=10, skip_end=1):
    """Lightning's own rule (``_LRFinder.suggestion``) on a given curve: no re-implementation."""
    from lightning.pytorch.tuner.lr_finder import _LRFinder

    finder = _LRFinder("exponential", lrs[0], lrs[-1], len(lrs))
    finder.results = {"lr": list(lrs), "loss": list(smoothed)}
    return finder.suggestion(skip_begin=skip_begin, skip_end=skip_end)


def test_lightning_rule_agrees_with_lightnings_finder_on_the_same_curves(trainer_kwargs):
    """The ``lightning`` rule is checked against Lightning's code through its API, on (a) the curve
    ``Tuner.lr_find`` itself recorded and (b) curves our callback recorded — whatever Lightning's
    sweep spacing, smoothing or RNG use become in a later version."""
    from lightning.pytorch.tuner import Tuner

    kw = {**trainer_kwargs, "limit_val_batches": 0, "num_sanity_val_steps": 0}
    L.seed_everything(0, verbose=False)
    theirs = Tuner(L.Trainer(**kw)).lr_find(
        ClassifierModule("lenet5_bn", 10, 1, lr=0.05),
        datamodule=DigitsDataModule(batch_size=16),
        min_lr=1e-3,
        max_lr=3.0,
        num_training=60,
        update_attr=False,
    )
    their_lrs, their_curve = theirs.results["lr"], theirs.results["loss"]
    assert len(their_lrs) > 20
    assert their_lrs[suggest_index(their_lrs, their_curve, "lightning")] == theirs.suggestion()

    finder = LRRangeTest(min_lr=1e-4, max_lr=10, num_steps=60, plot=False, update_lr=False)
    fit(make_module(), trainer_kwargs, [finder], limit_train_batches=1, limit_val_batches=0)
    res = finder.results
    assert res["suggestions"]["lightning"] == _lightning_pick(res["lrs"], res["smoothed"])
    for skip in ((5, 3), (0, 1)):  # other windows, same agreement
        i = suggest_index(res["lrs"], res["smoothed"], "lightning", *skip)
        assert res["lrs"][i] == _lightning_pick(res["lrs"], res["smoothed"], *skip)
    # Lightning's raw-LR slope lands far below the log-LR rules on the same curve
    assert res["suggestions"]["lightning"] < res["suggestions"]["steepest"] <= res["suggestions"]["minimum"]


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
    # the file is written by W&B's service process, so wait for the record rather than read once (one
    # fresh-clone run read only the 7-byte header after finish(); the disk had filled up about then)
    deadline = time.monotonic() + 60
    while b"lr_find/suggestion" not in record.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"lr_find/suggestion" in record.read_bytes(), f"{record.stat().st_size} bytes after 60 s"
    assert list(tmp_path.rglob("lr_find.json"))  # and the JSON sits in the run directory


# ----------------------------------------------------------------------------- OneCycle past its end
def test_onecycle_past_its_end_holds_the_final_lr_and_says_so_once():
    import warnings

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    sched = OneCycle(opt, total_steps=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(25):
            opt.step()
            sched.step()
    said = [str(w.message) for w in caught if "OneCycle" in str(w.message)]
    assert said == [
        "OneCycle: the cycle of 10 steps is over (step 11); continuing at its final LR 0.001. "
        "Start a new run (no --ckpt_path) for a new cycle"
    ]
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0 / (10 * 100))
    assert "_past_end_noted" not in sched.state_dict()


def test_extending_a_finished_onecycle_run_continues_at_the_final_lr(trainer_kwargs, tmp_path):
    """``--ckpt_path last.ckpt --trainer.max_epochs`` larger: the checkpoint's cycle wins; one line."""
    import warnings

    from lightning.pytorch.callbacks import ModelCheckpoint

    kw = {**trainer_kwargs, "limit_train_batches": 4, "limit_val_batches": 1, "enable_checkpointing": True}
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(make_module(), kw, [ckpt], max_epochs=1)
    probe = Probe()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = L.Trainer(**{**kw, "max_epochs": 3}, callbacks=[probe])
        trainer.fit(
            make_module(), datamodule=DigitsDataModule(batch_size=64), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
        )
    said = [str(w.message) for w in caught if "OneCycle" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("OneCycle: the cycle of 4 steps is over")
    assert trainer.global_step == 12 and len(probe.lrs) == 8
    assert probe.lrs == pytest.approx([0.05 / (10 * 100)] * 8)  # the final LR of the first run's cycle


# ----------------------------------------------------------------------------- state across a resume
def test_two_range_tests_keep_separate_state_in_one_checkpoint(trainer_kwargs, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    kw = {**trainer_kwargs, "enable_checkpointing": True, "limit_train_batches": 3, "limit_val_batches": 1}
    settings = dict(min_lr=1e-4, max_lr=1, num_steps=20, plot=False)
    make = lambda: (LRRangeTest(**settings), LRRangeTest(**settings, epoch=1))  # noqa: E731
    start, mid = make()
    assert start.state_key != mid.state_key  # the Trainer refuses two stateful callbacks with one key
    module = make_module(scheduler=False)
    fit(module, kw, [start, mid, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)], max_epochs=2)
    states = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]
    assert states[start.state_key] == {"done": ["fit_start"], "suggested_lr": start.suggested_lr}
    assert states[mid.state_key] == {"done": ["epoch1"], "suggested_lr": mid.suggested_lr}
    assert None is not start.suggested_lr != mid.suggested_lr is not None
    # resumed: each instance gets its own state back, and neither sweeps again
    start2, mid2 = make()
    trainer = L.Trainer(**{**kw, "max_epochs": 3}, callbacks=[start2, mid2, ModelCheckpoint(dirpath=tmp_path / "ckpt")])
    ckpt = str(tmp_path / "ckpt" / "last.ckpt")
    trainer.fit(make_module(scheduler=False), datamodule=DigitsDataModule(batch_size=64), ckpt_path=ckpt)
    assert (start2.suggested_lr, mid2.suggested_lr) == (start.suggested_lr, mid.suggested_lr)
    assert start2.results == mid2.results == {} and trainer.current_epoch == 3


def test_a_checkpoint_keyed_by_the_class_name_still_loads():
    """Checkpoints written before the key named the arguments stored the state under ``LRRangeTest``."""
    finder = LRRangeTest()
    old = {"callbacks": {"LRRangeTest": {"done": ["fit_start"], "suggested_lr": 0.3}}}
    finder.on_load_checkpoint(None, None, old)
    assert finder._done == ["fit_start"] and finder.suggested_lr == 0.3
    fresh = LRRangeTest()  # a checkpoint with the new key is left to Lightning's load_state_dict
    fresh.on_load_checkpoint(None, None, {"callbacks": {fresh.state_key: {"done": []}, **old["callbacks"]}})
    assert fresh._done == [] and fresh.suggested_lr is None


def test_argument_checks_take_every_checked_argument_by_name():
    """``check_arguments`` of the sweep has no catch-all: each checked ``LRRangeTest`` argument is a
    required keyword, so an argument renamed on one side only is a TypeError instead of a skipped check."""
    import inspect

    from lit_recipes.callbacks.lr_sweep import check_arguments

    checked = inspect.signature(check_arguments).parameters
    assert all(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in checked.values())
    init = inspect.signature(LRRangeTest.__init__).parameters
    assert set(checked) == set(init) - {"self", "update_lr", "plot"}
    defaults = {name: init[name].default for name in checked}
    assert check_arguments(**defaults) is None
    renamed = {("max_learning_rate" if k == "max_lr" else k): v for k, v in defaults.items()}
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_learning_rate'"):
        check_arguments(**renamed)
