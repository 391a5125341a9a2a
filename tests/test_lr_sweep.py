"""The LR range test's algorithm without a Trainer: the snapshot that puts everything back, the sweep
(divergence and NaN stops, rank averaging, ``lr_mult``), the batches, the results record, the
mid-training rescale and the figure (:mod:`lit_recipes.callbacks.lr_sweep`, ``lr_plot``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lit_recipes.callbacks.lr_rules import RULES, smooth_losses, suggest, sweep_lrs


class FakeStrategy:
    """Two ranks seen from one: ``reduce`` averages with a fixed other rank's tensor."""

    world_size = 2

    def __init__(self, other: float = 0.0) -> None:
        self.other, self.reduced = other, []

    def batch_to_device(self, batch):
        return batch

    def reduce(self, tensor, reduce_op="mean"):
        self.reduced.append(tensor.clone())
        return (tensor + self.other) / 2

    def reduce_boolean_decision(self, decision, all=True):  # noqa: A002
        return decision


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 1)
    )


def test_snapshot_restores_weights_buffers_grads_modes_optimizer_and_scheduler():
    from lit_recipes.callbacks.lr_sweep import Snapshot

    net = tiny_net()
    net[1].eval()  # a frozen BN inside a training model stays in eval mode
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    net(torch.randn(8, 3)).sum().backward()
    opt.step()
    sched.step()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    grads = [p.grad.clone() for p in net.parameters()]
    opt_before, sched_before = json.dumps(str(opt.state_dict())), sched.state_dict()
    cfg = type("Cfg", (), {"scheduler": sched})()
    with Snapshot(net, opt, [cfg]):
        net.train()
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            net(torch.randn(8, 3)).pow(2).sum().backward()
            opt.step()
            sched.step()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, net.parameters()))
    assert [m.training for m in net.modules()] == [True, True, False, True, True]
    assert json.dumps(str(opt.state_dict())) == opt_before and sched.state_dict() == sched_before


def test_run_sweep_stops_at_divergence_and_at_a_non_finite_loss():
    from lit_recipes.callbacks.lr_sweep import run_sweep

    net = torch.nn.Linear(1, 1, bias=False)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    # loss 1 for 5 steps, then 10: the EMA (beta 0) is the loss itself, 10 > 4 x 1 at step 5
    values = iter([1.0] * 5 + [10.0] * 5)
    loss_fn = lambda batch: net.weight.sum() * 0 + next(values)  # noqa: E731
    lrs = [10.0**k for k in range(-5, 5)]
    curve = run_sweep(net, opt, iter(range(10)), lrs, loss_fn=loss_fn, beta=0.0, divergence_factor=4.0)
    assert curve["steps"] == 6 and curve["lrs"] == lrs[:6] and curve["losses"] == [1.0] * 5 + [10.0]
    assert curve["smoothed"] == curve["losses"] and curve["stop_reason"].startswith("diverged at step 5")
    assert opt.param_groups[0]["lr"] == lrs[5]
    # without a divergence factor the sweep runs to the end; a NaN stops it before the optimizer steps
    values = iter([1.0, 2.0, float("nan"), 1.0])
    w = net.weight.detach().clone()
    curve = run_sweep(net, opt, iter(range(4)), [0.0, 0.0, 5.0, 0.0], loss_fn=loss_fn, divergence_factor=None)
    assert curve["steps"] == 3 and math.isnan(curve["smoothed"][2]) and curve["stop_reason"].startswith("non-finite")
    assert torch.equal(net.weight, w)  # lr 0 twice, then no step on the NaN


def test_run_sweep_averages_loss_and_gradients_over_ranks_and_honours_lr_mult():
    from lit_recipes.callbacks.lr_sweep import average_gradients, run_sweep

    a, b = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    opt = torch.optim.SGD([{"params": a.parameters()}, {"params": b.parameters(), "lr_mult": 0.5}], lr=1.0)
    net = torch.nn.ModuleList([a, b])
    strategy = FakeStrategy(other=3.0)
    curve = run_sweep(
        net, opt, iter([torch.ones(1, 2)] * 10), [0.1] * 10, loss_fn=lambda x: a(x).sum() * 0 + 1.0,
        divergence_factor=None, strategy=strategy,
    )  # fmt: skip
    assert curve["losses"] == [2.0] * 10  # (1 + 3) / 2: every rank records the mean
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05]
    # the gradients are reduced in one flat tensor; a parameter without a gradient counts as zeros
    a.weight.grad, b.weight.grad = torch.tensor([[2.0, 4.0]]), None
    average_gradients(FakeStrategy(other=0.0), [a.weight, b.weight])
    assert torch.equal(a.weight.grad, torch.tensor([[1.0, 2.0]])) and torch.equal(b.weight.grad, torch.zeros(1, 2))


def test_cycle_batches_and_sweep_loss():
    from lit_recipes.callbacks.lr_sweep import cycle_batches, sweep_loss

    it = cycle_batches([1, 2], num_steps=5)
    assert [next(it) for _ in range(5)] == [1, 2, 1, 2, 1]
    with pytest.raises(ValueError, match="the training loader is empty"):
        next(cycle_batches([], num_steps=5))
    with pytest.raises(ValueError, match="Linear needs a training_loss"):
        sweep_loss(torch.nn.Linear(1, 1), None)


def test_sweep_results_and_rescale_lrs():
    from lit_recipes.callbacks.lr_sweep import rescale_lrs, sweep_results

    lrs = sweep_lrs(1e-4, 10, 60)
    raw = [2.0 - 1.5 * math.exp(-((math.log10(lr) + 1) ** 2)) for lr in lrs]
    curve = {"lrs": lrs, "losses": raw, "smoothed": smooth_losses(raw), "stop_reason": "completed", "steps": 60}
    res, chosen = sweep_results(curve, rule="minimum", mode="exponential", min_lr=1e-4, max_lr=10, num_steps=60)
    assert res["suggestion"] == chosen.lr == suggest(lrs, raw, "minimum", diverged=False).lr
    assert res["suggestions"] == {r: suggest(lrs, raw, r, diverged=False).lr for r in RULES}
    assert res["min_loss"] == min(res["smoothed"]) and res["num_steps"] == 60 and res["rule"] == "minimum"

    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.01)
    rescale_lrs([opt], [type("Cfg", (), {"scheduler": sched})()], 3.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.3) and opt.param_groups[0]["initial_lr"] == pytest.approx(0.3)
    assert sched.base_lrs == pytest.approx([0.3]) and sched.eta_min == pytest.approx(0.03)


def test_range_test_figure_marks_the_rule_and_the_raw_losses():
    from lit_recipes.callbacks.lr_plot import range_test_figure

    lrs = sweep_lrs(1e-4, 10, 40)
    raw = [2.0 - 1.5 * math.exp(-((math.log10(lr) + 1) ** 2)) for lr in lrs]
    chosen = suggest(lrs, raw, "knee", diverged=False)
    res = {"lrs": lrs, "losses": raw, "smoothed": smooth_losses(raw), "rule": "knee", "suggestion": chosen.lr,
           "suggestion_index": chosen.index, "marks": chosen.marks, "curve": chosen.curve, "level": chosen.level}  # fmt: skip
    ax = range_test_figure(res).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    # the title names the suggestion, never as "knee: <lr>" beside the knee mark's own (lower) LR
    assert ax.get_title() == f"LR range test: suggested lr {chosen.lr:.3g} (rule knee)" and ax.get_xscale() == "log"
    knee = chosen.marks["knee"]
    assert f"knee (the loss enters the valley) {lrs[knee]:.2g}" in labels and lrs[knee] < chosen.lr
    assert "raw loss" in labels and "loss smoothed in log-LR" in labels
