"""The doctor's decision rules on hand-built histories: exact inputs, exact verdicts (no training)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from lit_recipes.callbacks import GapMonitor
from lit_recipes.callbacks import doctor_measure as measure
from lit_recipes.callbacks import doctor_report as report
from lit_recipes.callbacks.doctor_report import REMEDIES
from lit_recipes.callbacks.doctor_rules import Hysteresis, Thresholds, assess, rediagnose, summarize, verdict_changes
from lit_recipes.callbacks.doctor_stats import change_text, early_stopping_index, newcombe, theil_sen, wilson
from lit_recipes.plumbing import eval_mode

TH = Thresholds()


def rec(epoch, tl, ta, vl, va, *, nt=1000, nv=144, tsd=None, vsd=None, warming=False):
    """One validation record as GapMonitor writes it (before judging)."""
    return {
        "epoch": epoch,
        "train_clean/loss": tl,
        "train_clean/acc": ta,
        "train_clean/loss_sd": tsd if tsd is not None else 2 * tl,
        "subset_count": nt,
        "val/loss": vl,
        "val/acc": va,
        "val/loss_sd": vsd if vsd is not None else 4 * vl,
        "val_count": nv,
        "warming_up": warming,
    }


def verdicts(history):
    return [r["verdict"] for r in history]


# ---------------------------------------------------------------------------------- intervals
def test_wilson_and_newcombe_match_published_values():
    lo, hi = wilson(0.5, 100, 1.959964)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson(1.0, 1000, 1.959964)[0] == pytest.approx(0.99617, abs=1e-5)  # 1000/1000: still below 1
    assert wilson(0.3, 0, 1.96) == (0.0, 1.0)
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 - 48/80, 95 %: 0.0524 .. 0.3339
    lo, hi = newcombe(56 / 70, 70, 48 / 80, 80, 1.959964)
    assert lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)


def test_theil_sen_ignores_one_outlier():
    assert theil_sen([1.0, 2.0, 3.0, 40.0, 5.0]) == pytest.approx(1.0)
    assert theil_sen([0.5]) == 0.0


@pytest.mark.parametrize(
    "losses",
    [
        [1.0, 0.8, 0.7, 0.71, 0.72, 0.73, 0.6],
        [1.0, 0.9, 0.95, 0.85, 0.86, 0.87, 0.88, 0.5],
        [0.5, 0.4, 0.3, 0.2, 0.1],
        [1.0, float("nan"), 0.5],
        [0.3, 0.3, 0.3, 0.3],
    ],
)
def test_early_stopping_index_is_lightnings_rule(losses):
    es = EarlyStopping(monitor="val/loss", patience=3, mode="min")
    expected = None
    for i, v in enumerate(losses):
        stop, _ = es._evaluate_stopping_criteria(torch.tensor(v))
        if stop:
            expected = i
            break
    assert early_stopping_index(losses, patience=3) == expected


def test_change_text_never_prints_a_negative_percentage():
    assert change_text(2.0, 1.5) == "fell 25.0%"
    assert change_text(0.01, 0.0105) == "rose 5.0%"
    assert change_text(0.0005, 0.02) == "rose 40.0x"  # not "improved -3900.0%"
    assert "-" not in change_text(0.1, 4.0)


# ---------------------------------------------------------------------------------- single validations
def test_first_validation_and_lr_warm_up_say_warming_up():
    # a 10-point gap at the first validation: not overwhelming (lower bound < 2 x 5 points)
    first = assess(rec(0, 0.2, 0.95, 0.5, 0.85), [], 10, TH)
    assert first.state == "warming_up" and first.ungated == "overfitting" and "first validation" in first.text
    later = rec(3, 0.2, 0.95, 0.5, 0.85, warming=True)
    ev = assess(later, [rec(i, 1.0, 0.6, 1.1, 0.6) for i in range(3)], 10, TH)
    assert ev.state == "warming_up" and "LR still rising" in ev.text
    # with the LR decaying, the same evidence is a verdict
    assert (
        assess({**later, "warming_up": False}, [rec(i, 1.0, 0.6, 1.1, 0.6) for i in range(3)], 10, TH).state
        != "warming_up"
    )


def test_overwhelming_evidence_passes_the_warm_up_gate():
    nan = assess(rec(0, float("nan"), 0.1, float("nan"), 0.1), [], 10, TH)
    assert nan.state == "not_converging" and nan.overwhelming and nan.confidence == 1.0
    # a 40-point gap measured on 1000 and 1000 images: lower bound far above 2 x 5 points
    gap = assess(rec(0, 0.01, 1.0, 2.0, 0.6, nv=1000), [], 10, TH)
    assert gap.state == "overfitting" and gap.overwhelming and gap.confidence > 0.999
    # a loss 3x the chance level and above twice its best: diverged
    prev = [rec(i, 1.0, 0.7, 1.0, 0.7) for i in range(3)]
    div = assess(rec(3, 7.5, 0.1, 8.0, 0.1, warming=True), prev, 10, TH)
    assert div.state == "not_converging" and div.overwhelming and "diverged" in div.text


def test_accuracy_gap_inside_the_noise_is_not_overfitting():
    prev = [rec(0, 0.5, 0.9, 0.5, 0.9)]
    # 100 % vs 93.8 % (135/144): gap 6.2 points but its interval reaches below 5 -> not overfitting
    ev = assess(rec(1, 0.01, 1.0, 0.25, 135 / 144), prev, 10, TH)
    assert ev.state == "healthy", ev.text
    lo, hi = ev.intervals["gap_acc"]
    assert lo < 0.05 < hi
    # the same gap measured on 2000 val images is significant
    ev = assess(rec(1, 0.01, 1.0, 0.25, 0.938, nv=2000), prev, 10, TH)
    assert ev.state == "overfitting" and ev.intervals["gap_acc"][0] >= 0.05


def test_tiny_losses_never_fire_the_loss_ratio_rule():
    prev = [rec(0, 2.0, 0.5, 2.0, 0.5)]
    # val loss 50x the train loss, but 0.049 nats apart and accuracies 100 % vs 99.3 %
    ev = assess(rec(1, 0.001, 1.0, 0.05, 143 / 144), prev, 10, TH)
    assert ev.state == "healthy" and ev.support["overfitting"] < 0.5
    # a real loss gap (1.2 nats, interval above 0.3) with a significant accuracy gap fires it
    ev = assess(rec(1, 0.01, 1.0, 1.2, 0.97, nv=3000, vsd=2.0), prev, 10, TH)
    assert ev.state == "overfitting" and "nats above it" in ev.text


def test_val_accuracy_at_chance_is_not_converging():
    prev = [rec(i, 2.2, 0.2, 2.3, 0.1) for i in range(2)]
    ev = assess(rec(2, 1.9, 0.35, 2.4, 0.11), prev, 10, TH)  # train memorises, val at chance
    assert ev.state == "not_converging" and "nothing learned generalises" in ev.text


def test_flat_high_loss_is_not_converging_and_falling_low_accuracy_is_underfitting():
    flat = [rec(i, 2.30 - 0.01 * i, 0.3, 2.30, 0.3) for i in range(3)]
    ev = assess(rec(3, 2.27, 0.3, 2.29, 0.3), flat, 10, TH)
    assert ev.state == "not_converging" and "fell 0.9%" in ev.text
    falling = [rec(0, 1.5, 0.6, 1.5, 0.6), rec(1, 1.0, 0.75, 1.0, 0.75)]
    ev = assess(rec(2, 0.6, 0.85, 0.6, 0.84), falling, 10, TH)
    assert ev.state == "underfitting" and "still falling: train longer" in ev.text


def test_underfitting_needs_the_train_accuracy_significantly_below_the_target():
    prev = [rec(0, 0.5, 0.9, 0.5, 0.9)]
    assert assess(rec(1, 0.04, 0.986, 0.06, 0.98), prev, 10, TH).state == "healthy"  # 98.6 % of 1000: within noise
    assert assess(rec(1, 0.08, 0.975, 0.09, 0.97), prev, 10, TH).state == "underfitting"  # 97.5 %: below
    # 98.2 % of 500 (interval below 99 %) but val 93.5 % of 200: the gap (4.7) exceeds the train error (1.8) and is
    # not significantly above 5 points -> variance, not bias, is the larger problem, and it is within the noise
    ev = assess(rec(1, 0.054, 0.982, 0.179, 0.935, nt=500, nv=200), prev, 2, TH, chance_acc=0.5)
    assert ev.intervals["train_acc"][1] < 0.99 and ev.state == "healthy" and ev.support["underfitting"] <= 0.5


def test_onset_needs_a_significant_rise_that_persists_with_train_loss_falling():
    def r(epoch, tl, vl):  # 93 % train, 90 % val of 1000: 100 val errors, so the val loss is well measured
        return rec(epoch, tl, 0.93, vl, 0.90, nv=1000, vsd=1.0, tsd=0.8)

    hist = [r(0, 0.5, 0.60), r(1, 0.3, 0.40)]
    # +0.01 over the minimum with a standard error of ~0.055: noise
    assert assess(r(2, 0.29, 0.41), hist, 10, TH).state != "overfitting_onset"
    # +0.30: significant (interval above the 10 % margin), train loss fell -> onset, the minimum's epoch named
    ev = assess(r(2, 0.29, 0.70), hist, 10, TH)
    assert ev.state == "overfitting_onset" and "at epoch 1" in ev.text and ev.intervals["rise"][0] > 0.04
    # the same rise while the train loss rose too: not the model over-fitting
    assert assess(r(2, 0.35, 0.70), hist, 10, TH).state != "overfitting_onset"
    # the minimum moves with the history: a new, lower minimum at epoch 2 is the reference
    dip = [*hist, r(2, 0.28, 0.39)]
    ev = assess(r(3, 0.27, 0.70), dip, 10, TH)
    assert ev.state == "overfitting_onset" and "at epoch 2" in ev.text


def test_loss_standard_error_has_a_rare_event_floor():
    from lit_recipes.callbacks.doctor_stats import loss_se

    # 144 images, 3 errors: the spread says 0.3 / 12 = 0.025, the floor 0.07 / 2 = 0.035
    r = rec(0, 0.01, 1.0, 0.07, 141 / 144, vsd=0.3)
    assert loss_se(r, "val") == pytest.approx(0.07 / math.sqrt(4))
    # many errors: the spread decides
    r = rec(0, 0.01, 1.0, 0.5, 0.8, nv=10_000, vsd=1.5)
    assert loss_se(r, "val") == pytest.approx(max(1.5 / 100, 0.5 / math.sqrt(2001)))
    assert loss_se({**r, "val/loss_sd": None}, "val") is None


# ---------------------------------------------------------------------------------- whole histories
def noisy_healthy_history():
    """The make-train pattern: warm-up, then 100 % train and a 144-image val set jittering by 1-3 images."""
    hist = [rec(e, 2.0 - 0.25 * e, 0.5 + 0.06 * e, 2.0 - 0.25 * e, 0.5 + 0.06 * e, warming=True) for e in range(7)]
    val = [(0.080, 0.979), (0.156, 0.965), (0.029, 0.993), (0.063, 0.979), (0.049, 0.972), (0.043, 0.979),
           (0.039, 0.986), (0.070, 0.972)]  # fmt: skip
    for i, (vl, va) in enumerate(val):
        tl = 0.02 / (1 + i)
        hist.append(rec(7 + i, tl, 0.994 if i < 2 else 1.0, vl, va, tsd=3 * tl, vsd=0.45))
    return hist


def test_noisy_but_healthy_run_stays_healthy():
    judged = rediagnose(noisy_healthy_history(), 10, TH)
    shown = verdicts(judged)
    assert shown == ["warming_up"] * 7 + ["warming_up"] + ["healthy"] * 7, shown
    assert verdict_changes(shown) == 1
    summary = summarize(judged, TH, 10)
    assert summary["final"]["verdict"] == "healthy"
    assert summary["final"]["evidence"].startswith("healthy; best val loss 0.0290 at epoch 9; the last 6 validations")
    assert "within noise of it" in summary["final"]["evidence"]
    assert all(0 <= r["confidence"] <= 1 for r in judged)


def test_hysteresis_needs_two_validations_unless_overwhelming():
    h = Hysteresis(confirm=2)
    healthy = assess(rec(1, 0.01, 1.0, 0.05, 0.98), [rec(0, 0.5, 0.9, 0.5, 0.9)], 10, TH)
    under = assess(rec(2, 0.3, 0.9, 0.3, 0.9), [rec(0, 0.5, 0.9, 0.5, 0.9)] * 2, 10, TH)
    assert (healthy.state, under.state) == ("healthy", "underfitting")
    assert h.update(healthy, 1)[0] == "healthy"
    verdict, conf, note = h.update(under, 2)
    assert (
        verdict == "healthy"
        and "1 of 2" in note
        and conf == pytest.approx(under.support["healthy"] if "healthy" in under.support else 1 - under.confidence)
    )
    assert h.update(healthy, 3)[0] == "healthy"  # the streak broke
    assert h.update(under, 4)[0] == "healthy"
    verdict, _, note = h.update(under, 5)
    assert verdict == "underfitting" and "confirmed by 2" in note and h.since == 5
    nan = assess(rec(6, float("inf"), 0.1, float("inf"), 0.1), [], 10, TH)
    assert h.update(nan, 6)[0] == "not_converging"  # at once


def test_overfitting_run_is_flagged_before_early_stopping():
    # val loss bottoms at epoch 3 then climbs; clean train loss keeps falling; 1000 val images
    vals = [1.2, 0.8, 0.6, 0.55, 0.62, 0.70, 0.80, 0.90, 1.00]
    hist = [rec(e, 1.0 / (1 + e) ** 2, min(0.6 + 0.1 * e, 1.0), v, 0.9, nv=1000, vsd=1.2) for e, v in enumerate(vals)]
    judged = rediagnose(hist, 10, TH)
    summary = summarize(judged, TH, 10)
    assert summary["early_stopping_epoch"] == 6 and summary["val_loss_min_epoch"] == 3
    assert summary["onset_epoch"] is not None and summary["onset_epoch"] <= 6
    assert summary["onset_lead_epochs"] == 6 - summary["onset_epoch"] >= 0
    assert summary["final"]["verdict"] in ("overfitting_onset", "overfitting")
    assert "EarlyStopping(patience=3) stops at epoch 6" in summary["final"]["evidence"]


def test_run_that_ends_in_warm_up_is_judged_on_its_last_evidence():
    hist = [rec(0, 1.4, 0.6, 1.4, 0.6, warming=True), rec(1, 0.9, 0.75, 0.9, 0.74, warming=True)]
    judged = rediagnose(hist, 10, TH)
    assert verdicts(judged) == ["warming_up", "warming_up"]
    assert summarize(judged, TH, 10)["final"]["verdict"] == "underfitting"


def test_summary_of_an_empty_history():
    assert summarize([], TH, 10)["final"]["verdict"] is None


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"confidence_level": 1.0}, "confidence_level"),
        ({"confidence_level": 0.0}, "confidence_level"),
        ({"confidence_level": float("nan")}, "confidence_level"),
        ({"confirm": 0}, "confirm"),
        ({"warmup_validations": -1}, "warmup_validations"),
        ({"min_learning": 1.0}, "min_learning"),
        ({"min_train_acc": 1.5}, "min_train_acc"),
        ({"onset_min_delta": -0.1}, "onset_min_delta"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^GapMonitor: {name} must be") as err:
        GapMonitor(**kwargs)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=f"^Doctor: {name} must be"):
        Thresholds(**kwargs).check("Doctor")


def test_default_thresholds_are_valid_and_z_matches_the_level():
    assert Thresholds().check() == Thresholds()
    assert Thresholds(confidence_level=0.95).z == pytest.approx(1.959964, abs=1e-6)
    assert math.isclose(TH.z, 1.644854, abs_tol=1e-6)


# ---------------------------------------------------------------------------------- measurements (no Trainer)
def test_loss_sums_and_spread_match_the_per_sample_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
    targets = torch.tensor([0, 0, 0])
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    count, total, squares, correct = measure.loss_sums(logits, targets).tolist()
    assert (count, correct) == (3, 2) and total == pytest.approx(float(losses.sum()))
    loss, acc, n, sd = measure.sums_to_metrics([count, total, squares, correct])
    assert n == 3 and acc == pytest.approx(2 / 3) and loss == pytest.approx(float(losses.mean()))
    assert sd == pytest.approx(float(losses.std()))  # the sample sd (n - 1)
    assert measure.loss_sd(1.0, 1.0, 1) == 0.0 and math.isnan(measure.loss_sd(float("nan"), 1.0, 5))


def test_clean_loss_sums_restore_every_mode_and_leave_the_random_stream_alone():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(3))
    net.train()
    net[2].eval()  # a frozen BN inside a training model stays frozen
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loader = [(x[:5], y[:5]), (x[5:], y[5:])]
    before = torch.random.get_rng_state()
    totals = measure.clean_loss_sums(net, loader)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert [m.training for m in net.modules()] == [True, True, True, False]
    with torch.no_grad(), eval_mode(net):
        expected = torch.nn.functional.cross_entropy(net(x).double(), y, reduction="sum")
    assert totals[0] == 8 and float(totals[1]) == pytest.approx(float(expected), rel=1e-6)


def test_val_batches_without_logits_count_only():
    sums = torch.zeros(4, dtype=torch.float64)
    measure.add_val_batch(sums, torch.tensor([[5.0, 0.0], [0.0, 5.0]]), torch.tensor([0, 0]))
    assert sums[0] == 2 and sums[3] == 1
    measure.add_val_batch(sums, {"loss": 1.0}, torch.tensor([1, 1, 1]))
    assert sums[0] == 5 and math.isnan(float(sums[1]))
    record = measure.validation_record(
        epoch=0, step=1, fraction=1.0, clean=(0.5, 0.9, 10, 0.2), val_loss=0.6, val_acc=0.8, val_sums=sums,
        lr=0.1, warming_up=False,
    )  # fmt: skip
    assert record["val/loss_sd"] is None and record["val_count"] == 5  # the onset test falls back to its margin
    assert record["gap/acc"] == pytest.approx(0.1) and record["gap/loss_ratio"] == pytest.approx(1.2)


def test_epoch_fraction_lr_and_logged_values():
    assert measure.epoch_fraction(5, 20) == 0.25 and measure.epoch_fraction(0, 20) == 1.0
    assert measure.epoch_fraction(7, float("inf")) == 1.0 and measure.epoch_fraction(30, 20) == 1.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    assert measure.current_lr([opt]) == 0.3 and math.isnan(measure.current_lr([]))
    assert measure.logged_value({"val/loss": torch.tensor(0.5)}, "val/loss") == 0.5
    with pytest.raises(ValueError, match=r"^GapMonitor: 'val/acc' was not logged .*\(logged val metrics: val/loss\)$"):
        measure.logged_value({"val/loss": 1.0, "train/loss": 2.0}, "val/acc")


def test_subset_is_kept_across_a_resume_and_redrawn_when_the_split_changed():
    targets = np.array([0, 1] * 50)
    first = measure.choose_subset(None, targets, np.arange(80), 20, seed=0)
    assert measure.choose_subset(first, targets, np.arange(80), 20, seed=5) is first
    redrawn = measure.choose_subset(first, targets, np.arange(50, 100), 20, seed=0)
    assert np.isin(redrawn, np.arange(50, 100)).all() and len(redrawn) == 20
    assert measure.chance_accuracy(np.array([0, 0, 0, 1]), np.arange(4), 10) == 0.75
    assert measure.chance_accuracy(np.array([0, 1]), np.arange(2), 4) == 0.5


def test_running_metrics_join_the_records_of_their_epoch():
    history = [{"epoch": 0}, {"epoch": 1}, {"epoch": 1}]
    running = measure.add_running(history, 1, {"train/loss": torch.tensor(0.5), "val/loss": 2.0})
    assert running == {"epoch": 1, "train/loss": 0.5}
    assert history == [{"epoch": 0}, {"epoch": 1, "train/loss": 0.5}, {"epoch": 1, "train/loss": 0.5}]


def test_state_round_trip():
    hyst = Hysteresis(confirm=3, verdict="healthy", pending="overfitting", count=1, since=2)
    state = measure.pack_state([{"epoch": 0}], [{"epoch": 0}], np.array([3, 1]), hyst, 0.1, 2, None, 0.7)
    back = measure.unpack_state(state, confirm=2)
    assert back["hysteresis"] == hyst and back["subset"].dtype == np.int64 and back["subset"].tolist() == [3, 1]
    assert (back["lr_prev"], back["bad_count"], back["best_val_loss"]) == (0.1, 2, 0.7)
    empty = measure.unpack_state({}, confirm=2)
    assert empty["hysteresis"] == Hysteresis(2) and empty["subset"] is None and empty["best_val_loss"] == math.inf


def test_monitor_settings_are_one_line_errors():
    measure.check_settings(subset_size=1, stop_on=None, batch_size=None, num_classes=2)
    for name, value in [("subset_size", 0), ("stop_on", "never"), ("batch_size", 0), ("num_classes", 1)]:
        with pytest.raises(ValueError, match=f"^GapMonitor: {name} must be .*, got {value!r}$"):
            measure.check_settings(**{name: value})


# ---------------------------------------------------------------------------------- the report (no Trainer)
def test_report_lines_scalars_and_diagnosis(tmp_path):
    history = rediagnose(
        [rec(e, 1.0 - 0.2 * e, 0.7 + 0.05 * e, 1.1 - 0.2 * e, 0.68 + 0.05 * e) for e in range(3)], 10, TH
    )
    for r in history:
        r.update(remedy=REMEDIES[r["verdict"]], **{"gap/acc": 0.02, "gap/loss_ratio": 1.1})
    assert report.validation_line(history[-1]).startswith(f"GapMonitor epoch 2: {history[-1]['verdict']} (confidence ")
    history[0]["train_clean/loss"] = float("inf")
    scalars = report.logged_scalars(history[0])
    assert set(scalars) == {"train_clean/loss", "train_clean/acc", "gap/acc", "gap/loss_ratio", "doctor/confidence"}
    assert math.isnan(scalars["train_clean/loss"])
    history[0]["train_clean/loss"] = 1.0
    d = report.diagnosis(history, [{"epoch": 0, "train/loss": 1.2}], TH, 10, stopped_epoch=None, subset_size=1000)
    assert d["final"]["remedy"] == REMEDIES[d["final"]["verdict"]] and sum(d["verdict_counts"].values()) == 3
    assert d["thresholds"] == TH.as_dict() and d["history"] is history
    path = report.publish(tmp_path, d, table=False)
    assert json.loads(path.read_text())["final"] == d["final"]
    png = report.write_curves(tmp_path, history, d["train_running"])
    assert png.name == "curves.png" and png.stat().st_size > 1000


def test_signature_defaults():
    def f(a, b=1, *, c="x"):
        return a

    assert report.signature_defaults(f) == {"b": 1, "c": "x"}
