"""The k-fold report: aggregate what the folds wrote (per-fold metrics, mean and sample std, the
fold ensemble, the refit) without the models; the box + strip plot, the terminal table and the W&B
summary run. Used by ``lit-recipes kfold`` at its end and by ``lit-recipes kfold-report DIR``."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lit_recipes.artifacts import save_figure, save_json
from lit_recipes.commands.kfold.rundir import MANIFEST, PROBS, REPORT_JSON, REPORT_PNG, RESULT
from lit_recipes.plumbing import finish_wandb

STD_NOTE = "sample standard deviation over folds (ddof=1)"


def build_report(run_dir: str | Path, allow_partial: bool = False, plot: bool = True) -> dict[str, Any]:
    """Aggregate a k-fold run directory: per-fold metrics, mean and sample std (ddof=1) of every
    val/test metric, the fold ensemble on the test split (mean of the folds' softmax outputs)
    against the mean single-fold test accuracy, and the refit if there is one. Writes
    ``kfold_results.json`` and ``kfold_metrics.png`` into ``run_dir`` and returns the report.

    Raises:
        FileNotFoundError: ``run_dir`` holds no k-fold run.
        ValueError: folds are missing (unless ``allow_partial``) or come from another config.
    """
    run_dir = Path(run_dir)
    manifest_path = run_dir / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"not a k-fold run directory (no {MANIFEST}): {run_dir}")
    manifest = _read_json(manifest_path, ("num_folds", "fingerprint"), "start fresh with --kfold.overwrite true")
    k = int(manifest["num_folds"])
    folds, missing = [], []
    for i in range(k):
        path = run_dir / f"fold_{i}" / RESULT
        if path.is_file():
            folds.append(read_result(path))
        else:
            missing.append(i)
    if missing and (not allow_partial or not folds):
        raise ValueError(
            f"{run_dir}: fold(s) {', '.join(map(str, missing))} of {k} not finished; run them with "
            "`lit-recipes kfold <same args> --kfold.fold <i>` (or pass --allow-partial)"
        )
    for res in folds:
        if res.get("fingerprint") != manifest["fingerprint"]:
            raise ValueError(f"{run_dir}/fold_{res['fold']}: written by a different config than {MANIFEST}")

    keys = sorted({key for res in folds for key in res["metrics"]}, key=_metric_order)
    summary = {}
    for key in keys:
        values = [res["metrics"].get(key) for res in folds]
        vals = np.array([v for v in values if v is not None], dtype=np.float64)
        summary[key] = {
            "mean": float(vals.mean()),
            "std": float(vals.std(ddof=1)) if len(vals) > 1 else None,
            "min": float(vals.min()),
            "max": float(vals.max()),
            "values": values,
        }

    ensemble = _ensemble(run_dir, folds, summary)
    refit = None
    refit_path = run_dir / "refit" / RESULT
    if refit_path.is_file():
        refit_res = _read_json(refit_path, ("metrics",), "delete it to run the refit again")
        refit = {"metrics": refit_res["metrics"], "train_size": refit_res.get("train_size")}
    report = {
        "name": manifest.get("name"),
        "run_dir": str(run_dir),
        "num_folds": k,
        "folds_done": [res["fold"] for res in folds],
        "stratified": manifest.get("stratified"),
        "fingerprint": manifest["fingerprint"],
        "std": STD_NOTE,
        "folds": [
            {
                "fold": res["fold"],
                "train_size": res.get("train_size"),
                "val_size": res.get("val_size"),
                "epochs": res.get("epochs"),
                "seconds": res.get("seconds"),
                "metrics": res["metrics"],
            }
            for res in folds
        ],
        "summary": summary,
        "ensemble": ensemble,
        "refit": refit,
        "logger": manifest.get("logger"),
    }
    save_json(run_dir / REPORT_JSON, report)
    if plot and folds:
        report["plot"] = str(plot_report(report, run_dir / REPORT_PNG))
    return report


def _read_json(path: Path, keys: tuple[str, ...], hint: str) -> dict:
    """A k-fold JSON file (manifest, a fold's ``result.json``); unreadable, not JSON, or without
    ``keys`` -> :class:`~lit_recipes.errors.BadInput` naming the file."""
    from lit_recipes.errors import BadInput

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BadInput(f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): {path}", hint) from None
    except UnicodeDecodeError:
        raise BadInput(f"not a text (JSON) file: {path}", hint) from None
    if not isinstance(data, dict) or any(k not in data for k in keys):
        missing = [k for k in keys if not isinstance(data, dict) or k not in data]
        raise BadInput(f"{', '.join(missing)} missing from {path}", hint)
    if "metrics" in keys and not isinstance(data["metrics"], dict):
        raise BadInput(f"metrics is not a mapping in {path}", hint)
    return data


def read_result(path: str | Path) -> dict:
    """A fold's (or the refit's) ``result.json``; damaged -> one :class:`~lit_recipes.errors.BadInput`
    naming the file (the rerun of ``kfold`` checks the finished folds' files before training)."""
    return _read_json(Path(path), ("fold", "metrics", "fingerprint"), "delete it to run that fold again")


def _metric_order(key: str) -> tuple:
    stage, _, metric = key.partition("/")
    main = {"acc": 0, "loss": 1, "acc5": 2}
    cls = re.match(r"acc_class_(\d+)$", metric)
    return ({"val": 0, "test": 1}.get(stage, 2), main.get(metric, 3), int(cls.group(1)) if cls else 0, metric)


def _ensemble(run_dir: Path, folds: list[dict], summary: dict) -> dict[str, Any] | None:
    loaded = []
    for res in folds:
        path = run_dir / f"fold_{res['fold']}" / PROBS
        if res.get("test_probs") and path.is_file():
            with np.load(path) as z:
                loaded.append((res["fold"], z["probs"], z["targets"], z["indices"]))
    if not loaded:
        return None
    _, p0, t0, i0 = loaded[0]
    for fold, p, t, i in loaded[1:]:
        if p.shape != p0.shape or not (np.array_equal(t, t0) and np.array_equal(i, i0)):
            raise ValueError(f"{run_dir}/fold_{fold}/{PROBS}: scored a different test split than fold {loaded[0][0]}")
    stack = np.stack([p for _, p, _, _ in loaded]).astype(np.float64)
    mean_probs = stack.mean(0)
    single = [(p.argmax(1) == t0).mean() for p in stack]
    acc = float((mean_probs.argmax(1) == t0).mean())
    nll = float(-np.log(np.clip(mean_probs[np.arange(len(t0)), t0], 1e-12, None)).mean())
    mean_single = float(np.mean(single))
    return {
        "folds": [f for f, *_ in loaded],
        "num_test_samples": int(len(t0)),
        "test/acc": acc,
        "test/nll": nll,
        "mean_single_fold_test/acc": mean_single,
        "std_single_fold_test/acc": float(np.std(single, ddof=1)) if len(single) > 1 else None,
        "single_fold_test/acc": [float(s) for s in single],
        "gain": acc - mean_single,
        "best_single_fold_test/acc": float(np.max(single)),
    }


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Box + strip plot of the per-fold val/test accuracy and loss, with the fold ensemble and the
    refit marked on the accuracy panel. Saved as PNG (atomic)."""
    from matplotlib.figure import Figure

    summary = report["summary"]
    panels = [
        [m for m in ("val/acc", "test/acc") if m in summary],
        [m for m in ("val/loss", "test/loss") if m in summary],
    ]
    panels = [p for p in panels if p]
    fig = Figure(figsize=(4.2 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, metrics in zip(axes, panels):
        data = [[v for v in summary[m]["values"] if v is not None] for m in metrics]
        ax.boxplot(data, widths=0.5, showmeans=True)
        ax.set_xticks(range(1, len(metrics) + 1), metrics)
        for j, vals in enumerate(data, start=1):
            ax.scatter(j + rng.uniform(-0.12, 0.12, len(vals)), vals, s=22, zorder=3, color="tab:blue", alpha=0.8)
        ax.grid(axis="y", alpha=0.3)
        if "test/acc" in metrics:
            j = metrics.index("test/acc") + 1
            ens = report.get("ensemble")
            if ens:
                ax.scatter([j + 0.32], [ens["test/acc"]], marker="*", s=140, color="tab:red", zorder=4,
                           label=f"fold ensemble {ens['test/acc']:.4f}")  # fmt: skip
            refit = (report.get("refit") or {}).get("metrics", {}).get("test/acc")
            if refit is not None:
                ax.scatter([j + 0.32], [refit], marker="D", s=50, color="tab:purple", zorder=4,
                           label=f"refit {refit:.4f}")  # fmt: skip
            if ens or refit is not None:
                # below the axes: inside them it can cover a fold's point
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{report.get('name')}: {len(report['folds'])}-fold cross-validation (box: quartiles, ▲ mean)")
    return save_figure(fig, path)


def report_table(report: dict[str, Any], metrics: Sequence[str] | None = None):
    """A rich Table: one row per fold, then mean and sample std, then ensemble/refit lines."""
    from rich.table import Table

    summary = report["summary"]
    if metrics is None:
        metrics = [m for m in summary if not re.search(r"acc_class_.+$", m)]
    table = Table(title=f"{report.get('name')}: {report['num_folds']}-fold cross-validation ({report['run_dir']})")
    table.add_column("fold", justify="right", no_wrap=True)
    for m in metrics:
        table.add_column(m, justify="right")
    for res in report["folds"]:
        table.add_row(str(res["fold"]), *[_fmt(res["metrics"].get(m)) for m in metrics])
    table.add_section()
    table.add_row("mean", *[_fmt(summary[m]["mean"]) for m in metrics], style="bold")
    table.add_row("std", *[_fmt(summary[m]["std"]) for m in metrics])
    ens = report.get("ensemble")
    refit = report.get("refit")
    if ens or refit:
        table.add_section()
    if ens:
        row = [_fmt(ens["test/acc"]) if m == "test/acc" else "" for m in metrics]
        table.add_row("ensemble", *row, style="bold red")
    if refit:
        row = [_fmt(refit["metrics"].get(m)) if m.startswith("test/") else "" for m in metrics]
        table.add_row("refit", *row, style="green")
    return table


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


def print_report(report: dict[str, Any]) -> None:
    """Print the table and the ensemble-vs-single-fold line to the terminal (rich)."""
    from rich.console import Console

    console = Console()
    console.print(report_table(report))
    ens = report.get("ensemble")
    if ens:
        console.print(
            f"fold ensemble test acc {ens['test/acc']:.4f} vs mean single-fold {ens['mean_single_fold_test/acc']:.4f}"
            f" ± {ens['std_single_fold_test/acc'] or 0:.4f} (gain {ens['gain']:+.4f}) on {ens['num_test_samples']}"
            " test samples"
        )
    if report.get("refit"):
        console.print(f"refit on the whole training pool: test acc {report['refit']['metrics'].get('test/acc', 0):.4f}")
    console.print(
        f"wrote {Path(report['run_dir']) / REPORT_JSON}" + (f" and {report['plot']}" if "plot" in report else "")
    )


def log_report_to_wandb(report: dict[str, Any]) -> None:
    """Log the summary as its own W&B run (same group as the folds, ``job_type="summary"``):
    mean/std of every metric, the ensemble, the per-fold table and the plot. Offline without a key."""
    import wandb

    from lit_recipes.tracking import ensure_wandb_mode

    logger = report.get("logger") or {}
    run_dir = Path(report["run_dir"])
    ensure_wandb_mode(run_dir)
    finish_wandb()  # a run still open (e.g. the last fold's) would swallow this one
    run = wandb.init(
        project=logger.get("project") or "lit-recipes",
        entity=logger.get("entity"),
        group=report["name"],
        job_type="summary",
        name=f"{report['name']}-summary",
        dir=str(run_dir),
        config={
            "num_folds": report["num_folds"],
            "stratified": report["stratified"],
            "fingerprint": report["fingerprint"],
        },
        settings=wandb.Settings(console="off", save_code=False),
    )
    try:
        flat = {}
        for key, s in report["summary"].items():
            flat[f"{key}/mean"] = s["mean"]
            if s["std"] is not None:
                flat[f"{key}/std"] = s["std"]
        if report.get("ensemble"):
            flat.update({f"ensemble/{k}": v for k, v in report["ensemble"].items() if isinstance(v, float)})
        if report.get("refit"):
            flat.update({f"refit/{k}": v for k, v in report["refit"]["metrics"].items()})
        run.summary.update(flat)
        keys = [k for k in report["summary"] if not re.search(r"acc_class_.+$", k)]
        table = wandb.Table(columns=["fold", *keys])
        for res in report["folds"]:
            table.add_data(res["fold"], *[res["metrics"].get(k) for k in keys])
        payload: dict[str, Any] = {"kfold/folds": table}
        if report.get("plot"):
            payload["kfold/metrics"] = wandb.Image(report["plot"])
        run.log(payload)
    finally:
        finish_wandb(run)
