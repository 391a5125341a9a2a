"""Optimizer and scheduler construction for :class:`~lit_recipes.module.ClassifierModule`.

Parameter groups by (head | backbone) x (decay | no decay), the optimizer built from a factory at the
module's current LR, the scheduler with its missing arguments filled in from the optimizer and the
Trainer, and Lightning's ``lr_scheduler`` configuration (per step or per epoch).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lit_recipes.optimization import build_optimizer, parameter_groups
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    >>> groups = parameter_groups(net, head_params=list(net[3].parameters()), head_lr_mult=10.0)
    >>> [(g["name"], g["lr_mult"]) for g in groups]
    [('backbone', 1.0), ('backbone_no_decay', 1.0), ('head', 10.0), ('head_no_decay', 10.0)]
    >>> opt = build_optimizer(lambda params: torch.optim.SGD(params, lr=1.0), 0.1, net, lambda: groups)
    >>> [g["lr"] for g in opt.param_groups]
    [0.1, 0.1, 1.0, 1.0]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import nn

#: schedulers stepped after every batch (the others step once per epoch)
STEP_SCHEDULERS = ("OneCycleLR", "CyclicLR", "OneCycle")
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def factory_class(factory: Callable) -> Any:
    """The class an optimizer/scheduler factory builds (jsonargparse gives
    ``partial(instantiator, ..., Class, **init_args)``); the factory itself when unknown."""
    if isinstance(factory, partial):
        return next((a for a in reversed(factory.args) if inspect.isclass(a)), factory.func)
    return factory


def parameter_groups(
    model: nn.Module,
    head_params: Iterable[nn.Parameter] = (),
    no_decay_norm_bias: bool = True,
    head_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """``model``'s parameters grouped by (head | backbone) x (decay | no decay), each group with a
    ``name`` and an ``lr_mult`` (``head_lr_mult`` for the head); the no-decay groups (normalisation
    weights, biases, 1-D parameters, when ``no_decay_norm_bias``) get ``weight_decay: 0``."""
    head = {id(p) for p in head_params}
    no_decay: set[int] = set()
    if no_decay_norm_bias:
        for m in model.modules():
            for name, p in m.named_parameters(recurse=False):
                if isinstance(m, NORM_TYPES) or name == "bias" or p.ndim <= 1:
                    no_decay.add(id(p))
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        groups.setdefault((id(p) in head, id(p) in no_decay), []).append(p)
    out = []
    for (is_head, nd), params in sorted(groups.items()):
        group: dict[str, Any] = {"params": params, "lr_mult": head_lr_mult if is_head else 1.0}
        group["name"] = ("head" if is_head else "backbone") + ("_no_decay" if nd else "")
        if nd:
            group["weight_decay"] = 0.0
        out.append(group)
    return out


def build_optimizer(
    factory: Callable, lr: float, model: nn.Module, groups: Callable[[], list[dict[str, Any]]]
) -> torch.optim.Optimizer:
    """``factory(groups())`` with every group's LR set to ``lr x lr_mult`` (also its ``initial_lr``).

    LBFGS takes a single parameter group: it gets ``model``'s trainable parameters instead (no
    per-group LR multiplier or decay exemption)."""
    if factory_class(factory) is torch.optim.LBFGS:
        optimizer = factory([p for p in model.parameters() if p.requires_grad])
    else:
        optimizer = factory(groups())
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        group["initial_lr"] = group["lr"]
    return optimizer


def build_scheduler(factory: Callable, optimizer: torch.optim.Optimizer, trainer: Any) -> Any:
    """``factory(optimizer, **missing)``: the arguments the factory's class takes and was not given are
    filled in: ``max_lr`` (each group's current LR), ``base_lr`` (LR / 10), ``total_steps``
    (``trainer.estimated_stepping_batches``), ``T_max`` (``trainer.max_epochs``, 1 when unlimited).

    Raises:
        RuntimeError: ``total_steps`` or ``T_max`` must be filled in and ``trainer`` is ``None``.
    """
    cls = factory_class(factory)
    given = dict(factory.keywords) if isinstance(factory, partial) else {}
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    lrs = [g["lr"] for g in optimizer.param_groups]
    fill: dict[str, Any] = {}
    if "max_lr" in params and given.get("max_lr") is None:
        fill["max_lr"] = lrs if len(lrs) > 1 else lrs[0]
    if "base_lr" in params and given.get("base_lr") is None:
        fill["base_lr"] = [lr / 10 for lr in lrs] if len(lrs) > 1 else lrs[0] / 10
    needs_total = "total_steps" in params and given.get("total_steps") is None and given.get("epochs") is None
    needs_t_max = "T_max" in params and given.get("T_max") is None
    if (needs_total or needs_t_max) and trainer is None:
        missing = "total_steps" if needs_total else "T_max"
        raise RuntimeError(f"{getattr(cls, '__name__', cls)}: {missing} comes from the Trainer, and none is attached")
    if needs_total:
        fill["total_steps"] = int(trainer.estimated_stepping_batches)
    if needs_t_max:
        fill["T_max"] = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
    return factory(optimizer, **fill)


def scheduler_config(scheduler: Any) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` entry: ReduceLROnPlateau monitors ``val/loss`` per epoch,
    :data:`STEP_SCHEDULERS` step per batch, the others per epoch."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"}
    return {"scheduler": scheduler, "interval": "step" if type(scheduler).__name__ in STEP_SCHEDULERS else "epoch"}


__all__ = [
    "STEP_SCHEDULERS",
    "build_optimizer",
    "build_scheduler",
    "factory_class",
    "parameter_groups",
    "scheduler_config",
]
