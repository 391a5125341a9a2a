"""Figures of the LR range test: :func:`plot_lr_curves` (one or several sweeps, suggestions marked)
and :func:`range_test_figure` (one sweep with its raw losses, as ``LRRangeTest`` writes it).

Example:
    >>> from lit_recipes.callbacks.lr_plot import plot_lr_curves
    >>> res = {"lrs": [1e-3, 1e-2, 1e-1], "smoothed": [2.0, 1.0, 3.0], "suggestion_index": 1}
    >>> fig = plot_lr_curves({"sweep": res})
    >>> fig.axes[0].get_xscale()
    'log'
"""

from __future__ import annotations

import math
from typing import Any

_MARK_STYLE = {
    "knee": ("tab:green", "knee (the loss enters the valley)"),
    "edge": ("tab:red", "valley edge"),
    "plateau": ("0.4", "plateau"),
    "ceiling": ("tab:purple", "rule reads up to"),
}


def plot_lr_curves(curves: dict[str, dict[str, Any]], title: str = "LR range test"):
    """One figure with the smoothed loss of every result (``{label: results}``) against the LR
    (log x), the suggestion of each marked with a dot. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    finite_vals: list[float] = []
    for label, res in curves.items():
        lrs = res["lrs"]
        sm = res.get("curve") or res["smoothed"]  # the curve the rule read (log-LR smoothed for knee)
        (line,) = ax.plot(lrs, sm, label=label)
        finite_vals += [v for v in sm if math.isfinite(v)]
        for name, j in (res.get("marks") or {}).items():
            if name in _MARK_STYLE and j is not None and j < len(lrs):
                color, text = _MARK_STYLE[name]
                ax.axvline(
                    lrs[j], color=color, ls="--", lw=0.9, label=f"{text} {lrs[j]:.2g}" if len(curves) == 1 else None
                )
        if res.get("level") is not None and len(curves) == 1:
            ax.axhline(res["level"], color="tab:green", ls=":", lw=0.8, label="valley level (min + 10 % of the drop)")
        i = res.get("suggestion_index")
        if i is not None:
            lr = res.get("suggestion") or lrs[i]
            ax.plot(lr, sm[i], "o", color=line.get_color(), markersize=8, markeredgecolor="black")
            ax.annotate(f"{lr:.2g}", (lr, sm[i]), textcoords="offset points", xytext=(5, 6), fontsize=8)
    if res.get("mode", "exponential") == "exponential":
        ax.set_xscale("log")
    if finite_vals:  # keep the divergence spike from flattening the interesting part
        lo, first = min(finite_vals), max(finite_vals[:3] or finite_vals)
        ax.set_ylim(lo - 0.05 * abs(first - lo) - 1e-3, first + 0.5 * abs(first - lo) + 1e-3)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if len(curves) > 1 or any(r.get("suggestion_index") is not None for r in curves.values()):
        ax.legend(fontsize=8)
    return fig


def range_test_figure(results: dict[str, Any]):
    """The figure ``LRRangeTest`` writes for one sweep (``results`` as in ``LRRangeTest.results``):
    the curve its rule read with the marks and the suggestion, and the raw losses in grey."""
    rule = results["rule"]
    title = f"LR range test: suggested lr {_fmt(results['suggestion'])} (rule {rule})"
    label = "loss smoothed in log-LR" if rule == "knee" else "smoothed loss (EMA)"
    fig = plot_lr_curves({label: results}, title=title)
    ax = fig.axes[0]
    ax.plot(results["lrs"], results["losses"], color="0.7", lw=0.8, zorder=0, label="raw loss")
    ax.legend(fontsize=8)
    return fig


def _fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.3g}"


__all__ = ["plot_lr_curves", "range_test_figure"]
