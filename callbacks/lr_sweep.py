"""The LR range test's sweep as functions, usable and tested without a Trainer.

:func:`run_sweep` trains ``len(lrs)`` steps on the real optimizer while the LR grows, records raw and
EMA-smoothed losses and stops on divergence; a :class:`Snapshot` taken before puts back everything
the steps changed. :func:`sweep_results` turns the curve into the suggestion of every rule of
:mod:`lit_recipes.callbacks.lr_rules`; :func:`rescale_lrs` moves a running optimizer and schedule to
a new LR. :class:`~lit_recipes.callbacks.LRRangeTest` is the hook that wires them to a Trainer.

Example:
    >>> import torch
    >>> from lit_recipes.callbacks.lr_rules import sweep_lrs
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> x, y = torch.randn(64, 4), torch.randn(64, 1)
    >>> loss = lambda batch: torch.nn.functional.mse_loss(net(batch[0]), batch[1])
    >>> before = net.weight.detach().clone()
    >>> with Snapshot(net, opt):
    ...     curve = run_sweep(net, opt, iter([(x, y)] * 30), sweep_lrs(1e-4, 10, 30), loss_fn=loss)
    >>> curve["steps"] <= 30 and torch.equal(net.weight, before)
    True
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_recipes.callbacks.lr_rules import RULES, Suggestion, suggest

# keys of a parameter group / attributes of a scheduler that carry an LR (rescaled mid-training)
GROUP_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
SCHED_LR_LISTS = ("base_lrs", "max_lrs", "min_lrs", "_last_lr")


def check_arguments(
    *,
    min_lr: float,
    max_lr: float,
    num_steps: int,
    mode: str,
    suggestion: str,
    divergence_factor: float | None,
    beta: float,
    epoch: int | None,
    skip_begin: int,
    skip_end: int,
    on_no_divergence: str,
) -> None:
    """Validate ``LRRangeTest``'s arguments. Every checked argument is a required keyword
    (``LRRangeTest.__init__`` passes each by name): an argument renamed on one side only is a
    ``TypeError``, never a check skipped.

    Raises:
        ValueError: one line naming the first bad argument and its value.
    """
    if on_no_divergence not in ("keep", "apply"):
        raise ValueError(f"LRRangeTest: on_no_divergence must be 'keep' or 'apply', got {on_no_divergence!r}")
    if not (math.isfinite(min_lr) and min_lr > 0):
        raise ValueError(f"LRRangeTest: min_lr must be a positive number, got {min_lr}")
    if not (math.isfinite(max_lr) and max_lr > min_lr):
        raise ValueError(f"LRRangeTest: need min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if int(num_steps) != num_steps or num_steps < 10:
        raise ValueError(f"LRRangeTest: num_steps must be an integer >= 10, got {num_steps}")
    if mode not in ("exponential", "linear"):
        raise ValueError(f"LRRangeTest: mode must be 'exponential' or 'linear', got {mode!r}")
    if suggestion not in RULES:
        raise ValueError(f"LRRangeTest: suggestion must be one of {', '.join(RULES)}, got {suggestion!r}")
    if divergence_factor is not None and not divergence_factor > 1:
        raise ValueError(f"LRRangeTest: divergence_factor must be > 1 or null, got {divergence_factor}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"LRRangeTest: beta must be in [0, 1), got {beta}")
    if epoch is not None and epoch < 0:
        raise ValueError(f"LRRangeTest: epoch must be >= 0 or null, got {epoch}")
    if skip_begin < 0 or skip_end < 0:
        raise ValueError(f"LRRangeTest: skip_begin/skip_end must be >= 0, got {skip_begin}, {skip_end}")


class Snapshot:
    """Everything a sweep may change, copied at construction and put back by :meth:`restore`:
    parameters, buffers, gradients, every submodule's train/eval flag, the optimizer state and the
    schedulers' states (``scheduler_configs``: objects with a ``.scheduler``, as Lightning's). Also
    a context manager that restores on exit, exception or not."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler_configs: Iterable = ()):
        self.module = module
        self.tensors = {
            **{f"p:{n}": p.detach().clone() for n, p in module.named_parameters()},
            **{f"b:{n}": b.detach().clone() for n, b in module.named_buffers() if b is not None},
        }
        self.grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in module.named_parameters()}
        self.modes = {m: m.training for m in module.modules()}
        self.optimizer = optimizer
        self.opt_state = copy.deepcopy(optimizer.state_dict())
        self.schedulers = [(c.scheduler, copy.deepcopy(c.scheduler.state_dict())) for c in scheduler_configs]

    @torch.no_grad()
    def restore(self) -> None:
        for n, p in self.module.named_parameters():
            p.copy_(self.tensors[f"p:{n}"])
            saved = self.grads[n]
            p.grad = None if saved is None else saved.clone()
        for n, b in self.module.named_buffers():
            if b is not None:
                b.copy_(self.tensors[f"b:{n}"])
        for m, mode in self.modes.items():
            m.training = mode
        self.optimizer.load_state_dict(self.opt_state)
        for sched, state in self.schedulers:
            sched.load_state_dict(state)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


class _OneProcess:
    """The strategy of a plain, single-process sweep: no device move, no reduction."""

    world_size = 1

    @staticmethod
    def batch_to_device(batch: Any) -> Any:
        return batch

    @staticmethod
    def reduce(tensor: torch.Tensor, reduce_op: str = "mean") -> torch.Tensor:
        return tensor

    @staticmethod
    def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:  # noqa: A002 (Lightning's name)
        return decision


def average_gradients(strategy: Any, params: list[torch.nn.Parameter]) -> None:
    """All-reduce (mean) every gradient in one flat tensor; missing grads count as zeros."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = strategy.reduce(torch.cat([g.reshape(-1) for g in grads]), reduce_op="mean")
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def cycle_batches(loader: Iterable, num_steps: int) -> Iterator[Any]:
    """The loader's batches, restarted when it has fewer than ``num_steps`` (one info line says so).

    Raises:
        ValueError: the loader yields no batch.
    """
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        n = None
    if n is not None and n < num_steps:
        rank_zero_info(f"LRRangeTest: {num_steps} steps but the training loader has {n} batches; cycling it")
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("LRRangeTest: the training loader is empty")


def sweep_loss(module: Any, batch: Any) -> torch.Tensor:
    """The training loss of ``batch``: ``module.training_loss(batch)[0]``, else the mean of
    ``module.per_sample_loss(batch)``.

    Raises:
        ValueError: the module has neither method.
    """
    if hasattr(module, "training_loss"):
        return module.training_loss(batch)[0]
    if hasattr(module, "per_sample_loss"):
        return module.per_sample_loss(batch).mean()
    raise ValueError(
        f"LRRangeTest: {type(module).__name__} needs a training_loss(batch) or per_sample_loss(batch) method"
    )


def run_sweep(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Any],
    lrs: Sequence[float],
    *,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
    beta: float = 0.98,
    divergence_factor: float | None = 4.0,
    strategy: Any = None,
    step_context: Callable[[], contextlib.AbstractContextManager] | None = None,
    clip: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train one step per LR of ``lrs`` (each group's LR is ``lr * group.get("lr_mult", 1)``) on the
    next batch of ``batches`` and record the curve. Stops on a non-finite loss (not stepped) or once
    the bias-corrected EMA of the loss (``beta``) exceeds ``divergence_factor`` x its best.

    The module is put in train mode and *not* restored: wrap the call in a :class:`Snapshot`.
    ``strategy`` (Lightning's, or ``None`` for one process) moves batches to the device, averages
    the loss and, with more than one process, the gradients, so every rank sees one curve and stops
    at the same step. ``step_context`` wraps the forward pass (precision); ``clip`` runs after the
    backward pass. ``loss_fn`` defaults to :func:`sweep_loss` on ``module``.

    Returns:
        ``{"lrs", "losses" (raw, averaged over ranks), "smoothed", "stop_reason", "steps"}``.
    """
    strategy = _OneProcess() if strategy is None else strategy
    loss_fn = loss_fn or (lambda batch: sweep_loss(module, batch))
    step_context = step_context or contextlib.nullcontext
    params = [p for p in module.parameters() if p.requires_grad]
    world = int(getattr(strategy, "world_size", 1) or 1)
    out_lrs: list[float] = []
    raw: list[float] = []
    smoothed: list[float] = []
    avg, best = 0.0, math.inf
    stop_reason = "completed"
    module.train()
    with torch.enable_grad():
        for k, lr in enumerate(lrs):
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            batch = strategy.batch_to_device(next(batches))
            optimizer.zero_grad(set_to_none=True)
            with step_context():
                loss = loss_fn(batch)
            loss.backward()
            if world > 1:
                average_gradients(strategy, params)
            if clip is not None:
                clip()
            value = float(strategy.reduce(loss.detach().float(), reduce_op="mean"))
            out_lrs.append(lr)
            raw.append(value)
            if not math.isfinite(value):
                smoothed.append(float("nan"))
                stop_reason = f"non-finite loss at step {k} (lr {lr:.3g})"
                break
            optimizer.step()
            avg = beta * avg + (1 - beta) * value
            s = avg / (1 - beta ** (k + 1))
            smoothed.append(s)
            diverged = divergence_factor is not None and k > 0 and s > divergence_factor * best
            best = min(best, s)
            # identical on every rank (the curve is all-reduced); the vote makes it certain
            if strategy.reduce_boolean_decision(bool(diverged), all=False):
                stop_reason = (
                    f"diverged at step {k} (lr {lr:.3g}): smoothed loss {s:.4g} > {divergence_factor} x best {best:.4g}"
                )
                break
    return {"lrs": out_lrs, "losses": raw, "smoothed": smoothed, "stop_reason": stop_reason, "steps": len(out_lrs)}


def sweep_results(
    curve: dict[str, Any],
    *,
    rule: str,
    mode: str,
    min_lr: float,
    max_lr: float,
    num_steps: int,
    beta: float = 0.98,
    skip_begin: int = 10,
    skip_end: int = 1,
) -> tuple[dict[str, Any], Suggestion]:
    """Every rule's suggestion on a recorded ``curve`` (from :func:`run_sweep`); ``rule``'s is the
    one chosen. Returns the results record (``curve``'s keys, the sweep settings, the chosen rule's
    suggestion, index, reason, fallback flag, marks, level and curve, every rule's LR, the lowest
    smoothed loss) and the chosen :class:`~lit_recipes.callbacks.lr_rules.Suggestion`."""
    lrs, raw, sm = curve["lrs"], curve["losses"], curve["smoothed"]
    diverged = curve["stop_reason"] != "completed"
    opts = {"diverged": diverged, "beta": beta, "skip_begin": skip_begin, "skip_end": skip_end}
    every = {name: suggest(lrs, raw, name, **opts) for name in RULES}
    chosen = every[rule]
    finite = [v for v in sm if math.isfinite(v)]
    results = {
        **curve,
        "mode": mode,
        "min_lr": min_lr,
        "max_lr": max_lr,
        "num_steps": num_steps,
        "beta": beta,
        "rule": rule,
        "suggestion": chosen.lr,
        "suggestion_index": chosen.index,
        "reason": chosen.reason,
        "fallback": chosen.fallback,
        "marks": chosen.marks,
        "level": chosen.level,
        "curve": chosen.curve,
        "suggestions": {name: res.lr for name, res in every.items()},
        "min_loss": min(finite) if finite else None,
    }
    return results, chosen


def rescale_lrs(optimizers: Iterable[torch.optim.Optimizer], scheduler_configs: Iterable, factor: float) -> None:
    """Multiply every LR a running optimizer and schedule carry by ``factor`` (momentum and the
    schedule's position are kept): each group's ``lr``/``initial_lr``/``max_lr``/``min_lr``, each
    scheduler's ``base_lrs``/``max_lrs``/``min_lrs``/``_last_lr`` and ``eta_min``."""
    for opt in optimizers:
        for group in opt.param_groups:
            for k in GROUP_LR_KEYS:
                if isinstance(group.get(k), int | float):
                    group[k] *= factor
    for cfg in scheduler_configs:
        sched = cfg.scheduler
        for attr in SCHED_LR_LISTS:
            if isinstance(getattr(sched, attr, None), list):
                setattr(sched, attr, [v * factor for v in getattr(sched, attr)])
        if isinstance(getattr(sched, "eta_min", None), int | float):
            sched.eta_min *= factor


__all__ = [
    "GROUP_LR_KEYS",
    "SCHED_LR_LISTS",
    "Snapshot",
    "average_gradients",
    "check_arguments",
    "cycle_batches",
    "rescale_lrs",
    "run_sweep",
    "sweep_loss",
    "sweep_results",
]
