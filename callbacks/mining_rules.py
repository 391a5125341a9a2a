"""The decisions of hard-negative mining as pure functions (no Trainer, no Lightning).

* scores: :func:`positive_scores` (the model's score of "not my own group": for a negative, the
  probability of the positive classes; for any sample without ``negative_ids``, one minus the
  probability of its own class);
* which negatives are hard: :func:`threshold_at_recall` (the score threshold that keeps a target
  recall on validation positives) and :func:`select_hard` (top count / top fraction / above a
  threshold, ranked by score or loss), or :func:`sample_hard` (as many, drawn at random with
  probability proportional to the score or loss: hard ones more often, not only the very top);
* the budget of an epoch: :func:`plan_budget` (negatives per epoch from a count or a ratio to the
  positives) and :func:`budget_weights` (expected draws per sample: every positive once, the mined
  hardest once, the rest of the budget spread over random negatives);
* the metrics of a detector: :func:`detection_metrics` (average precision, precision / recall / F1
  and false positives at the threshold chosen on validation for a target recall) and
  :func:`pr_figure`; the grid of the hardest negatives with their file names (:func:`hardest_grid`).

Example:
    >>> import numpy as np
    >>> from lit_recipes.callbacks.mining_rules import select_hard, threshold_at_recall
    >>> threshold_at_recall(np.array([0.9, 0.8, 0.3, 0.1]), 0.5)
    0.8
    >>> select_hard(np.array([0.1, 0.7, 0.95, 0.2]), count=2).tolist()
    [2, 1]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def check_recall(name: str, value: float | None) -> None:
    """A target recall must be in (0, 1] (``None`` passes)."""
    if value is not None and not (isinstance(value, int | float) and 0.0 < value <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")


def check_arguments(
    *, every_n_epochs, warmup_epochs, negative_classes, selection, draw, fraction, count, target_recall,
    negatives_per_epoch, negatives_ratio, hard_share, boost, initial_negative_fraction, max_rounds,
    candidates_per_round, report_recall, top_k,
) -> None:  # fmt: skip
    """The argument checks of ``HardNegativeMining`` (each failure a one-line ``ValueError`` naming it).

    Every checked argument is a required keyword (``HardNegativeMining.__init__`` passes each by name):
    an argument renamed on one side only is a ``TypeError``, never a check skipped."""
    if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
        raise ValueError(f"every_n_epochs must be an int >= 1, got {every_n_epochs!r}")
    if not isinstance(warmup_epochs, int) or warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
    if selection not in ("score", "loss", "misclassified"):
        raise ValueError(f"selection must be 'score', 'loss' or 'misclassified', got {selection!r}")
    if draw not in ("top", "proportional"):
        raise ValueError(f"draw must be 'top' or 'proportional', got {draw!r}")
    if draw == "proportional" and selection == "misclassified":
        raise ValueError("draw='proportional' needs selection 'score' or 'loss' ('misclassified' takes every error)")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if count is not None and count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    check_recall("target_recall", target_recall)
    check_recall("report_recall", report_recall)
    hard_quota(1, hard_share)
    if not (isinstance(boost, int | float) and math.isfinite(boost) and boost > 0):
        raise ValueError(f"boost must be a finite number > 0, got {boost!r}")
    if not 0.0 < initial_negative_fraction <= 1.0:
        raise ValueError(f"initial_negative_fraction must be in (0, 1], got {initial_negative_fraction}")
    if negative_classes is not None and len(negative_classes) == 0:
        raise ValueError("negative_classes must name at least one class (or be null)")
    needs_negatives = {"target_recall": target_recall, "negatives_per_epoch": negatives_per_epoch,
                       "negatives_ratio": negatives_ratio, "initial_negative_fraction": initial_negative_fraction < 1}  # fmt: skip
    for name, value in needs_negatives.items():
        if value not in (None, False) and not negative_classes:
            raise ValueError(f"{name} needs negative_classes (which samples are negatives?)")
    plan_budget(0, 2**62, negatives_per_epoch, negatives_ratio)  # the budget's own checks
    if max_rounds is not None and (isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 0):
        raise ValueError(f"max_rounds must be an int >= 0 or null, got {max_rounds!r}")
    if candidates_per_round is not None and (
        isinstance(candidates_per_round, bool) or not isinstance(candidates_per_round, int) or candidates_per_round < 1
    ):
        raise ValueError(f"candidates_per_round must be an int >= 1 or null, got {candidates_per_round!r}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")


def resolve_negative_classes(negative_classes: Sequence[str | int], class_names: Sequence[str]) -> list[int]:
    """Class indices of ``negative_classes`` (names or indices); an unknown one is a one-line error."""
    names = [str(c) for c in class_names]
    ids = set()
    for c in negative_classes:
        if isinstance(c, str) and c in names:
            ids.add(names.index(c))
        elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names):
            ids.add(c)
        else:
            raise ValueError(f"negative_classes: unknown class {c!r}; the classes are {', '.join(names)}")
    if len(ids) == len(names):
        raise ValueError("negative_classes names every class: no positives are left")
    return sorted(ids)


def positive_scores(logits: torch.Tensor, targets: torch.Tensor, negative_ids: Sequence[int] | None) -> torch.Tensor:
    """Per-sample hardness score in [0, 1] from logits.

    With ``negative_ids``: the softmax mass of the non-negative (positive) classes, i.e. the
    model's positive score; a hard negative scores high. Without: one minus the probability of the
    sample's own class.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    if negative_ids is not None:
        neg = torch.zeros(probs.shape[-1], dtype=torch.bool, device=probs.device)
        neg[torch.as_tensor(list(negative_ids), dtype=torch.long, device=probs.device)] = True
        return probs[:, ~neg].sum(-1)
    return 1.0 - probs.gather(1, targets.long().view(-1, 1)).squeeze(1)


def threshold_at_recall(positive_scores: np.ndarray, target_recall: float) -> float:
    """The highest threshold ``t`` such that ``mean(positive_scores >= t) >= target_recall``."""
    check_recall("target_recall", target_recall)
    s = np.sort(np.asarray(positive_scores, dtype=np.float64))[::-1]
    if len(s) == 0:
        raise ValueError("threshold_at_recall: no positive scores (the validation split has no positives)")
    k = max(1, math.ceil(target_recall * len(s) - 1e-9))
    return float(s[k - 1])


def select_hard(
    scores: np.ndarray,
    count: int | None = None,
    fraction: float | None = None,
    threshold: float | None = None,
    cap: int | None = None,
) -> np.ndarray:
    """Positions of the hardest entries of ``scores`` (highest first, ties by position).

    Exactly one of ``count`` (the top ``count``), ``fraction`` (the top ``ceil(fraction * n)``) or
    ``threshold`` (every score ``>= threshold``) chooses; ``cap`` bounds the result's length.
    """
    given = [name for name, v in (("count", count), ("fraction", fraction), ("threshold", threshold)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"select_hard: give exactly one of count, fraction, threshold (got {given or 'none'})")
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    if count is not None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        k = min(int(count), len(scores))
    elif fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        k = min(len(scores), math.ceil(fraction * len(scores)))
    else:
        k = int((scores >= threshold).sum())
    if cap is not None:
        k = min(k, int(cap))
    return order[:k]


def sample_hard(weights: np.ndarray, k: int, seed: int | Sequence[int]) -> np.ndarray:
    """``k`` positions of ``weights`` drawn without replacement with probability proportional to the
    weights (>= 0; a score or a loss), highest weight first.

    Efraimidis-Spirakis: each entry gets the key ``log(u) / w`` for a uniform ``u`` of a generator
    seeded with ``seed`` (the same draw on every rank), and the ``k`` largest keys win. An entry of
    weight 0 comes only after every positive one; ``k`` is capped at ``len(weights)``.

    >>> sample_hard(np.array([0.0, 1.0, 0.0, 2.0]), 2, seed=0).tolist()
    [3, 1]
    >>> len(sample_hard(np.array([0.9, 0.1, 0.5]), 5, seed=1))
    3
    """
    w = np.asarray(weights, dtype=np.float64)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if np.any(~np.isfinite(w)) or np.any(w < 0):
        raise ValueError("sample_hard: weights must be finite and >= 0")
    k = min(int(k), len(w))
    u = np.random.default_rng(seed).random(len(w))
    with np.errstate(divide="ignore"):
        keys = np.where(w > 0, np.log(np.maximum(u, 1e-300)) / np.where(w > 0, w, 1.0), -np.inf)
    chosen = np.argsort(-keys, kind="stable")[:k]
    return chosen[np.argsort(-w[chosen], kind="stable")]


def plan_budget(
    num_positives: int,
    num_negatives: int,
    negatives_per_epoch: int | None = None,
    negatives_ratio: float | None = None,
) -> int | None:
    """Negatives per epoch: ``negatives_per_epoch``, or ``round(negatives_ratio * num_positives)``
    (``None`` when neither is given: no budget, every negative every epoch)."""
    if negatives_per_epoch is not None and negatives_ratio is not None:
        raise ValueError("give negatives_per_epoch or negatives_ratio, not both")
    if negatives_per_epoch is not None:
        budget, what = int(negatives_per_epoch), f"negatives_per_epoch={negatives_per_epoch}"
    elif negatives_ratio is not None:
        if negatives_ratio <= 0:
            raise ValueError(f"negatives_ratio must be > 0, got {negatives_ratio}")
        budget = max(1, round(negatives_ratio * num_positives))
        what = f"negatives_ratio={negatives_ratio} ({budget} negatives for {num_positives} positives)"
    else:
        return None
    if budget < 1:
        raise ValueError(f"negatives_per_epoch must be >= 1, got {negatives_per_epoch}")
    if budget > num_negatives:
        raise ValueError(f"{what} is larger than the pool of {num_negatives} training negatives")
    return budget


def hard_quota(budget: int, hard_share: float) -> int:
    """How many of an epoch's ``budget`` negatives may be mined ones (the rest stay random)."""
    if not 0.0 <= hard_share < 1.0:
        raise ValueError(f"hard_share must be in [0, 1), got {hard_share}")
    return int(math.floor(hard_share * budget))


def budget_weights(
    n: int, positives: np.ndarray, random_pool: np.ndarray, hard: np.ndarray, budget: int, quota: int | None = None
) -> tuple[torch.Tensor, int]:
    """Expected draws per epoch of each of ``n`` pool items, and the epoch length.

    Every positive once; ``q = min(quota, len(hard))`` draws spread evenly over the ``hard``
    negatives (each of them once when ``len(hard) <= quota``, else a fresh ``q`` of them each
    epoch); the other ``budget - q`` draws spread evenly over ``random_pool`` minus ``hard`` (each
    at most once). Fed to a systematic sampler (``set_sample_weights(w, num_samples=...)``) an item
    of weight 1 is drawn exactly once per epoch and an item of weight < 1 at most once.
    """
    w = torch.zeros(n, dtype=torch.double)
    positives, hard = np.asarray(positives, dtype=np.int64), np.asarray(hard, dtype=np.int64)
    quota = len(hard) if quota is None else int(quota)
    if quota > budget:
        raise ValueError(f"the hard quota {quota} exceeds the budget of {budget}")
    w[torch.as_tensor(positives)] = 1.0
    q = min(quota, len(hard))
    if q > 0:
        w[torch.as_tensor(hard)] = q / len(hard)
    rest = np.setdiff1d(np.asarray(random_pool, dtype=np.int64), hard)
    fill = min(budget - q, len(rest))
    if fill > 0:
        w[torch.as_tensor(rest)] = fill / len(rest)
    return w, int(len(positives) + q + max(fill, 0))


def detection_metrics(
    val_scores: np.ndarray,
    val_labels: np.ndarray,
    test_scores: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    target_recall: float = 0.9,
) -> dict[str, float]:
    """AP of the positive class and P/R/F1/false positives at the threshold chosen on validation.

    The threshold is :func:`threshold_at_recall` of the validation positives; the metrics are
    measured on ``test_*`` when given (else on validation). ``fp_at_recall_oracle`` is the false
    positive count on the evaluated split at the threshold that gives ``target_recall`` there.
    """
    from torchmetrics.functional.classification import binary_average_precision

    check_recall("target_recall", target_recall)
    val_scores, val_labels = np.asarray(val_scores, dtype=np.float64), np.asarray(val_labels).astype(bool)
    t = threshold_at_recall(val_scores[val_labels], target_recall)
    s, y = (val_scores, val_labels) if test_scores is None else (np.asarray(test_scores), np.asarray(test_labels))
    s, y = np.asarray(s, dtype=np.float64), np.asarray(y).astype(bool)
    pred = s >= t
    tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    ap = float(binary_average_precision(torch.as_tensor(s), torch.as_tensor(y, dtype=torch.long)))
    oracle = threshold_at_recall(s[y], target_recall)
    argmax = s >= 0.5
    return {
        "ap": ap,
        "threshold": t,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fp": fp,
        "tp": tp,
        "fn": fn,
        "fp_at_recall_oracle": int((s[~y] >= oracle).sum()),
        "argmax_fp": int((argmax & ~y).sum()),
        "argmax_recall": int((argmax & y).sum()) / max(int(y.sum()), 1),
    }


def pr_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], target_recall: float | None = 0.9, title: str = ""):
    """A matplotlib figure of precision-recall curves (torchmetrics), one per ``name -> (scores, labels)``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from torchmetrics.functional.classification import binary_average_precision, binary_precision_recall_curve

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (scores, labels) in curves.items():
        s, y = (
            torch.as_tensor(np.asarray(scores, dtype=np.float32)),
            torch.as_tensor(np.asarray(labels), dtype=torch.long),
        )
        p, r, _ = binary_precision_recall_curve(s, y)
        ap = float(binary_average_precision(s, y))
        ax.plot(r.numpy(), p.numpy(), label=f"{name} (AP {ap:.3f})")
    if target_recall is not None:
        ax.axvline(target_recall, color="grey", ls=":", lw=1, label=f"recall {target_recall:g}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_title(title or "precision-recall of the positive class", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def hardest_grid(images: list[np.ndarray], hardest: list[dict[str, Any]], names: list[str], title: str):
    """A figure of the hardest samples, each titled with its file name (or index), classes and score."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = min(8, len(images))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, h in zip(axes.flat, images, hardest, strict=False):
        img = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        label = "/".join(Path(h["path"]).parts[-2:]) if h.get("path") else f"#{h['index']}"
        ax.set_title(f"{label}\n{names[h['target']]}→{names[h['pred']]} {h['score']:.2f}", fontsize=6,
                     color="red" if h["pred"] != h["target"] else "black")  # fmt: skip
    fig.suptitle(f"hardest negatives, {title}: file, true→pred, positive score", fontsize=8)
    return fig
