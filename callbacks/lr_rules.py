"""Suggestion rules of the LR range test: pure functions over ``(lrs, losses)``.

Nothing here trains or touches a model; :class:`~lit_recipes.callbacks.LRRangeTest` records a
curve and calls :func:`suggest`, and ``benchmarks/bench_lr_rules.py`` replays recorded curves
through every rule.

Curves are given as the swept LRs and the *raw* per-step losses. Two smoothings are available:

* :func:`smooth_losses`: the exponential moving average with bias correction that the sweep uses
  online for its divergence stop (causal: it lags the curve by about ``1 / (1 - beta)`` steps);
* :func:`smooth_log_lr`: a centred moving median over a window of ``width`` decades of LR (not
  causal, no lag, not lifted by single exploding steps), used by the ``knee`` rule after the sweep.

Rules (:data:`RULES`; :data:`DEFAULT_RULE` is ``knee``):

``knee`` (default)
    On the curve up to LR ``ceiling`` (:data:`KNEE_CEILING`, 1.0: past it BN networks blow up and
    often dip again to a chance-level loss that is no trainable LR), smoothed in log-LR, with ``L0``
    its start, ``Lmin`` its minimum and ``D = L0 - Lmin``
    the total drop: the *valley* is the run of points around the minimum whose loss is within
    ``frac * D`` of ``Lmin``. When the curve rises out of the valley before the sweep ends, the
    suggestion is the valley's right edge (the largest LR whose loss is still within ``frac * D`` of the
    minimum; the loss blows up beyond it). When it never rises (a *plateau* to the end of the sweep:
    BN networks, whose loss often keeps falling slowly up to any ``max_lr``), the lowest point says
    only where the model trained longest; the suggestion is then ``plateau_mult`` times the *knee*:
    the first LR where the curve has come within ``frac * D`` of its minimum (where it flattens).
``minimum``
    The LR of the lowest EMA-smoothed loss (the previous default).
``valley``
    fast.ai's ``valley``: the longest decreasing run of the EMA curve, a third plus a sixth into it.
``steepest``
    The most negative ``d loss / d log(lr)`` of the EMA curve (``skip_begin``/``skip_end`` trimmed).
``minimum_div_10``
    The ``minimum`` LR divided by 10.
``lightning``
    Lightning's ``_LRFinder.suggestion``: the most negative ``d loss / d lr`` (raw LR) of the EMA
    curve, without the "the loss must fall" check.

Every rule returns a :class:`Suggestion`: the LR (``None`` when the curve cannot support one), the
index into the curve, whether the callback has to fall back to the configured LR, and the points
the rule used (for the plot).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

RULES = ("knee", "minimum", "valley", "steepest", "minimum_div_10", "lightning")
"""Rule names accepted by :func:`suggest` (and ``LRRangeTest(suggestion=...)``)."""
DEFAULT_RULE = "knee"

KNEE_WIDTH = 0.5
"""Window of the log-LR smoothing of the ``knee`` rule, in decades."""
KNEE_FRAC = 0.1
"""The valley of the ``knee`` rule: points within this fraction of the total drop of the minimum."""
PLATEAU_MULT = 10.0
"""On a plateau that never rises, the suggestion is this times the knee."""
MIN_DROP = 0.02
"""The ``knee`` rule needs the smoothed loss to fall by this fraction of its start value."""
KNEE_CEILING = 1.0
"""The ``knee`` rule reads the curve up to this LR only. Past LR ~1, SGD on a BN network blows up and
then often dips again to about the chance-level loss (a transient of the wrecked weights, not an LR
that trains): measured on 7 range tests of ResNet-20 on 10,000 CIFAR-10 JPEGs, the global minimum sat
in such a second valley at LR 1-3 on 4 of them, and 1cycle at 2.26 reached 47.7 % against 69-70 % at
0.15-0.4 (BENCHMARKS.md, issue #13). ``None`` reads the whole sweep."""


@dataclass
class Suggestion:
    """What a rule made of a curve.

    Attributes:
        lr: the suggested LR (``None``: the curve does not support one).
        index: index of the point the LR came from (nearest point for a derived LR), or ``None``.
        fallback: the callback should keep the configured LR (``lr`` is ``None``, or the ``minimum``
            rule landed at the end of a sweep that never diverged).
        reason: one line on how the LR was chosen.
        marks: named points the rule used (``{"knee": i, "minimum": i, "edge": i}``), for the plot.
        curve: the smoothed curve the rule read (same length as ``lrs``).
        level: the loss level that bounds the valley (``knee`` rule), or ``None``.
    """

    lr: float | None
    index: int | None
    fallback: bool = False
    reason: str = ""
    marks: dict[str, int] = field(default_factory=dict)
    curve: list[float] = field(default_factory=list)
    level: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "index": self.index,
            "fallback": self.fallback,
            "reason": self.reason,
            "marks": dict(self.marks),
            "level": self.level,
        }


# ---------------------------------------------------------------------------------------- curves
def sweep_lrs(min_lr: float, max_lr: float, num_steps: int, mode: str = "exponential") -> list[float]:
    """The LRs of a sweep: ``num_steps`` values from ``min_lr`` to ``max_lr`` (both included),
    geometrically (``"exponential"``) or evenly (``"linear"``) spaced."""
    last = max(num_steps - 1, 1)
    if mode == "linear":
        return [min_lr + (max_lr - min_lr) * i / last for i in range(num_steps)]
    return [min_lr * (max_lr / min_lr) ** (i / last) for i in range(num_steps)]


def smooth_losses(losses: Sequence[float], beta: float = 0.98) -> list[float]:
    """Exponential moving average with bias correction: ``avg_k / (1 - beta ** (k + 1))``
    (the first value is the first loss). A non-finite loss gives ``nan`` from there on."""
    avg, out = 0.0, []
    for k, loss in enumerate(losses):
        if not math.isfinite(loss) or (out and not math.isfinite(out[-1])):
            out.append(float("nan"))
            continue
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (k + 1)))
    return out


def smooth_log_lr(lrs: Sequence[float], losses: Sequence[float], width: float = KNEE_WIDTH) -> list[float]:
    """Centred moving median in log-LR: point ``i`` is the median of the finite losses whose LR is
    within ``width / 2`` decades of ``lrs[i]`` (a median, so one exploding step — a loss of 1e6 just
    before the divergence stop, or a BN spike — does not lift its neighbours). Points from the first
    non-finite loss on are ``nan`` (and never enter a window). ``width`` 0 returns the losses unchanged."""
    if len(lrs) != len(losses):
        raise ValueError(f"lrs and losses differ in length: {len(lrs)} != {len(losses)}")
    if width < 0:
        raise ValueError(f"width must be >= 0 decades, got {width}")
    n = next((i for i, v in enumerate(losses) if not math.isfinite(v)), len(losses))
    if any(lr <= 0 for lr in lrs[:n]):
        raise ValueError("smooth_log_lr needs positive LRs")
    logs = [math.log10(lr) for lr in lrs[:n]]
    out, lo, hi = [], 0, 0
    for i in range(n):  # two pointers: the LRs increase along a sweep
        while hi < n and logs[hi] <= logs[i] + width / 2 + 1e-12:
            hi += 1
        while logs[lo] < logs[i] - width / 2 - 1e-12:
            lo += 1
        out.append(statistics.median(losses[lo:hi]))
    return out + [float("nan")] * (len(losses) - n)


def apply_stop(
    lrs: Sequence[float], losses: Sequence[float], divergence_factor: float | None = 4.0, beta: float = 0.98
) -> tuple[list[float], list[float], str]:
    """Replay the sweep's stop on a full recorded curve: cut it where ``LRRangeTest`` would have
    stopped (EMA-smoothed loss above ``divergence_factor`` times its best, or a non-finite loss;
    that step is kept, as in the callback). Returns ``(lrs, losses, stop_reason)``."""
    avg, best = 0.0, math.inf
    for k, value in enumerate(losses):
        if not math.isfinite(value):
            return list(lrs[: k + 1]), list(losses[: k + 1]), f"non-finite loss at step {k}"
        avg = beta * avg + (1 - beta) * value
        s = avg / (1 - beta ** (k + 1))
        if divergence_factor is not None and k > 0 and s > divergence_factor * best:
            return list(lrs[: k + 1]), list(losses[: k + 1]), f"diverged at step {k}"
        best = min(best, s)
    return list(lrs), list(losses), "completed"


def nearest_index(lrs: Sequence[float], lr: float) -> int:
    """Index of the swept LR nearest to ``lr`` in log-LR."""
    return min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i]) - math.log(lr)))


# ---------------------------------------------------------------------------------------- rules
def knee_rule(
    lrs: Sequence[float],
    losses: Sequence[float],
    width: float = KNEE_WIDTH,
    frac: float = KNEE_FRAC,
    plateau_mult: float = PLATEAU_MULT,
    min_drop: float = MIN_DROP,
    ceiling: float | None = KNEE_CEILING,
) -> Suggestion:
    """The ``knee`` rule (see the module docstring) on raw ``losses``.

    The points above ``ceiling`` are not read (mark ``ceiling``: the last point read); the returned
    ``curve`` is the smoothing of the whole sweep, for the plot."""
    if not 0 < frac < 1:
        raise ValueError(f"frac must be in (0, 1), got {frac}")
    if plateau_mult < 1:
        raise ValueError(f"plateau_mult must be >= 1, got {plateau_mult}")
    if ceiling is not None and not ceiling > 0:
        raise ValueError(f"ceiling must be a positive LR or None, got {ceiling}")
    full = smooth_log_lr(lrs, losses, width)
    n = len(lrs) if ceiling is None else sum(1 for x in lrs if x <= ceiling * (1 + 1e-9))
    cut = n < len(lrs)
    sm = smooth_log_lr(lrs[:n], losses[:n], width) if cut else full  # what the rule reads
    finite = [i for i in range(n) if math.isfinite(sm[i])]
    if len(finite) < 5:
        where = f" at or below the ceiling LR {ceiling:g}" if cut else ""
        return Suggestion(None, None, True, f"only {len(finite)} finite points{where}", curve=full)
    start = sm[finite[0]]
    i_min = min(finite, key=lambda i: sm[i])
    drop = start - sm[i_min]
    if drop <= min_drop * abs(start):
        return Suggestion(None, None, True, f"the smoothed loss fell by only {drop:.3g} from {start:.3g}", curve=full)
    level = sm[i_min] + frac * drop
    knee = next(i for i in finite if sm[i] <= level)
    edge = i_min
    while edge + 1 <= finite[-1] and sm[edge + 1] <= level:
        edge += 1
    marks = {"knee": knee, "minimum": i_min}
    if cut:
        marks["ceiling"] = n - 1
    if edge < finite[-1]:  # the curve rises out of the valley: its right edge is the largest stable LR
        marks["edge"] = edge
        reason = f"right edge of the valley (loss within {frac:g} of the drop of its minimum; it rises beyond)"
        return Suggestion(lrs[edge], edge, False, reason, marks, full, level)
    lr = min(lrs[knee] * plateau_mult, lrs[finite[-1]])
    idx = nearest_index(lrs[: finite[-1] + 1], lr)
    marks["plateau"] = finite[-1]
    end = f"the ceiling LR {ceiling:g}" if cut and finite[-1] == n - 1 else "the end of the sweep"
    reason = f"plateau to {end}: {plateau_mult:g} x the knee {lrs[knee]:.3g}"
    return Suggestion(lr, idx, False, reason, marks, full, level)


def suggest_index(
    lrs: Sequence[float],
    losses: Sequence[float],
    rule: str = "minimum",
    skip_begin: int = 10,
    skip_end: int = 1,
) -> int | None:
    """Index of the LR a *legacy* rule picks on an EMA-smoothed curve ``losses``; ``None`` when
    the curve can't support one (too few finite points, or the loss never fell below its first
    value; ``lightning`` has no such check). For ``knee`` use :func:`suggest` (it reads raw losses)."""
    legacy = tuple(r for r in RULES if r != "knee")
    if rule not in legacy:
        raise ValueError(f"suggest_index: rule must be one of {', '.join(legacy)}, got {rule!r}")
    n = len(losses)
    finite = [i for i in range(n) if math.isfinite(losses[i])]
    if len(finite) < 3:
        return None
    best = min(finite, key=lambda i: losses[i])
    if losses[best] >= losses[finite[0]] and rule != "lightning":
        return None
    if rule == "minimum":
        return best
    if rule == "minimum_div_10":
        return min(finite, key=lambda i: abs(math.log(lrs[i]) - math.log(lrs[best] / 10)))
    if rule == "valley":
        lo, hi = n // 10, n - 5
        idx = [i for i in range(lo, hi) if math.isfinite(losses[i])]
        if len(idx) < 3:
            return None
        vals = [losses[i] for i in idx]
        lds = [1] * len(vals)
        max_start = max_end = 0
        for i in range(1, len(vals)):
            for j in range(i):
                if vals[i] < vals[j] and lds[i] < lds[j] + 1:
                    lds[i] = lds[j] + 1
                if lds[max_end] < lds[i]:
                    max_end = i
                    max_start = max_end - lds[max_end]
        sections = (max_end - max_start) / 3
        return idx[max_start + int(sections) + int(sections / 2)]
    window = list(range(n))[skip_begin : n - skip_end if skip_end else n]
    window = [i for i in window if math.isfinite(losses[i])]
    if len(window) < 2:
        return None
    # ``lightning`` computes in float32 like Lightning's ``_LRFinder.suggestion`` (same ties)
    dtype = torch.float32 if rule == "lightning" else torch.float64
    y = torch.tensor([losses[i] for i in window], dtype=dtype)
    x = torch.tensor([lrs[i] for i in window], dtype=dtype)
    if rule == "steepest":
        x = x.log()
    grads = torch.gradient(y, spacing=[x])[0]
    return window[int(torch.argmin(grads))]


def suggest(
    lrs: Sequence[float],
    losses: Sequence[float],
    rule: str = DEFAULT_RULE,
    *,
    diverged: bool | None = None,
    beta: float = 0.98,
    skip_begin: int = 10,
    skip_end: int = 1,
    **knee_kwargs: float,
) -> Suggestion:
    """Apply ``rule`` to a recorded curve of *raw* ``losses``.

    Args:
        lrs: the swept LRs (increasing).
        losses: the raw loss of every step (a non-finite value ends the usable curve).
        rule: one of :data:`RULES`.
        diverged: whether the sweep stopped on divergence (``None``: it did when the curve ends in a
            non-finite loss). Only the ``minimum`` rule's fallback reads it: a minimum in the last 10 %
            of a sweep that never diverged is flagged ``fallback``.
        beta: EMA factor of the legacy rules' smoothing.
        skip_begin, skip_end: points trimmed by ``steepest``/``lightning``.
        **knee_kwargs: ``width``, ``frac``, ``plateau_mult``, ``min_drop``, ``ceiling`` of :func:`knee_rule`.
    """
    if rule not in RULES:
        raise ValueError(f"suggestion rule must be one of {', '.join(RULES)}, got {rule!r}")
    if len(lrs) != len(losses):
        raise ValueError(f"lrs and losses differ in length: {len(lrs)} != {len(losses)}")
    if rule == "knee":
        return knee_rule(lrs, losses, **knee_kwargs)
    sm = smooth_losses(losses, beta)
    idx = suggest_index(lrs, sm, rule, skip_begin, skip_end)
    if idx is None:
        return Suggestion(None, None, True, "the loss never fell below its first value", curve=sm)
    marks = {"minimum": min((i for i, v in enumerate(sm) if math.isfinite(v)), key=lambda i: sm[i])}
    lr = lrs[idx]
    if rule == "minimum_div_10":
        lr = lrs[marks["minimum"]] / 10
    if diverged is None:
        diverged = not math.isfinite(losses[-1])
    fallback = rule == "minimum" and not diverged and idx >= 0.9 * (len(lrs) - 1)
    reason = f"{rule} of the EMA-smoothed loss" + (" at the tail of a sweep that never diverged" if fallback else "")
    return Suggestion(lr, idx, fallback, reason, marks, sm)


__all__ = [
    "DEFAULT_RULE",
    "KNEE_CEILING",
    "RULES",
    "Suggestion",
    "apply_stop",
    "knee_rule",
    "nearest_index",
    "smooth_log_lr",
    "smooth_losses",
    "suggest",
    "suggest_index",
    "sweep_lrs",
]
