r"""The training doctor's measurements: which training samples to score, the clean loss sums, and
the validation record the rules of :mod:`lit_recipes.callbacks.doctor_rules` judge.

Functions over tensors, loaders and plain numbers: :class:`~lit_recipes.callbacks.GapMonitor`
calls them from its hooks, the tests call them without a ``Trainer``.

Example:
    >>> import numpy as np
    >>> stratified_subset(np.array([0, 0, 0, 1]), np.arange(4), size=2, seed=0).tolist()
    [2, 3]
    >>> loss_sd(total=2.0, squares=2.5, count=2)
    0.7071067811865476
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng

from lit_recipes.callbacks.doctor_rules import Hysteresis
from lit_recipes.plumbing import eval_mode


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_SETTINGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "subset_size": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "stop_on": (lambda v: v in (None, "overfitting"), "'overfitting' or null"),
    "patience": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "plot_every_n_epochs": (lambda v: _integer(v) and v >= 1, ">= 1"),
    "batch_size": (lambda v: v is None or (_integer(v) and v >= 1), ">= 1 or null"),
    "num_classes": (lambda v: v is None or (_integer(v) and v >= 2), ">= 2"),
}


def check_settings(owner: str = "GapMonitor", **values: Any) -> None:
    """Raise a one-line ``ValueError`` naming the first of the monitor's (non-threshold) settings
    ``values`` that is out of range (the thresholds are checked by ``Thresholds.check``)."""
    for name, value in values.items():
        ok, want = _SETTINGS[name]
        if not ok(value):
            raise ValueError(f"{owner}: {name} must be {want}, got {value!r}")


def stratified_subset(targets: np.ndarray, candidates: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` positions from ``candidates``, each class in proportion to its share, seeded.

    Proportional allocation with the largest-remainder rule (every present class gets at least one
    sample when ``size`` allows); returns sorted pool positions. ``size >= len(candidates)`` returns
    all of them.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    if size >= len(candidates):
        return np.sort(candidates)
    labels = np.asarray(targets)[candidates]
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(candidates)
    take = np.floor(exact).astype(int)
    if size >= len(classes):
        take = np.maximum(take, 1)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    i = 0
    while take.sum() < size:
        c = order[i % len(order)]
        if take[c] < counts[c]:
            take[c] += 1
        i += 1
    while take.sum() > size:  # the "at least one" floor overshot: trim the largest classes
        take[np.argmax(take)] -= 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(candidates[labels == c], size=k, replace=False) for c, k in zip(classes, take) if k > 0]
    return np.sort(np.concatenate(chosen))


def choose_subset(
    subset: np.ndarray | None, targets: np.ndarray, train_idx: np.ndarray, size: int, seed: int
) -> np.ndarray:
    """``subset`` when every position is still in the training split (a resume), else a new
    :func:`stratified_subset` of ``size`` positions of ``train_idx`` (all of them, with a note, when
    ``size`` exceeds the split)."""
    train_idx = np.asarray(train_idx)
    if subset is not None and np.isin(subset, train_idx).all():
        return subset
    if size > len(train_idx):
        rank_zero_info(f"GapMonitor: subset_size {size} > {len(train_idx)} training samples; scoring all of them")
    return stratified_subset(np.asarray(targets), train_idx, size, seed)


def chance_accuracy(targets: np.ndarray, subset: np.ndarray, num_classes: int) -> float:
    """Accuracy of always predicting the subset's majority class (at least ``1 / num_classes``)."""
    counts = np.bincount(np.asarray(targets)[subset], minlength=num_classes)
    return float(max(counts.max() / max(counts.sum(), 1), 1.0 / num_classes))


def loss_sums(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[count, sum of per-sample CE, sum of squares, correct]`` in float64."""
    losses = F.cross_entropy(logits.float(), targets, reduction="none").double()
    correct = (logits.argmax(-1) == targets).sum().double()
    return torch.stack([torch.tensor(float(len(targets)), dtype=torch.float64, device=losses.device),
                        losses.sum(), (losses * losses).sum(), correct])  # fmt: skip


def loss_sd(total: float, squares: float, count: float) -> float:
    """Sample standard deviation from a sum and a sum of squares (``nan`` when either is not finite)."""
    if count < 2 or not math.isfinite(total) or not math.isfinite(squares):
        return float("nan") if not (math.isfinite(total) and math.isfinite(squares)) else 0.0
    mean = total / count
    return math.sqrt(max(squares / count - mean * mean, 0.0) * count / (count - 1))


def clean_loss_sums(
    module: torch.nn.Module,
    loader: Iterable[Any],
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None,
    forward_context: Callable[[], Any] = contextlib.nullcontext,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """:func:`loss_sums` of ``predict(images)`` (default: ``module``) over ``loader``'s
    ``(images, targets, ...)`` batches: in eval mode (every submodule's mode restored), without
    gradients and under ``isolate_rng`` (the random stream is unchanged), on ``device`` (default:
    ``module``'s)."""
    if device is None:
        device = next(module.parameters()).device if any(True for _ in module.parameters()) else "cpu"
    predict = module if predict is None else predict
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    with eval_mode(module), isolate_rng(), torch.no_grad():
        for batch in loader:
            images = batch[0].to(device, non_blocking=True)
            targets = batch[1].to(device, non_blocking=True)
            with forward_context():
                logits = predict(images)
            totals += loss_sums(logits, targets).to(totals.device)
    return totals


def sums_to_metrics(totals: Iterable[float]) -> tuple[float, float, int, float]:
    """``(mean loss, accuracy, count, loss sd)`` from :func:`loss_sums` totals (summed over ranks)."""
    count, loss_sum, sq_sum, correct = (float(v) for v in totals)
    return loss_sum / max(count, 1), correct / max(count, 1), int(count), loss_sd(loss_sum, sq_sum, count)


def add_val_batch(sums: torch.Tensor, outputs: Any, targets: torch.Tensor) -> None:
    """Add one val batch to ``sums`` (in place): per-sample losses from the logits ``validation_step``
    returned, or only the count when it returned no logits (the val-loss spread becomes unknown)."""
    if isinstance(outputs, torch.Tensor) and outputs.ndim == 2 and len(outputs) == len(targets):
        sums += loss_sums(outputs.detach(), targets.to(outputs.device)).to(sums.device)
    else:
        sums[0] += len(targets)
        sums[1] = float("nan")


def current_lr(optimizers: Sequence[torch.optim.Optimizer]) -> float:
    """The LR of the first optimizer's first parameter group (``nan`` without an optimizer)."""
    return float(optimizers[0].param_groups[0]["lr"]) if optimizers else float("nan")


def epoch_fraction(done: int, total: float) -> float:
    """Share of the epoch's training batches that ran before this validation (1.0 when unknown)."""
    return min(1.0, done / total) if total and math.isfinite(total) and done else 1.0


def validation_record(
    *,
    epoch: int,
    step: int,
    fraction: float,
    clean: tuple[float, float, int, float],
    val_loss: float,
    val_acc: float,
    val_sums: Iterable[float],
    lr: float,
    warming_up: bool,
) -> dict[str, Any]:
    """One validation's record (before judging): ``clean`` is :func:`sums_to_metrics` of the clean
    train subset, ``val_sums`` the :func:`loss_sums` totals of the val batches."""
    tl, ta, count, tsd = clean
    nv, vsum, vsq, _ = (float(v) for v in val_sums)
    return {
        "epoch": epoch,
        "step": step,
        "epoch_fraction": fraction,
        "train_clean/loss": tl,
        "train_clean/acc": ta,
        "train_clean/loss_sd": tsd,
        "subset_count": count,
        "val/loss": val_loss,
        "val/acc": val_acc,
        "val/loss_sd": loss_sd(vsum, vsq, nv) if math.isfinite(vsum) else None,
        "val_count": int(nv),
        "gap/acc": ta - val_acc,
        "gap/loss_ratio": val_loss / max(tl, 1e-8),
        "lr": lr,
        "warming_up": warming_up,
    }


def logged_value(metrics: dict[str, Any], key: str) -> float:
    """``metrics[key]`` as a float; a one-line ``ValueError`` naming the logged val metrics if absent."""
    value = metrics.get(key)
    if value is None:
        logged = ", ".join(sorted(k for k in metrics if k.startswith("val"))) or "none"
        raise ValueError(f"GapMonitor: {key!r} was not logged at validation (logged val metrics: {logged})")
    return float(value)


def add_running(history: list[dict[str, Any]], epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """The epoch's running train metrics (``train/loss``, ``train/acc`` when logged) as a record;
    copied into this epoch's validation records of ``history`` (in place)."""
    running: dict[str, Any] = {"epoch": epoch}
    running.update({k: float(metrics[k]) for k in ("train/loss", "train/acc") if k in metrics})
    for record in history:
        if record["epoch"] == epoch:
            record.update({k: v for k, v in running.items() if k != "epoch"})
    return running


def pack_state(
    history: list[dict[str, Any]],
    train_running: list[dict[str, Any]],
    subset: np.ndarray | None,
    hysteresis: Hysteresis,
    lr_prev: float | None,
    bad_count: int,
    stopped_epoch: int | None,
    best_val_loss: float,
) -> dict[str, Any]:
    """The monitor's checkpoint state (plain Python: lists, numbers, dicts)."""
    return {
        "history": deepcopy(history),
        "train_running": deepcopy(train_running),
        "subset": None if subset is None else subset.tolist(),
        "hysteresis": hysteresis.state_dict(),
        "lr_prev": lr_prev,
        "bad_count": bad_count,
        "stopped_epoch": stopped_epoch,
        "best_val_loss": best_val_loss,
    }


def unpack_state(state: dict[str, Any], confirm: int) -> dict[str, Any]:
    """The inverse of :func:`pack_state` (same keys), with defaults for a partial state."""
    subset = state.get("subset")
    return {
        "history": list(state.get("history", [])),
        "train_running": list(state.get("train_running", [])),
        "subset": None if subset is None else np.asarray(subset, dtype=np.int64),
        "hysteresis": Hysteresis(**state.get("hysteresis", {"confirm": confirm})),
        "lr_prev": state.get("lr_prev"),
        "bad_count": int(state.get("bad_count", 0)),
        "stopped_epoch": state.get("stopped_epoch"),
        "best_val_loss": float(state.get("best_val_loss", math.inf)),
    }


__all__ = [
    "add_running",
    "add_val_batch",
    "chance_accuracy",
    "choose_subset",
    "check_settings",
    "clean_loss_sums",
    "current_lr",
    "epoch_fraction",
    "loss_sd",
    "logged_value",
    "loss_sums",
    "pack_state",
    "stratified_subset",
    "sums_to_metrics",
    "unpack_state",
    "validation_record",
]
