"""The DDP-safe weighted sampler behind ``sampling`` and ``set_sample_weights`` (hard-negative
mining, oversampling): every rank draws the same epoch and keeps its own strided shard.

Example:
    >>> from lit_recipes.datamodules.sampling import WeightedEpochSampler
    >>> sampler = WeightedEpochSampler([1.0, 0.0, 1.0], num_samples=4, seed=0, num_replicas=1, rank=0)
    >>> sorted(set(sampler)) <= [0, 2], len(sampler)
    (True, 4)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler


class WeightedEpochSampler(DistributedSampler):
    """A weighted sampler that is the same on every rank, sharded like ``DistributedSampler``.

    Each epoch every rank draws the *same* ``num_samples`` positions (with replacement, by
    ``weights``) from a generator seeded with ``seed + epoch``, then keeps its own strided shard
    ``draw[rank::world_size]`` (padded by wrap-around to equal length). The shards of all ranks are
    disjoint slices of one draw, and together they equal the single-process draw of that epoch.
    It subclasses ``DistributedSampler`` so Lightning does not wrap it again under DDP.

    Args:
        weights: one non-negative weight per dataset item.
        num_samples: draws per epoch (all ranks together); defaults to ``len(weights)``.
        seed: base seed of the per-epoch generator.
        num_replicas, rank: default to the process group's world size / rank (1 / 0 without one).
        systematic: draw by systematic sampling instead of with replacement: an item of expected
            count ``c = weight * num_samples / sum(weights)`` is drawn ``floor(c)`` or ``ceil(c)``
            times (a weight-1 item of a budgeted epoch exactly once), then the draw is shuffled.
    """

    def __init__(
        self,
        weights: Sequence[float] | torch.Tensor,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        systematic: bool = False,
    ) -> None:
        dist_ready = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if dist_ready else 1
        if rank is None:
            rank = torch.distributed.get_rank() if dist_ready else 0
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        if self.weights.ndim != 1 or len(self.weights) == 0:
            raise ValueError(f"weights must be a non-empty 1-D sequence, got shape {tuple(self.weights.shape)}")
        if not torch.isfinite(self.weights).all() or (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        self.total = int(num_samples or len(self.weights))
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.num_samples = math.ceil(self.total / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.shuffle = True
        self.drop_last = False
        self.systematic = systematic

    def epoch_draw(self, epoch: int | None = None) -> torch.Tensor:
        """The full (all-rank) draw of ``epoch`` (default: the current one)."""
        g = torch.Generator()
        g.manual_seed(self.seed + (self.epoch if epoch is None else epoch))
        if not self.systematic:
            return torch.multinomial(self.weights, self.total, replacement=True, generator=g)
        perm = torch.randperm(len(self.weights), generator=g)
        ends = torch.cumsum(self.weights[perm] * (self.total / self.weights.sum()), 0)
        points = torch.rand(1, generator=g, dtype=torch.double) + torch.arange(self.total, dtype=torch.double)
        draw = perm[torch.searchsorted(ends, points, right=True).clamp_max(len(perm) - 1)]
        return draw[torch.randperm(len(draw), generator=g)]

    def __iter__(self) -> Iterator[int]:
        draw = self.epoch_draw()
        if self.total_size > len(draw):
            draw = torch.cat([draw, draw[: self.total_size - len(draw)]])
        return iter(draw[self.rank : self.total_size : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def class_balance_weights(sampling: str, class_counts: Sequence[int], targets: Sequence[int]) -> torch.Tensor | None:
    """One weight per item of ``targets``: the inverse of its class's count in ``class_counts``
    (0 for a class absent there), or ``None`` for ``sampling == "none"``."""
    if sampling == "none":
        return None
    counts = torch.as_tensor(class_counts, dtype=torch.double)
    per_class = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
    return per_class[torch.as_tensor(targets)]


def pool_weights(weights: Sequence[float] | torch.Tensor, pool_size: int, train_indices: Sequence[int]) -> torch.Tensor:
    """``weights`` (one per pool item) checked and as a float64 tensor.

    Raises:
        ValueError: a wrong count, a negative or non-finite weight, or all training samples at 0.
    """
    w = torch.as_tensor(weights, dtype=torch.double).flatten()
    if len(w) != pool_size:
        raise ValueError(f"set_sample_weights: expected {pool_size} weights (one per pool item), got {len(w)}")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("set_sample_weights: weights must be finite and non-negative")
    if w[torch.as_tensor(train_indices)].sum() <= 0:
        raise ValueError("set_sample_weights: every training sample has weight 0")
    return w


def training_sampler(
    train_indices: Sequence[int],
    sample_weights: torch.Tensor | None,
    balance: torch.Tensor | None,
    oversample_counts: Sequence[int] | None = None,
    epoch_size: int | None = None,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
) -> WeightedEpochSampler | None:
    """The weighted sampler of a training split, or ``None`` when nothing weights it (plain shuffling).

    Args:
        train_indices: the split's pool positions.
        sample_weights, balance: mining / class-balance weights over the whole pool (either ``None``);
            a sample's weight is their product.
        oversample_counts: the split's class counts under ``sampling: oversample``: an epoch is then
            ``num_classes present x largest count`` draws (else ``len(train_indices)``).
        epoch_size: a budgeted epoch of this many draws, by systematic sampling (overrides the above).
        seed, rank, world_size: see :class:`WeightedEpochSampler`.

    Raises:
        ValueError: every training sample has weight 0.
    """
    train_idx = torch.as_tensor(train_indices)
    w = None if sample_weights is None else sample_weights[train_idx]
    if balance is not None:
        w = balance[train_idx] if w is None else w * balance[train_idx]
    if w is None:
        return None
    if w.sum() <= 0:
        raise ValueError("the class-balance x mining weights of every training sample are 0")
    num_samples = None
    if oversample_counts is not None:
        counts = torch.as_tensor(oversample_counts)
        num_samples = int(counts.max()) * int((counts > 0).sum())
    if epoch_size is not None:  # a budgeted epoch (set_sample_weights(..., num_samples))
        num_samples = epoch_size
    return WeightedEpochSampler(
        w, num_samples=num_samples, seed=seed, num_replicas=world_size, rank=rank, systematic=epoch_size is not None
    )


__all__ = ["WeightedEpochSampler", "class_balance_weights", "pool_weights", "training_sampler"]
