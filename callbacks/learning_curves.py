"""Learning curves and the end-of-fit report of :class:`~lit_recipes.callbacks.GapMonitor`.

Plain functions over the monitor's history (a list of per-validation records, plus the running
training metrics per epoch), so they can redraw a saved ``diagnosis.json`` too::

    import json
    from lit_recipes.callbacks.learning_curves import plot_curves
    d = json.load(open("runs/.../diagnosis.json"))
    fig = plot_curves(d["history"], d["train_running"])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

VERDICT_COLORS = {
    "warming_up": "#bcbd22",
    "healthy": "#2ca02c",
    "underfitting": "#17becf",  # not the clean-train line's blue
    "overfitting_onset": "#ff7f0e",
    "overfitting": "#d62728",
    "not_converging": "#7f7f7f",
}


def _finite(v: Any) -> float:
    return float(v) if v is not None and math.isfinite(float(v)) else float("nan")


def plot_curves(history: Sequence[dict], train_running: Sequence[dict], title: str | None = None):
    """Loss and accuracy panels: running train (under augmentation/dropout), clean train, val.

    Each validation's verdict is a coloured marker on the val curves; the val-loss minimum is
    marked with a dashed line. Returns the matplotlib figure (Agg backend).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    # 0-based epochs as in the table and diagnosis.json: a point at x = e is the end of epoch e
    x_val = [r["epoch"] + r.get("epoch_fraction", 1.0) - 1 for r in history]
    x_run = [r["epoch"] for r in train_running]
    for ax, key, name in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        if train_running:
            ax.plot(
                x_run,
                [_finite(r.get(f"train/{key}")) for r in train_running],
                "--",
                color="#9467bd",
                label="train (running)",
            )
        if history:
            ax.plot(
                x_val,
                [_finite(r[f"train_clean/{key}"]) for r in history],
                "-o",
                ms=3,
                color="#1f77b4",
                label="train (clean)",
            )
            val = [_finite(r[f"val/{key}"]) for r in history]
            ax.plot(x_val, val, "-", color="black", label="val")
            band = [(r.get("intervals") or {}).get(f"val_{key}") for r in history]
            if any(b is not None for b in band):  # the val metric's interval (Wilson / standard error)
                lo = [b[0] if b is not None else float("nan") for b in band]
                hi = [b[1] if b is not None else float("nan") for b in band]
                ax.fill_between(x_val, lo, hi, color="black", alpha=0.12, lw=0, label="val interval")
            for x, v, r in zip(x_val, val, history):  # opacity = the verdict's confidence
                alpha = 0.2 + 0.8 * min(max(float(r.get("confidence", 1.0)), 0.0), 1.0)
                color = VERDICT_COLORS.get(r["verdict"], "black")
                ax.scatter([x], [v], s=40, zorder=3, color=color, alpha=alpha, edgecolors=color, linewidths=0.8)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, not 0.5 steps
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if history:
        losses = [_finite(r["val/loss"]) for r in history]
        finite = [(v, x) for v, x in zip(losses, x_val) if not math.isnan(v)]
        if finite:
            best_x = min(finite)[1]
            ax_loss.axvline(best_x, ls=":", color="gray")
        if all(_finite(r["train_clean/loss"]) > 0 for r in history) and max(losses, default=0) > 0:
            ax_loss.set_yscale("log")
    ax_acc.set_ylim(-0.02, 1.02)
    handles, labels = ax_loss.get_legend_handles_labels()
    seen = sorted({r["verdict"] for r in history}, key=list(VERDICT_COLORS).index)
    handles += [Line2D([], [], marker="o", ls="", color=VERDICT_COLORS[v]) for v in seen]
    labels += seen
    fig.legend(
        handles, labels, loc="lower center", ncol=min(len(labels), 8), frameon=False, bbox_to_anchor=(0.5, -0.08)
    )
    if history:
        from lit_recipes.callbacks.doctor_rules import verdict_text

        last = verdict_text(history[-1]["verdict"], history[-1].get("confidence", 1.0))
    else:
        last = "no validation yet"
    fig.suptitle(title or f"learning curves: {last}; marker opacity = confidence")
    fig.tight_layout()
    return fig


def report_table(history: Sequence[dict], final: dict[str, Any]):
    """A rich ``Table``: one row per validation, then the final verdict with evidence and remedy."""
    from rich.table import Table

    table = Table(title="GapMonitor: train/val gap report", show_lines=False)
    for col in (
        "epoch",
        "train loss",
        "clean loss",
        "val loss",
        "clean acc",
        "val acc",
        "gap acc",
        "val/train loss",
        "verdict",
        "conf.",
    ):
        table.add_column(col, justify="right" if col != "verdict" else "left")

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    for r in history:
        color = VERDICT_COLORS.get(r["verdict"], "white")
        table.add_row(
            str(r["epoch"]),
            f(r.get("train/loss"), ".4f"),
            f(r["train_clean/loss"], ".4f"),
            f(r["val/loss"], ".4f"),
            f(r["train_clean/acc"], ".2%"),
            f(r["val/acc"], ".2%"),
            f(r["gap/acc"], "+.2%"),
            f(r["gap/loss_ratio"], ".2f"),
            f"[{color}]{r['verdict']}[/]",
            "-" if r["verdict"] == "warming_up" else f(r.get("confidence"), ".2f"),  # no judgement yet
        )
    conf = final.get("confidence")
    conf = f" (confidence {conf:.2f})" if isinstance(conf, float) else ""
    table.caption = f"final: {final.get('verdict')}{conf} - {final.get('evidence')}\nremedy: {final.get('remedy')}"
    return table
