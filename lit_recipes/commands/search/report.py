"""The pick (one-standard-error rule), the trials table, the plot and the W&B logging of a search."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lit_recipes.artifacts import save_figure
from lit_recipes.commands.search.space import Param, trial_complexity
from lit_recipes.plumbing import finish_wandb

RULES = ("one_se", "best")
RULE_TEXT = {
    "one_se": (
        "one-standard-error rule: among the complete trials whose mean {metric} is within one standard error "
        "(fold std / sqrt(folds) of the best trial) of the best, the simplest: the smallest mean distance of its "
        "values from each parameter's simplest end (simplest=low|high; choice: the first listed value), "
        "ties to the better mean"
    ),
    "best": "the best mean {metric} over the folds (no allowance for noise)",
}


def summarize_trial(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std (ddof=1) and standard error of a trial's fold values."""
    vals = np.asarray(values, dtype=np.float64)
    n = len(vals)
    std = float(vals.std(ddof=1)) if n > 1 else None
    return {
        "mean": float(vals.mean()) if n else None,
        "std": std,
        "se": std / math.sqrt(n) if std is not None else None,
        "n_folds": n,
    }


def pick(
    trials: list[dict[str, Any]], params: list[Param], maximize: bool, rule: str = "one_se"
) -> dict[str, Any] | None:
    """Choose among the complete trials.

    Args:
        trials: ``{"number", "state", "params", "values"}`` dicts (``values``: the fold metrics);
            only ``state == "COMPLETE"`` trials take part.
        params: the space (declares each parameter's simplest end).
        maximize: the metric's direction.
        rule: ``one_se`` (default) or ``best``.

    Returns:
        ``{"best", "best_mean", "se", "threshold", "within_one_se", "chosen", "rule", "complexity"}``
        (trial numbers), or ``None`` when no trial is complete.
    """
    if rule not in RULES:
        raise ValueError(f"search.rule must be one of {', '.join(RULES)}, got {rule!r}")
    complete = [t for t in trials if t["state"] == "COMPLETE" and t.get("values")]
    if not complete:
        return None
    sign = 1.0 if maximize else -1.0
    stats = {t["number"]: summarize_trial(t["values"]) for t in complete}
    best = max(complete, key=lambda t: (sign * stats[t["number"]]["mean"], -t["number"]))
    best_stats = stats[best["number"]]
    se = best_stats["se"] or 0.0
    threshold = best_stats["mean"] - sign * se
    within = [t for t in complete if sign * (stats[t["number"]]["mean"] - threshold) >= -1e-12]
    complexity = {t["number"]: trial_complexity(params, t["params"]) for t in complete}
    if rule == "best":
        chosen = best
    else:
        chosen = min(within, key=lambda t: (complexity[t["number"]], -sign * stats[t["number"]]["mean"], t["number"]))
    return {
        "rule": rule,
        "best": best["number"],
        "best_mean": best_stats["mean"],
        "se": se,
        "threshold": threshold,
        "within_one_se": sorted(t["number"] for t in within),
        "chosen": chosen["number"],
        "complexity": {n: round(c, 6) for n, c in complexity.items()},
    }


# ---------------------------------------------------------------------------------- table
def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "null" if v is None else str(v)


def trials_table(report: dict[str, Any]):
    """A rich Table: one row per trial (params, folds, mean ± std, state, marks)."""
    from rich.table import Table

    metric = report["metric"]
    keys = list(report["space"])
    pick_ = report.get("pick") or {}
    table = Table(title=f"search {report['name']}: {len(report['trials'])} trials, {report['num_folds']}-fold {metric}")
    table.add_column("#", justify="right")
    table.add_column("state")
    for key in keys:
        table.add_column(key.rsplit(".", 1)[-1], justify="right", overflow="fold")
    table.add_column("folds", justify="right")
    table.add_column(f"{metric} mean ± std", justify="right")
    table.add_column("pick")
    for t in report["trials"]:
        mark = []
        if t["number"] == pick_.get("best"):
            mark.append("best")
        if t["number"] in pick_.get("within_one_se", ()):
            mark.append("≤1 SE")
        if t["number"] == pick_.get("chosen"):
            mark.append("CHOSEN")
        mean = "-" if t["mean"] is None else f"{t['mean']:.4f}" + (f" ± {t['std']:.4f}" if t["std"] is not None else "")
        state = t["state"].lower() + (f" (retry of #{t['retry_of']})" if t.get("retry_of") is not None else "")
        style = "bold green" if t["number"] == pick_.get("chosen") else ("dim" if t["state"] != "COMPLETE" else None)
        table.add_row(
            str(t["number"]),
            state,
            *[_fmt_value(t["params"].get(k)) for k in keys],
            f"{t['n_folds']}/{report['num_folds']}",
            mean,
            ", ".join(mark),
            style=style,
        )
    return table


# ---------------------------------------------------------------------------------- plot
def plot_search(report: dict[str, Any], params: list[Param], path: str | Path) -> Path:
    """Metric against each parameter (complete trials: mean ± fold std; pruned: their partial
    mean), the one-SE threshold, the best and the chosen trial; last panel: Optuna's parameter
    importances. Saved as PNG."""
    from matplotlib.figure import Figure

    metric = report["metric"]
    pick_ = report.get("pick") or {}
    n = len(params) + 1
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.4 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, p in zip(axes, params):

        def xpos(v, p=p):
            if p.dist == "choice":
                return next(i for i, c in enumerate(p.choices) if c == v and type(c) is type(v))
            return v

        for t in report["trials"]:
            if t["mean"] is None or p.key not in t["params"]:
                continue
            x = xpos(t["params"][p.key])
            if t["state"] == "COMPLETE":
                chosen = t["number"] == pick_.get("chosen")
                best = t["number"] == pick_.get("best")
                within = t["number"] in pick_.get("within_one_se", ())
                color = "tab:green" if chosen else "tab:red" if best else "tab:orange" if within else "tab:blue"
                ax.errorbar(x, t["mean"], yerr=t["std"] or 0.0, fmt="*" if chosen else "o", color=color,
                            ms=13 if chosen else 6, capsize=3, zorder=3 if chosen else 2)  # fmt: skip
            elif t["state"] == "PRUNED":
                ax.scatter([x], [t["mean"]], marker="x", color="grey", zorder=2)
        if pick_.get("threshold") is not None:
            ax.axhline(pick_["threshold"], color="tab:red", ls="--", lw=1)
        if p.dist == "log_uniform":
            ax.set_xscale("log")
        if p.dist == "choice":
            ax.set_xticks(range(len(p.choices)), [_fmt_value(c) for c in p.choices], rotation=20)
        ax.set_xlabel(p.key.replace(".init_args.", "."), fontsize=8)
        ax.set_ylabel(f"{metric} (mean ± fold std)")
        ax.grid(alpha=0.3)
    # legend proxies on the first panel
    ax0 = axes[0]
    handles = [
        ax0.scatter([], [], marker="*", s=120, color="tab:green", label="chosen"),
        ax0.scatter([], [], marker="o", color="tab:red", label="best mean"),
        ax0.scatter([], [], marker="o", color="tab:orange", label="within 1 SE"),
        ax0.scatter([], [], marker="o", color="tab:blue", label="complete"),
        ax0.scatter([], [], marker="x", color="grey", label="pruned (partial mean)"),
    ]
    handles.append(ax0.plot([], [], color="tab:red", ls="--", lw=1, label="best − 1 SE")[0])
    ax0.legend(handles=handles, fontsize=7, loc="best")
    ax = axes[len(params)]
    imp = report.get("importances")
    if imp:
        names = list(imp)[::-1]
        ax.barh(range(len(names)), [imp[k] for k in names], color="tab:purple")
        ax.set_yticks(range(len(names)), [k.replace(".init_args.", ".") for k in names], fontsize=7)
        ax.set_xlabel("importance (Optuna, fANOVA)")
        ax.set_xlim(0, 1)
    else:
        ax.text(0.5, 0.5, report.get("importances_note") or "no importances", ha="center", va="center",
                wrap=True, fontsize=9)  # fmt: skip
        ax.set_axis_off()
    ax.set_title("parameter importances", fontsize=10)
    for extra in axes[len(params) + 1 :]:
        extra.set_axis_off()
    chosen = pick_.get("chosen")
    fig.suptitle(
        f"search {report['name']}: {metric} over {report['num_folds']} folds"
        + (f"; chosen trial #{chosen} ({pick_['rule'].replace('_', '-')} rule)" if chosen is not None else "")
    )
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------- W&B
def wandb_init(report_or_plan: dict[str, Any], **kwargs: Any):
    """``wandb.init`` in the search's project, offline without a key."""
    import wandb

    from lit_recipes.tracking import ensure_wandb_mode

    logger = report_or_plan.get("logger") or {}
    save_dir = Path(report_or_plan["search_dir"])
    ensure_wandb_mode(save_dir)
    finish_wandb()  # close a run still open (the global wandb.run) first
    return wandb.init(
        project=logger.get("project") or "lit-recipes",
        entity=logger.get("entity"),
        group=report_or_plan["name"],
        dir=str(save_dir),
        settings=wandb.Settings(console="off", save_code=False),
        **kwargs,
    )


def log_trial_to_wandb(info: dict[str, Any], trial: dict[str, Any]) -> None:
    """One W&B run per trial, in the study's group: its parameters, fold values (step = fold),
    mean, std and state."""
    metric = info["metric"]
    run = wandb_init(
        info,
        job_type="trial",
        name=f"{info['name']}-trial{trial['number']}",
        config={**trial["params"], "trial": trial["number"]},
    )
    try:
        for fold, value in enumerate(trial["values"]):
            run.log({f"fold/{metric}": value, "fold": fold}, step=fold)
        run.summary.update(
            {
                f"{metric}/mean": trial["mean"],
                f"{metric}/std": trial["std"],
                "state": trial["state"],
                "folds_done": trial["n_folds"],
            }
        )
    finally:
        finish_wandb(run)


def log_report_to_wandb(report: dict[str, Any]) -> None:
    """The study's summary run (same group, ``job_type="search"``): the trials table, the plot,
    the chosen parameters and the final model's test metrics."""
    import wandb

    run = wandb_init(report, job_type="search", name=f"{report['name']}-search", config={"space": report["space"]})
    try:
        keys = list(report["space"])
        table = wandb.Table(columns=["trial", "state", *keys, "mean", "std", "folds"])
        for t in report["trials"]:
            table.add_data(t["number"], t["state"], *[t["params"].get(k) for k in keys], t["mean"], t["std"],
                           t["n_folds"])  # fmt: skip
        payload: dict[str, Any] = {"search/trials": table}
        if report.get("plot"):
            payload["search/plot"] = wandb.Image(report["plot"])
        run.log(payload)
        summary = {"chosen": (report.get("pick") or {}).get("chosen")}
        summary.update({f"chosen/{k}": v for k, v in (report.get("chosen_params") or {}).items()})
        summary.update({f"final/{k}": v for k, v in ((report.get("final") or {}).get("metrics") or {}).items()})
        run.summary.update(summary)
    finally:
        finish_wandb(run)


__all__ = [
    "RULES",
    "RULE_TEXT",
    "log_report_to_wandb",
    "log_trial_to_wandb",
    "pick",
    "plot_search",
    "summarize_trial",
    "trials_table",
]
