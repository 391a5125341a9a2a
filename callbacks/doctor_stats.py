r"""The doctor's statistics: Wilson and Newcombe intervals, standard errors of mean losses, a robust
trend, Lightning's EarlyStopping rule, and the words the evidence is written in.

Pure functions over numbers and validation records (see :mod:`lit_recipes.callbacks.doctor_rules`
for the record's fields).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

_N = NormalDist()


def wilson(p: float, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` measured on ``n`` items (``(0, 1)`` when n = 0)."""
    if n <= 0 or not math.isfinite(p):
        return 0.0, 1.0
    p = min(max(p, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(p1: float, n1: int, p2: float, n2: int, z: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval of ``p1 - p2`` (independent samples) from two Wilson intervals."""
    l1, u1 = wilson(p1, n1, z)
    l2, u2 = wilson(p2, n2, z)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def mean_se(sd: float | None, n: int) -> float | None:
    """Standard error of a mean of ``n`` per-sample values with spread ``sd`` (``None``: unknown)."""
    if sd is None or n <= 0 or not math.isfinite(sd):
        return None
    return sd / math.sqrt(n)


def loss_se(record: dict[str, Any], prefix: str) -> float | None:
    """Standard error of a mean cross-entropy (``prefix`` ``"val"`` or ``"train_clean"``).

    ``sd / sqrt(n)`` from the per-sample spread, floored by the rare-event bound ``loss / sqrt(errors + 1)``:
    a trained classifier's mean loss is mostly the loss of its few misclassified images, so its
    relative uncertainty is that of a count of rare events (3 errors: +-50 %), whatever the spread of
    the many near-zero losses suggests. ``None`` when the spread is unknown."""
    n = int(record.get("val_count" if prefix == "val" else "subset_count") or 0)
    se = mean_se(record.get(f"{prefix}/loss_sd"), n)
    loss, acc = record.get(f"{prefix}/loss"), record.get(f"{prefix}/acc")
    if se is None or not is_finite(loss) or not is_finite(acc):
        return se
    errors = round((1 - float(acc)) * n)
    return max(se, float(loss) / math.sqrt(errors + 1))


def prob_above(value: float, threshold: float, se: float | None) -> float:
    """Normal-approximation probability that the true value exceeds ``threshold``."""
    if not math.isfinite(value):
        return 0.5
    if se is None or se <= 0:
        return 1.0 if value > threshold else 0.0
    return _N.cdf((value - threshold) / se)


def se_from_interval(lo: float, hi: float, z: float) -> float:
    return max((hi - lo) / (2 * z), 1e-12)


def theil_sen(values: Sequence[float]) -> float:
    """Median of pairwise slopes (per validation): a trend robust to one noisy point."""
    slopes = sorted((values[j] - values[i]) / (j - i) for i in range(len(values)) for j in range(i + 1, len(values)))
    if not slopes:
        return 0.0
    mid = len(slopes) // 2
    return slopes[mid] if len(slopes) % 2 else (slopes[mid - 1] + slopes[mid]) / 2


def early_stopping_index(val_losses: Sequence[float], patience: int = 3, min_delta: float = 0.0) -> int | None:
    """Index of the validation at which ``EarlyStopping(monitor="val/loss", patience, min_delta)`` stops.

    Lightning's rule: a value improves when ``value - min_delta < best``; after ``patience``
    validations without improvement (or a non-finite value) it stops. ``None``: it never stops.
    """
    best, wait = math.inf, 0
    for i, v in enumerate(val_losses):
        if not math.isfinite(v):
            return i
        if v - min_delta < best:
            best, wait = v, 0
        else:
            wait += 1
            if wait >= patience:
                return i
    return None


def change_text(first: float, last: float) -> str:
    """``"fell 12.0%"`` / ``"rose 3.1%"`` / ``"rose 4.2x"``: a change in words, never a negative percentage."""
    if not (math.isfinite(first) and math.isfinite(last)) or first <= 0:
        return f"went from {first:.4g} to {last:.4g}"
    if last <= first:
        return f"fell {(first - last) / first:.1%}"
    return f"rose {(last - first) / first:.1%}" if last < 2 * first else f"rose {last / first:.1f}x"


def percent_text(v: float) -> str:
    return f"{v * 100:.1f}%"


def interval_text(lo: float, hi: float, pct: bool = True) -> str:
    return f"[{lo * 100:.1f}, {hi * 100:.1f}]" if pct else f"[{lo:.3f}, {hi:.3f}]"


def is_finite(v: Any) -> bool:
    return v is not None and math.isfinite(float(v))


__all__ = [
    "change_text",
    "early_stopping_index",
    "interval_text",
    "is_finite",
    "loss_se",
    "mean_se",
    "newcombe",
    "percent_text",
    "prob_above",
    "se_from_interval",
    "theil_sen",
    "wilson",
]
