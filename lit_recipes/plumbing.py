"""Plumbing written once: train/eval mode, gathering shards by sample index, ``sys.argv`` swaps and
closing W&B runs. Atomic files live in :mod:`lit_recipes.artifacts` (:func:`atomic_write`).

Every layer above ``models`` may import this module; it imports only torch (Lightning lazily).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put ``modules`` (and all their submodules) in eval mode; restore every submodule's own
    ``training`` flag on exit, also on an exception (a frozen, eval-mode BN inside a training model
    stays in eval mode afterwards).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    modes = {m: m.training for module in modules for m in module.modules()}
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextlib.contextmanager
def swapped_argv(argv: Sequence[str] | None = None) -> Iterator[None]:
    """Run the body with ``sys.argv = [sys.argv[0], *argv]`` (default: no arguments) and restore it.
    LightningCLI and jsonargparse read ``sys.argv`` when given no ``args``; a caller that passes its
    arguments explicitly (a notebook, pytest, k-fold building one CLI per fold) must hide its own."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "lit-recipes", *(argv or [])]
    try:
        yield
    finally:
        sys.argv = saved


def gather_by_index(strategy: Any, index: torch.Tensor, *values: torch.Tensor, total: int) -> tuple[torch.Tensor, ...]:
    """Gather per-sample tensors scored on strided shards from every rank.

    Each rank holds ``index`` (int64 sample positions) and ``values`` (same first dimension) for its
    shard of a split of ``total`` samples; shards differ by at most one sample. The shards are padded
    to ``ceil(total / world_size)`` with index ``-1``, gathered with ``strategy.all_gather`` (on every
    rank) and the padding is dropped. With one process (or ``strategy`` ``None``) the inputs come back
    unchanged. Returns ``(index, *values)`` in rank-major order (sort by ``index`` if needed).

    Raises:
        ValueError: a value's first dimension differs from ``index``'s, or a shard is larger than
            ``ceil(total / world_size)``.
    """
    for v in values:
        if v.shape[0] != index.shape[0]:
            raise ValueError(f"gather_by_index: {v.shape[0]} values for {index.shape[0]} indices")
    world = int(getattr(strategy, "world_size", 1) or 1) if strategy is not None else 1
    if world <= 1:
        return (index, *values)
    size = math.ceil(total / world)
    pad = size - index.shape[0]
    if pad < 0:
        raise ValueError(f"gather_by_index: a shard of {index.shape[0]} samples is larger than ceil({total}/{world})")
    padded = [torch.cat([index, index.new_full((pad,), -1)])]
    padded += [torch.cat([v, v.new_zeros((pad, *v.shape[1:]))]) for v in values]
    gathered = [strategy.all_gather(t).reshape(-1, *t.shape[1:]) for t in padded]
    keep = gathered[0] >= 0
    return tuple(t[keep] for t in gathered)


def finish_wandb(target: Any = None) -> None:
    """Close W&B runs so their summary is written and offline runs become syncable.

    ``target`` is a Trainer (its :class:`~lightning.pytorch.loggers.WandbLogger` runs are finished on
    rank 0, only if they were started), a ``wandb`` run object (finished), or ``None`` (the global
    ``wandb.run``, if any). Never imports wandb when nothing was started."""
    if target is None:
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish()
        return
    if hasattr(target, "loggers"):  # a Trainer
        if not getattr(target, "is_global_zero", True):
            return
        from lightning.pytorch.loggers import WandbLogger

        from lit_recipes.lightning_compat import wandb_experiment_started

        for logger in target.loggers:
            if isinstance(logger, WandbLogger) and wandb_experiment_started(logger):
                logger.experiment.finish()
        return
    target.finish()


__all__ = ["eval_mode", "finish_wandb", "gather_by_index", "swapped_argv"]
