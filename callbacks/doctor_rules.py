r"""The training doctor's decision rules: pure functions over a history of validation records.

Nothing here needs a ``Trainer``: :class:`~lit_recipes.callbacks.GapMonitor` measures, these
functions judge, so every rule is tested on hand-built histories.

A *record* is one validation: ``train_clean/loss``, ``train_clean/loss_sd``, ``train_clean/acc``,
``subset_count`` (clean-train images scored), ``val/loss``, ``val/loss_sd`` (``None`` when the
per-sample losses were not available), ``val/acc``, ``val_count`` (val images scored), ``epoch``,
``warming_up`` (the LR rose since the previous validation).

How a verdict is reached (see ``docs/doctor.md``):

1. :func:`assess` turns one validation (and the earlier ones) into *evidence*: a candidate state,
   its confidence (the normal-approximation probability that the state's condition holds) and the
   intervals used. Accuracies get Wilson intervals from the number of scored images; the
   train - val accuracy gap Newcombe's interval (the difference of two Wilson intervals); losses a
   normal interval from the per-sample spread. A condition counts as evidence only when its
   interval clears the threshold (one-sided, at ``(1 + confidence_level) / 2``).
2. While the LR warms up and at the first validation, only *overwhelming* evidence (a non-finite
   or diverging loss, an accuracy gap whose lower bound is twice the threshold) names a problem;
   otherwise the candidate is ``warming_up``.
3. :class:`Hysteresis` changes the shown verdict only after ``confirm`` consecutive validations
   support the same new state, or at once on overwhelming evidence.
4. :func:`summarize` writes the run's final verdict from the whole history.

The intervals, standard errors and trend tests live in :mod:`lit_recipes.callbacks.doctor_stats`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

from lit_recipes.callbacks.doctor_stats import (
    change_text,
    early_stopping_index,
    interval_text,
    is_finite,
    loss_se,
    newcombe,
    percent_text,
    prob_above,
    se_from_interval,
    theil_sen,
    wilson,
)

VERDICTS = ("warming_up", "healthy", "underfitting", "overfitting_onset", "overfitting", "not_converging")
PROBLEMS = ("underfitting", "overfitting_onset", "overfitting", "not_converging")

_N = NormalDist()


# ---------------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class Thresholds:
    """The doctor's settings; :meth:`check` raises a one-line ``ValueError`` naming a bad one."""

    min_train_acc: float = 0.99
    overfit_acc_gap: float = 0.05
    overfit_loss_ratio: float = 2.0
    min_loss_gap: float = 0.3
    onset_rise: float = 0.10
    onset_min_delta: float = 0.0
    chance_loss_frac: float = 0.9
    flat_window: int = 3
    min_improvement: float = 0.05
    confidence_level: float = 0.9
    confirm: int = 2
    warmup_validations: int = 1
    divergence_factor: float = 3.0
    min_learning: float = 0.1

    def check(self, owner: str = "GapMonitor") -> Thresholds:
        def number(v: Any) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        def integer(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        rules = {
            "min_train_acc": (number(self.min_train_acc) and 0 < self.min_train_acc <= 1, "in (0, 1]"),
            "overfit_acc_gap": (number(self.overfit_acc_gap) and 0 < self.overfit_acc_gap < 1, "in (0, 1)"),
            "overfit_loss_ratio": (number(self.overfit_loss_ratio) and self.overfit_loss_ratio > 1, "> 1"),
            "min_loss_gap": (number(self.min_loss_gap) and self.min_loss_gap >= 0, ">= 0"),
            "onset_rise": (number(self.onset_rise) and self.onset_rise > 0, "> 0"),
            "onset_min_delta": (number(self.onset_min_delta) and self.onset_min_delta >= 0, ">= 0"),
            "chance_loss_frac": (number(self.chance_loss_frac) and 0 < self.chance_loss_frac <= 2, "in (0, 2]"),
            "flat_window": (integer(self.flat_window) and self.flat_window >= 2, "an integer >= 2"),
            "min_improvement": (number(self.min_improvement) and 0 <= self.min_improvement < 1, "in [0, 1)"),
            "confidence_level": (number(self.confidence_level) and 0 < self.confidence_level < 1, "in (0, 1)"),
            "confirm": (integer(self.confirm) and self.confirm >= 1, "an integer >= 1"),
            "warmup_validations": (
                integer(self.warmup_validations) and self.warmup_validations >= 0,
                "an integer >= 0",
            ),
            "divergence_factor": (number(self.divergence_factor) and self.divergence_factor > 1, "> 1"),
            "min_learning": (number(self.min_learning) and 0 < self.min_learning < 1, "in (0, 1)"),
        }
        for name, (ok, want) in rules.items():
            if not ok:
                raise ValueError(f"{owner}: {name} must be {want}, got {getattr(self, name)!r}")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def z(self) -> float:
        """Two-sided critical value of ``confidence_level`` (1.645 at 0.9)."""
        return _N.inv_cdf((1 + self.confidence_level) / 2)


# ---------------------------------------------------------------------------------- evidence
@dataclass
class Evidence:
    """What one validation shows: a candidate ``state`` with its ``confidence`` and reasons."""

    state: str
    confidence: float
    text: str
    overwhelming: bool = False
    support: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, list[float] | None] = field(default_factory=dict)
    ungated: str | None = None  # the candidate before the warm-up gate


def onset_test(
    current: dict[str, Any], previous: Sequence[dict[str, Any]], th: Thresholds
) -> tuple[float, int | None, list[float] | None, str]:
    """``(probability, minimum index, rise interval, text)`` of a val-loss rise above its running minimum.

    The rise ``val/loss - min`` must clear ``max(onset_min_delta, onset_rise * min)`` with its
    interval (the two val-loss standard errors combined), the val loss at the previous validation
    must also be above the minimum (a trend, not one point), and the clean train loss must have
    fallen since the minimum (it is the model fitting its training set that makes val worse)."""
    finite = [(r["val/loss"], i) for i, r in enumerate(previous) if is_finite(r["val/loss"])]
    vl = current["val/loss"]
    if not finite or not is_finite(vl):
        return 0.0, None, None, ""
    best, m = min(finite)
    rise = vl - best
    se_now, se_min = loss_se(current, "val"), loss_se(previous[m], "val")
    se = math.hypot(se_now, se_min) if se_now is not None and se_min is not None else None
    margin = max(th.onset_min_delta, th.onset_rise * best)
    z = th.z
    interval = [rise - z * se, rise + z * se] if se is not None else [rise, rise]
    p = prob_above(rise, margin, se)
    trend = previous[-1]["val/loss"] > best if m < len(previous) - 1 else True
    train_fell = current["train_clean/loss"] < previous[m]["train_clean/loss"]
    if not (trend and train_fell):
        p = min(p, 0.5)
    slope = theil_sen([r["val/loss"] for r in previous[m:]] + [vl])
    text = (
        f"val loss {vl:.4f} vs its minimum {best:.4f} at epoch {previous[m]['epoch']}: rise {rise:+.4f} "
        f"(interval {interval_text(*interval, pct=False)}, margin {margin:.4f}), slope since {slope:+.4f}/validation; "
        f"clean train loss {previous[m]['train_clean/loss']:.4f} -> {current['train_clean/loss']:.4f}"
    )
    return p, m, interval, text


def assess(
    current: dict[str, Any],
    previous: Sequence[dict[str, Any]],
    num_classes: int,
    th: Thresholds,
    chance_acc: float | None = None,
) -> Evidence:
    """The evidence of one validation (``current``) given the earlier ones (``previous``, oldest first)."""
    z = th.z
    tl, ta, nt = current["train_clean/loss"], current["train_clean/acc"], int(current.get("subset_count") or 0)
    vl, va, nv = current["val/loss"], current["val/acc"], int(current.get("val_count") or 0)
    chance_loss = math.log(num_classes)
    chance = chance_acc if chance_acc is not None else 1.0 / num_classes
    gated = bool(current.get("warming_up")) or len(previous) < th.warmup_validations

    def done(ev: Evidence) -> Evidence:
        ev.ungated = ev.state
        if gated and not ev.overwhelming:
            ev.text = (
                f"warming up ({'LR still rising' if current.get('warming_up') else 'first validation'}); {ev.text}"
            )
            ev.state, ev.confidence = "warming_up", 1.0
        ev.support["warming_up"] = 1.0 if gated else 0.0
        return ev

    # 1. non-finite or diverging: overwhelming
    if not is_finite(tl) or not is_finite(vl):
        return done(
            Evidence(
                "not_converging", 1.0, f"non-finite loss (clean train {tl:.4g}, val {vl:.4g}): the optimisation diverged",
                True, {"not_converging": 1.0},
            )
        )  # fmt: skip
    best_tl = min((r["train_clean/loss"] for r in previous if is_finite(r["train_clean/loss"])), default=math.inf)
    if tl >= th.divergence_factor * chance_loss and (not previous or tl >= th.divergence_factor * best_tl):
        return done(
            Evidence(
                "not_converging", 1.0,
                f"clean train loss {tl:.3f} >= {th.divergence_factor:g}x the chance level ln({num_classes})={chance_loss:.3f}"
                + (f" and {tl / best_tl:.1f}x its best {best_tl:.3f}" if previous else "")
                + ": the optimisation diverged",
                True, {"not_converging": 1.0},
            )
        )  # fmt: skip

    intervals: dict[str, list[float] | None] = {}
    ta_lo, ta_hi = wilson(ta, nt, z)
    va_lo, va_hi = wilson(va, nv, z)
    g_lo, g_hi = newcombe(ta, nt, va, nv, z)
    intervals.update(train_acc=[ta_lo, ta_hi], val_acc=[va_lo, va_hi], gap_acc=[g_lo, g_hi])
    se_t, se_v = loss_se(current, "train_clean"), loss_se(current, "val")
    lgap = vl - tl
    se_l = math.hypot(se_t, se_v) if se_t is not None and se_v is not None else None
    intervals["gap_loss"] = [lgap - z * se_l, lgap + z * se_l] if se_l is not None else None
    intervals["val_loss"] = [vl - z * se_v, vl + z * se_v] if se_v is not None else None
    accs = f"clean train acc {percent_text(ta)} {interval_text(ta_lo, ta_hi)}, val acc {percent_text(va)} {interval_text(va_lo, va_hi)}"

    # 2. not learning: val accuracy not above chance, or a high loss that stays flat
    learn_bar = chance + th.min_learning * (1 - chance)
    p_chance = 1 - prob_above(va, learn_bar, se_from_interval(va_lo, va_hi, z))
    window = [r["train_clean/loss"] for r in previous[-(th.flat_window - 1) :]] + [tl]
    improvement = (window[0] - tl) / window[0] if len(window) >= 2 and is_finite(window[0]) and window[0] > 0 else None
    high = tl >= th.chance_loss_frac * chance_loss
    flat = high and improvement is not None and len(window) >= th.flat_window and improvement < th.min_improvement
    support = {"not_converging": max(p_chance, 1.0 if flat else 0.0)}
    if va_hi < learn_bar:
        text = (
            f"val acc {percent_text(va)} {interval_text(va_lo, va_hi)} is not above {percent_text(learn_bar)} (chance {percent_text(chance)} + "
            f"{th.min_learning:.0%} of the way to 100%): nothing learned generalises; clean train acc {percent_text(ta)}, "
            f"loss {tl:.3f} (chance level {chance_loss:.3f})"
        )
        return done(Evidence("not_converging", p_chance, text, False, support, intervals))
    if flat:
        text = (
            f"clean train loss {tl:.4f} is >= {th.chance_loss_frac:.0%} of the chance level ln({num_classes})="
            f"{chance_loss:.3f} and {change_text(window[0], tl)} over the last {len(window)} validations; {accs}"
        )
        return done(Evidence("not_converging", 1.0, text, False, support, intervals))

    # 3. over-fitting: a significant accuracy gap larger than the threshold and than the train error
    p_gap = prob_above(ta - va, th.overfit_acc_gap, se_from_interval(g_lo, g_hi, z))
    variance = ta - va >= 1 - ta
    support["overfitting"] = p_gap if variance else min(p_gap, 0.5)
    if g_lo >= th.overfit_acc_gap and variance:
        text = (
            f"accuracy gap {(ta - va) * 100:+.1f} points {interval_text(g_lo, g_hi)} >= {th.overfit_acc_gap * 100:.1f} and >= "
            f"the train error {(1 - ta) * 100:.1f}; {accs}; losses train {tl:.4f}, val {vl:.4f}"
        )
        over = g_lo >= 2 * th.overfit_acc_gap
        return done(Evidence("overfitting", p_gap, text, over, support, intervals))
    # 4. onset: the val loss significantly above its running minimum (before the loss-ratio rule: the earlier sign)
    p_on, m, rise, on_text = onset_test(current, previous, th)
    intervals["rise"] = rise
    support["overfitting_onset"] = p_on
    if m is not None and rise is not None and p_on >= (1 + th.confidence_level) / 2:
        return done(Evidence("overfitting_onset", p_on, on_text, False, support, intervals))

    # 4b. the loss gap: val/train ratio with a significant gap in nats and in accuracy (tiny losses never)
    ratio = vl / max(tl, 1e-12)
    gl = intervals["gap_loss"]
    if ratio >= th.overfit_loss_ratio and gl is not None and gl[0] >= th.min_loss_gap and g_lo > 0:
        p_loss = min(prob_above(lgap, th.min_loss_gap, se_l), prob_above(ta - va, 0.0, se_from_interval(g_lo, g_hi, z)))
        support["overfitting"] = max(support["overfitting"], p_loss)
        text = (
            f"val loss {vl:.4f} is {ratio:.1f}x the clean train loss {tl:.4f} and {lgap:.3f} nats above it "
            f"{interval_text(*gl, pct=False)} (>= {th.min_loss_gap:g}); accuracy gap {(ta - va) * 100:+.1f} points "
            f"{interval_text(g_lo, g_hi)} > 0"
        )
        return done(Evidence("overfitting", p_loss, text, False, support, intervals))

    # 5. under-fitting: clean train accuracy significantly below the target, and the train error at least
    #    the train - val gap (bias dominates variance: the mirror of the over-fitting rule)
    p_under = 1 - prob_above(ta, th.min_train_acc, se_from_interval(ta_lo, ta_hi, z))
    bias = 1 - ta >= ta - va
    support["underfitting"] = p_under if bias else min(p_under, 0.5)
    if ta_hi < th.min_train_acc and bias:
        trend = ""
        if improvement is not None:
            state = "still falling: train longer" if improvement >= th.min_improvement else "flat"
            trend = f"; clean train loss {state} ({change_text(window[0], tl)} over the last {len(window)} validations)"
        text = f"clean train acc {percent_text(ta)} {interval_text(ta_lo, ta_hi)} < {percent_text(th.min_train_acc)}; val acc {percent_text(va)}{trend}"
        return done(Evidence("underfitting", p_under, text, False, support, intervals))

    healthy = 1 - max(support.get(s, 0.0) for s in PROBLEMS)
    support["healthy"] = healthy
    text = f"{accs} (gap {(ta - va) * 100:+.1f} points {interval_text(g_lo, g_hi)}); val loss {vl:.4f}, clean train loss {tl:.4f}"
    return done(Evidence("healthy", healthy, text, False, support, intervals))


# ---------------------------------------------------------------------------------- hysteresis
@dataclass
class Hysteresis:
    """The shown verdict: it changes after ``confirm`` consecutive validations support the same new
    state, or at once on overwhelming evidence; the first validation sets it."""

    confirm: int = 2
    verdict: str | None = None
    pending: str | None = None
    count: int = 0
    since: int | None = None  # epoch at which the shown verdict began

    def update(self, ev: Evidence, epoch: int) -> tuple[str, float, str]:
        """``(verdict, confidence, note)`` after this validation's evidence."""
        if self.verdict is None or ev.state == self.verdict or ev.overwhelming:
            if ev.state != self.verdict:
                self.since = epoch
            self.verdict, self.pending, self.count = ev.state, None, 0
            return ev.state, ev.confidence, ""
        self.count = self.count + 1 if ev.state == self.pending else 1
        self.pending = ev.state
        if self.count >= self.confirm:
            self.verdict, self.pending, self.count, self.since = ev.state, None, 0, epoch
            return ev.state, ev.confidence, f"confirmed by {self.confirm} validations"
        held = ev.support.get(self.verdict, 1.0 - ev.confidence)
        return self.verdict, held, f"kept: {ev.state} at {self.count} of {self.confirm} validations needed"

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------- the run
def verdict_text(verdict: str, confidence: float | None) -> str:
    """``<verdict> (confidence 0.93)``; ``warming_up`` alone: it is no judgement, so its confidence means nothing."""
    if verdict == "warming_up" or confidence is None:
        return verdict
    return f"{verdict} (confidence {float(confidence):.2f})"


def verdict_changes(verdicts: Sequence[str]) -> int:
    """Changes of the shown verdict after the first validation."""
    return sum(a != b for a, b in zip(verdicts, verdicts[1:]))


def lead_text(lead: int) -> str:
    """How far the doctor's flag came before EarlyStopping's stop (``lead`` epochs; negative: after)."""
    if lead == 0:
        return ", at EarlyStopping's epoch"
    return f", {abs(lead)} epoch{'s' if abs(lead) != 1 else ''} {'before' if lead > 0 else 'after'} EarlyStopping"


def summarize(history: Sequence[dict[str, Any]], th: Thresholds, num_classes: int) -> dict[str, Any]:
    """The run's final verdict with run-level evidence, plus the onset and EarlyStopping comparison."""
    if not history:
        return {"final": {"epoch": None, "verdict": None, "confidence": None, "evidence": "no validation ran"}}
    last = history[-1]
    verdict, confidence = last["verdict"], last["confidence"]
    if verdict == "warming_up":  # the run ended before the schedule let the doctor judge: use the last evidence
        verdict, confidence = last.get("raw_ungated") or "healthy", last.get("raw_confidence", 0.5)
    val = [r["val/loss"] for r in history]
    finite = [(v, i) for i, v in enumerate(val) if math.isfinite(v)]
    m = min(finite)[1] if finite else None
    es = early_stopping_index(val, patience=3)
    flagged = next((i for i, r in enumerate(history) if r["verdict"] in ("overfitting_onset", "overfitting")), None)
    z = th.z
    parts = [verdict]
    if m is not None:
        best = history[m]
        se_m = loss_se(best, "val")
        parts.append(f"best val loss {best['val/loss']:.4f} at epoch {best['epoch']}")
        within = 0
        for r in reversed(history[m:]):
            se_r = loss_se(r, "val")
            se = math.hypot(se_m, se_r) if se_m is not None and se_r is not None else 0.0
            if r["val/loss"] - best["val/loss"] - z * se > max(th.onset_min_delta, th.onset_rise * best["val/loss"]):
                break
            within += 1
        if m == len(history) - 1:
            parts.append("at the last validation")
        elif within == len(history) - m:
            parts.append(f"the last {within} validations are within noise of it")
        else:
            parts.append(f"the last {len(history) - m - within} validations are significantly above it")
    if verdict in ("overfitting_onset", "overfitting") and flagged is not None:
        lead = lead_text(history[es]["epoch"] - history[flagged]["epoch"]) if es is not None else ""
        es_text = (
            f"EarlyStopping(patience=3) stops at epoch {history[es]['epoch']}"
            if es is not None
            else "EarlyStopping(patience=3) never stops"
        )
        parts.append(f"flagged at epoch {history[flagged]['epoch']}{lead} ({es_text})")
    if verdict == "underfitting" and len(history) >= 2:
        w = [r["train_clean/loss"] for r in history[-th.flat_window :]]
        imp = (w[0] - w[-1]) / w[0] if w[0] > 0 and math.isfinite(w[0]) else 0.0
        parts.append(
            "clean train loss still falling: train longer"
            if imp >= th.min_improvement
            else "clean train loss flat: a bigger model or a better LR"
        )
    parts.append(last["evidence"])
    changes = verdict_changes([r["verdict"] for r in history])
    return {
        "final": {"epoch": last["epoch"], "verdict": verdict, "confidence": confidence, "evidence": "; ".join(parts)},
        "verdict_changes": changes,
        "val_loss_min_epoch": history[m]["epoch"] if m is not None else None,
        "val_loss_min": history[m]["val/loss"] if m is not None else None,
        "onset_epoch": history[flagged]["epoch"] if flagged is not None else None,
        "early_stopping_epoch": history[es]["epoch"] if es is not None else None,
        "onset_lead_epochs": (history[es]["epoch"] - history[flagged]["epoch"])
        if es is not None and flagged is not None
        else None,
    }


def rediagnose(
    measurements: Sequence[dict[str, Any]], num_classes: int, th: Thresholds, chance_acc: float | None = None
) -> list[dict[str, Any]]:
    """Run the rules over raw records (no verdicts yet): what :class:`GapMonitor` would have said.

    Used by the benchmark to re-judge recorded runs, and by tests."""
    out: list[dict[str, Any]] = []
    hyst = Hysteresis(th.confirm)
    for rec in measurements:
        ev = assess(rec, out, num_classes, th, chance_acc)
        verdict, confidence, note = hyst.update(ev, rec["epoch"])
        out.append({**rec, **judged(ev, verdict, confidence, note)})
    return out


def judged(ev: Evidence, verdict: str, confidence: float, note: str) -> dict[str, Any]:
    """The fields a record gets from its evidence and the hysteresis."""
    evidence = (
        ev.text if not note else f"{note}; {ev.state}: {ev.text}" if ev.state != verdict else f"{ev.text} ({note})"
    )
    return {
        "verdict": verdict,
        "confidence": round(float(confidence), 4),
        "evidence": evidence,
        "raw_verdict": ev.state,
        "raw_ungated": ev.ungated,
        "raw_confidence": round(float(ev.confidence), 4),
        "intervals": ev.intervals,
    }


__all__ = [
    "PROBLEMS",
    "VERDICTS",
    "Evidence",
    "Hysteresis",
    "Thresholds",
    "assess",
    "lead_text",
    "judged",
    "onset_test",
    "rediagnose",
    "summarize",
    "verdict_changes",
    "verdict_text",
]
