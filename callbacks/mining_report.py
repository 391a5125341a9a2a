"""What hard-negative mining writes (rank zero only): ``history.json`` and a PNG grid of the hardest
negatives after each round, ``report.json`` and ``pr_curve.png`` at the end of fit, all under
``<run dir>/hard_negative_mining/`` and logged to W&B (``mining/hardest``, ``mining/pr_curve``,
``mining/final_*``). The figures are :func:`~lit_recipes.callbacks.mining_rules.hardest_grid` and
:func:`~lit_recipes.callbacks.mining_rules.pr_figure`; the metrics
:func:`~lit_recipes.callbacks.mining_rules.detection_metrics`.

Example:
    >>> import numpy as np
    >>> curves = {"val": (np.array([0.9, 0.8, 0.3, 0.1]), np.array([True, True, False, False]))}
    >>> report = final_report(curves, target_recall=0.9)
    >>> report["evaluated_on"], report["ap"]
    ('val', 1.0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lit_recipes.artifacts import log_image, run_dir, save_figure, save_json
from lit_recipes.callbacks import mining_rules as rules

FOLDER = "hard_negative_mining"


def output_dir(trainer: Any) -> Path:
    """``<run dir>/hard_negative_mining``."""
    return run_dir(trainer) / FOLDER


def grid_name(entry: dict[str, Any]) -> str:
    """``hardest_round01_epoch000.png``: the grid file of a history entry."""
    return f"hardest_round{entry['round']:02d}_epoch{entry['epoch']:03d}.png"


def write_round(trainer: Any, dm: Any, history: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    """The JSON history so far and the PNG grid of ``entry``'s hardest negatives (images read from
    ``dm.pool``, titled with their file names and classes ``dm.class_names``)."""
    out = output_dir(trainer)
    save_json(out / "history.json", history)
    if entry["hardest"]:
        names = [str(c) for c in dm.class_names]
        images = [np.asarray(dm.pool.get(h["index"])[0]) for h in entry["hardest"]]
        title = f"round {entry['round']} (epoch {entry['epoch']})"
        path = save_figure(rules.hardest_grid(images, entry["hardest"], names, title), out / grid_name(entry))
        log_image(trainer, "mining/hardest", path)


def final_report(curves: dict[str, tuple[np.ndarray, np.ndarray]], target_recall: float) -> dict[str, Any]:
    """Detection metrics from ``{"val": (scores, is_positive), "test": ...}``: the threshold comes
    from validation, the metrics from test when there is one (``evaluated_on`` says which).
    ``val_ap`` and ``val_fp`` are validation's own AP and false positives at that threshold: what to
    compare two runs by (mining against ``max_rounds=0``) without looking at the test split."""
    test = curves.get("test", (None, None))
    report: dict[str, Any] = rules.detection_metrics(*curves["val"], *test, target_recall=target_recall)
    val = report if "test" not in curves else rules.detection_metrics(*curves["val"], target_recall=target_recall)
    report.update(val_ap=val["ap"], val_fp=val["fp"], evaluated_on="test" if "test" in curves else "val")
    return report


def write_report(
    trainer: Any, report: dict[str, Any], curves: dict[str, tuple[np.ndarray, np.ndarray]], target_recall: float
) -> None:
    """``report.json``, ``pr_curve.png`` (one curve per split) and the ``mining/final_*`` metrics."""
    out = output_dir(trainer)
    save_json(out / "report.json", report)
    path = save_figure(rules.pr_figure(curves, target_recall), out / "pr_curve.png")
    log_image(trainer, "mining/pr_curve", path)
    for logger in trainer.loggers:
        logger.log_metrics({f"mining/final_{k}": float(v) for k, v in report.items() if k != "evaluated_on"})


__all__ = ["FOLDER", "final_report", "grid_name", "output_dir", "write_report", "write_round"]
