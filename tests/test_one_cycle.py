"""OneCycle: the LR and momentum shape, ``max_lr: auto``, and its position across a resume."""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_recipes.callbacks import LRRangeTest
from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.module import ClassifierModule
from lit_recipes.schedules import OneCycle, schedule_preview


def run(sched_factory, steps: int, opt_cls=torch.optim.SGD, **opt_kw):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = opt_cls([p], lr=1.0, **opt_kw)
    sched = sched_factory(opt, total_steps=steps)
    lrs, moms = [], []
    for _ in range(steps):
        g = opt.param_groups[0]
        lrs.append(g["lr"])
        moms.append(g["betas"][0] if "betas" in g else g["momentum"])
        opt.step()
        sched.step()
    return lrs, moms


def test_shape_three_phases_and_inverse_momentum():
    lrs, moms = run(partial(OneCycle, max_lr=2.0), 100, momentum=0.9)
    up, down = 45, 90  # round(0.45 * 99); phase 2 as long as phase 1
    assert lrs[0] == pytest.approx(0.2) and moms[0] == pytest.approx(0.95)  # max_lr / div, max momentum
    assert max(lrs) == pytest.approx(2.0) and lrs.index(max(lrs)) == up
    assert moms[up] == pytest.approx(0.85) and min(moms) == pytest.approx(0.85)
    assert lrs[down] == pytest.approx(0.2) and moms[down] == pytest.approx(0.95)  # phase 2 mirrors phase 1
    assert lrs[-1] == pytest.approx(2.0 / (10 * 100))  # annihilation down to max_lr / (div * final_div)
    assert all(a < b for a, b in zip(lrs[:up], lrs[1 : up + 1]))
    assert all(a > b for a, b in zip(lrs[up:-1], lrs[up + 1 :]))
    assert all(m == pytest.approx(0.95) for m in moms[down:])
    # phase 1 and phase 2 are symmetric
    assert lrs[up - 10] == pytest.approx(lrs[up + 10])
    # momentum is the LR's mirror image in phases 1-2
    for lr, m in zip(lrs[: down + 1], moms[: down + 1]):
        assert (lr - 0.2) / 1.8 == pytest.approx((0.95 - m) / 0.1, abs=1e-9)


def test_configurable_phases_adam_and_cos():
    lrs, betas = run(partial(OneCycle, max_lr=1.0, pct_start=0.25, annihilation_pct=0.2), 101, torch.optim.Adam)
    assert lrs.index(max(lrs)) == 25 and lrs[80] == pytest.approx(0.1) and lrs[-1] == pytest.approx(1e-3)
    assert betas[25] == pytest.approx(0.85) and betas[0] == betas[-1] == pytest.approx(0.95)
    cos = schedule_preview(partial(OneCycle, anneal="cos"), 50)
    assert max(cos["lr"]) == pytest.approx(1.0) and cos["lr"][0] == pytest.approx(0.1)


def test_cos_and_linear_anneal_differ_mid_phase():
    """A quarter of the way into each phase (81 steps: peak at 40, trough at 72, end at 80): linear
    interpolation is 1/4 of the way, cosine (1 - cos(pi/4)) / 2 = 0.1464 of the way; both agree at the ends."""
    kw = dict(max_lr=1.0, pct_start=0.5, annihilation_pct=0.1)
    lin, _ = run(partial(OneCycle, anneal="linear", **kw), 81)
    cos, cos_mom = run(partial(OneCycle, anneal="cos", **kw), 81)
    w = (1 - math.cos(math.pi / 4)) / 2
    assert lin[10] == pytest.approx(0.1 + 0.9 * 0.25) and cos[10] == pytest.approx(0.1 + 0.9 * w)  # warm-up
    assert lin[48] == pytest.approx(1.0 - 0.9 * 0.25) and cos[48] == pytest.approx(1.0 - 0.9 * w)  # cool-down
    assert [lin[40], cos[40], lin[72], cos[72]] == pytest.approx([1.0, 1.0, 0.1, 0.1])
    assert cos_mom[10] == pytest.approx(0.95 - 0.1 * w)  # momentum follows the same curve, inverted
    assert lin[76] == pytest.approx((0.1 + 0.001) / 2) and cos[76] == pytest.approx((0.1 + 0.001) / 2)  # half-way
    assert cos[74] == pytest.approx(0.001 + 0.099 * (1 + math.cos(math.pi / 4)) / 2)  # annihilation, a quarter in


def test_max_lr_auto_is_the_groups_current_lr_and_bad_values():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.3}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.6}])
    sched = OneCycle(opt, max_lr="auto", total_steps=10)
    assert sched.max_lrs == [0.3, 0.6]
    with pytest.raises(ValueError, match="max_lr must be a number, a list, 'auto' or null, got 'max'"):
        OneCycle(opt, max_lr="max", total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        OneCycle(opt, total_steps=0)


class LRLog(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[tuple[int, float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        g = trainer.optimizers[0].param_groups[0]
        self.lrs.append((trainer.global_step, g["lr"], g["momentum"]))


def _module() -> ClassifierModule:
    L.seed_everything(0, verbose=False)
    return ClassifierModule("lenet5_bn", 10, 1, lr=0.05, lr_scheduler=partial(OneCycle, max_lr="auto"))


def test_resume_continues_the_cycle_at_the_found_lr(trainer_kwargs, tmp_path):
    kw = {
        **trainer_kwargs,
        "max_epochs": 3,
        "limit_train_batches": 4,
        "limit_val_batches": 1,
        "enable_checkpointing": True,
    }
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    full_log = LRLog()
    finder = LRRangeTest(min_lr=1e-4, max_lr=10, num_steps=30, plot=False)
    module = _module()
    L.Trainer(**kw, callbacks=[finder, full_log, ckpt]).fit(module, datamodule=DigitsDataModule())
    found = finder.results["suggestion"]
    assert found is not None and module.lr == found
    assert max(lr for _, lr, _ in full_log.lrs) == pytest.approx(found, rel=1e-9)

    resumed_log = LRLog()
    finder2 = LRRangeTest(min_lr=1e-4, max_lr=10, num_steps=30, plot=False)
    module2 = _module()
    L.Trainer(**kw, callbacks=[finder2, resumed_log]).fit(
        module2, datamodule=DigitsDataModule(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0.ckpt")
    )
    assert finder2.results == {}  # not re-run on resume ...
    assert module2.lr == found  # ... its suggestion comes back from the checkpoint
    assert [s for s, _, _ in resumed_log.lrs] == list(range(4, 12))
    flat = [v for row in resumed_log.lrs for v in row[1:]]
    assert flat == pytest.approx([v for row in full_log.lrs[4:] for v in row[1:]], rel=1e-12)
