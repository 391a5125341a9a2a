"""Hard-negative mining's bookkeeping as functions, tested without a Trainer: which pool positions
are training negatives, the two-stage subset, the sampling weights a state implies, scoring a split
(sharded and gathered by sample index), and one round's selection with its history entry.

The decisions themselves (thresholds, budgets, top-k) are the pure rules of
:mod:`lit_recipes.callbacks.mining_rules`; :class:`~lit_recipes.callbacks.HardNegativeMining` is
the hook that calls these functions at the right time on every rank.

Example:
    >>> import torch
    >>> train, neg = pool_masks([0, 0, 1, 1, 0], [0, 1, 2, 3], negative_ids=[0])
    >>> train.tolist(), neg.tolist()
    ([True, True, True, True, False], [True, True, False, False, True])
    >>> w, n = sampling_weights(train, neg, torch.ones(5, dtype=torch.double), torch.ones(5, dtype=torch.bool),
    ...                         torch.tensor([True, False, False, False, False]), boost=5.0)
    >>> w.tolist(), n
    ([5.0, 1.0, 1.0, 1.0, 1.0], None)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.seed import isolate_rng

from lit_recipes.callbacks import mining_rules as rules
from lit_recipes.plumbing import eval_mode, gather_by_index


def pool_masks(
    train_targets: Sequence[int], train_indices: Sequence[int], negative_ids: Sequence[int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training-split mask, negative mask) over the pool of ``len(train_targets)`` samples; with
    ``negative_ids`` ``None`` every sample counts as a negative (all classes are mined)."""
    targets = torch.as_tensor(np.asarray(train_targets), dtype=torch.long)
    train = torch.zeros(len(targets), dtype=torch.bool)
    train[torch.as_tensor(np.asarray(train_indices), dtype=torch.long)] = True
    neg = torch.ones_like(train) if negative_ids is None else torch.isin(targets, torch.tensor(list(negative_ids)))
    return train, neg


def initial_included(train: torch.Tensor, neg: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """The samples random negatives may come from: all of them, or (``fraction`` < 1, the two-stage
    start) a seeded ``fraction`` of the training negatives (at least one) plus every other sample."""
    included = torch.ones(len(train), dtype=torch.bool)
    if fraction < 1.0:
        negatives = torch.nonzero(train & neg).flatten().numpy()
        keep = max(1, round(fraction * len(negatives)))
        held = np.random.default_rng(seed).choice(negatives, size=len(negatives) - keep, replace=False)
        included[torch.as_tensor(held, dtype=torch.long)] = False
    return included


def sample_candidates(pool_idx: np.ndarray, size: int | None, seed: int, round_: int) -> np.ndarray:
    """A round's scored candidates: all of ``pool_idx`` (``size`` ``None`` or >= its length), else
    ``size`` of them drawn without replacement by a generator seeded with ``(seed, round_)``, sorted
    (every rank draws the same ones).

    >>> c = sample_candidates(np.arange(10, 20), 3, seed=0, round_=0)
    >>> len(c), bool(np.all(np.diff(c) > 0)), set(c.tolist()) <= set(range(10, 20))
    (3, True, True)
    """
    pool_idx = np.asarray(pool_idx, dtype=np.int64)
    if size is None or size >= len(pool_idx):
        return pool_idx
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(round_)])
    return np.sort(rng.choice(pool_idx, size=int(size), replace=False))


def sampling_weights(
    train: torch.Tensor,
    neg: torch.Tensor,
    base_weights: torch.Tensor,
    included: torch.Tensor,
    hard: torch.Tensor,
    *,
    boost: float,
    budget: int | None = None,
    hard_share: float = 0.5,
) -> tuple[torch.Tensor, int | None]:
    """The sampling weights (and the epoch length of a budget) a mining state implies.

    Without a ``budget``: ``base_weights`` of the included samples, ``boost`` times for the hard
    ones (epoch length unchanged: ``None``). With one: every training positive once and ``budget``
    negatives, of which up to ``hard_share`` are the hard ones
    (:func:`~lit_recipes.callbacks.mining_rules.budget_weights`)."""
    if budget is None:
        w = base_weights.clone() * included.double()
        w[hard] *= boost
        return w, None
    pos = torch.nonzero(train & ~neg).flatten().numpy()
    pool = torch.nonzero(train & neg & included).flatten().numpy()
    hard_idx = torch.nonzero(hard).flatten().numpy()
    return rules.budget_weights(len(train), pos, pool, hard_idx, budget, rules.hard_quota(budget, hard_share))


@torch.no_grad()
def score_samples(
    module: torch.nn.Module,
    loader: Iterable,
    negative_ids: Sequence[int] | None,
    *,
    total: int,
    strategy: Any = None,
    forward_context: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> tuple[tuple[torch.Tensor, ...], np.ndarray]:
    """Score every batch ``(images, targets, indices, ...)`` of ``loader`` (this rank's shard of a
    split of ``total`` samples) in eval mode, without touching the RNG streams, then gather the
    shards of all ranks by sample index (:func:`~lit_recipes.plumbing.gather_by_index`).

    The logits come from ``module.predict_logits`` (else ``module(images)``), the loss from
    ``module.per_sample_loss`` (else cross-entropy), the score from
    :func:`~lit_recipes.callbacks.mining_rules.positive_scores`.

    Returns:
        ``(index, loss, score, pred, target)`` on the CPU, gathered in rank-major order, and the
        indices this rank scored (its shard).
    """
    device = getattr(module, "device", None) or next(module.parameters()).device
    parts: list[list[torch.Tensor]] = [[], [], [], [], []]
    with eval_mode(module), isolate_rng(), (forward_context or contextlib.nullcontext)():
        for batch in loader:
            images, y, i = (t.to(device) for t in batch[:3])
            logits = module.predict_logits(images) if hasattr(module, "predict_logits") else module(images)
            if hasattr(module, "per_sample_loss"):
                loss = module.per_sample_loss((images, y, i), logits)
            else:
                loss = F.cross_entropy(logits.float(), y, reduction="none")
            s = rules.positive_scores(logits, y, negative_ids)
            for p, t in zip(parts, (i.long(), loss.float(), s.float(), logits.argmax(-1).long(), y.long())):
                p.append(t)
    dtypes = (torch.long, torch.float, torch.float, torch.long, torch.long)
    out = [torch.cat(p) if p else torch.empty(0, dtype=d, device=device) for p, d in zip(parts, dtypes)]
    shard = out[0].cpu().numpy()
    gathered = gather_by_index(strategy, *out, total=total)
    return tuple(t.cpu() for t in gathered), shard


def select_round(
    targets: torch.Tensor,
    idx: torch.Tensor,
    loss: torch.Tensor,
    score: torch.Tensor,
    pred: torch.Tensor,
    negative_ids: Sequence[int] | None,
    *,
    selection: str = "score",
    threshold: float | None = None,
    count: int | None = None,
    fraction: float | None = 0.1,
    draw: str = "top",
    seed: int | Sequence[int] = 0,
) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """One round's choice among the scored pool ``idx`` (with its ``loss``, ``score``, ``pred``;
    ``targets`` are the whole pool's labels).

    A sample is *wrong* when predicted as another class (or, with ``negative_ids``, as any positive
    class). The ranking key is the loss (``selection="loss"``) or the score. ``misclassified`` keeps
    only the wrong ones; otherwise every one scoring at least ``threshold`` (when given), the top
    ``count``, or the top ``fraction`` (default 0.1). ``draw="proportional"`` keeps how many that
    rule takes but draws them (seeded by ``seed``) with probability proportional to the key
    (:func:`~lit_recipes.callbacks.mining_rules.sample_hard`).

    Returns:
        (positions into ``idx`` of the hard samples, the wrong mask, the ranking key; ``-inf`` for
        samples that were not selected when drawn, or that ``misclassified`` can not select).
    """
    if negative_ids is None:
        wrong = pred != targets[idx]
    else:  # a false positive: a negative predicted as any positive class
        wrong = ~torch.isin(pred, torch.tensor(list(negative_ids)))
    key = (loss if selection == "loss" else score).numpy()
    if selection == "misclassified":
        key = np.where(wrong.numpy(), key, -np.inf)
        pos = rules.select_hard(key, count=int(wrong.sum()))
    elif threshold is not None:
        pos = rules.select_hard(score.numpy(), threshold=threshold)
    elif count is not None:
        pos = rules.select_hard(key, count=count)
    else:
        pos = rules.select_hard(key, fraction=fraction or 0.1)
    if draw == "proportional" and selection != "misclassified":
        pos = rules.sample_hard(np.clip(key, 0.0, None), len(pos), seed)
        key = np.where(np.isin(np.arange(len(key)), pos), key, -np.inf)  # the grid shows the drawn ones
    return pos, wrong, key


def hardest_samples(
    key: np.ndarray,
    idx: torch.Tensor,
    targets: torch.Tensor,
    pred: torch.Tensor,
    score: torch.Tensor,
    loss: torch.Tensor,
    top_k: int,
    files: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """The ``top_k`` samples with the highest finite ``key`` (ties in pool order): index, file path
    (``None`` without ``files``), target, prediction, score and loss, for the history and the grid."""
    top = torch.argsort(torch.as_tensor(key), descending=True, stable=True)[:top_k]
    return [
        {"index": int(idx[j]), "path": None if files is None else str(files[int(idx[j])]),
         "target": int(targets[idx[j]]), "pred": int(pred[j]), "score": float(score[j]), "loss": float(loss[j])}
        for j in top.tolist() if np.isfinite(float(key[j]))
    ]  # fmt: skip


def round_entry(
    round_: int,
    epoch: int,
    pool_size: int,
    wrong: torch.Tensor,
    new_hard: torch.Tensor,
    hard: torch.Tensor,
    included: torch.Tensor,
    threshold: float | None,
    seconds: float,
) -> dict[str, Any]:
    """A round's history entry (``epoch_size`` and ``hardest`` are added by the caller): the pool
    size, the misclassified, the hard (``new_hard``, a pool mask), those hard in the previous round
    too (``hard``) and those new to the sampler (not ``included`` before)."""
    return {
        "round": round_, "epoch": epoch, "pool_size": pool_size,
        "num_errors": int(wrong.sum()), "num_hard": int(new_hard.sum()),
        "num_repeat": int((new_hard & hard).sum()), "num_new": int((new_hard & ~included).sum()),
        "threshold": threshold, "seconds": seconds,
    }  # fmt: skip


__all__ = [
    "hardest_samples",
    "initial_included",
    "pool_masks",
    "round_entry",
    "sample_candidates",
    "sampling_weights",
    "score_samples",
    "select_round",
]
