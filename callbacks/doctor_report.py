r"""The training doctor's report: the remedies, the console lines, ``diagnosis.json`` and
``curves.png``, and the end-of-fit table.

Functions over the history of judged validation records (see
:mod:`lit_recipes.callbacks.doctor_rules`), so a saved ``diagnosis.json`` can be re-reported too::

    import json
    from lit_recipes.callbacks.doctor_report import final_line
    d = json.load(open("runs/.../diagnosis.json"))
    print(final_line(d["final"]))
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_recipes.artifacts import save_figure, save_json
from lit_recipes.callbacks.doctor_rules import VERDICTS, Thresholds, summarize, verdict_text

REMEDIES = {
    "warming_up": "none yet: the LR is still warming up (or this is the first validation); wait for the evidence",
    "healthy": "nothing to fix; if val accuracy is still too low, train longer or try a bigger model",
    "underfitting": (
        "the model has not fitted its own training set: train longer while the loss still falls, "
        "else a bigger model (more capacity) or a better LR (run `lit-recipes lr-find`); "
        "lower regularisation (dropout, weight decay, mixup) if it is strong"
    ),
    "overfitting_onset": (
        "val loss has turned up while train loss keeps falling: stop early (keep the val-loss minimum, "
        "or set stop_on: overfitting), or add regularisation (dropout, weight decay) or augmentation"
    ),
    "overfitting": (
        "the model memorises the training set: more data or stronger augmentation; dropout or weight "
        "decay; early stopping (stop_on: overfitting restores the best checkpoint)"
    ),
    "not_converging": (
        "the loss stays flat and high, diverges, or nothing learned reaches val: check the LR with the range "
        "test (`lit-recipes lr-find`) - far too high diverges, far too low never moves; then run "
        "`lit-recipes sanity` (normalised inputs, labels tied to their images, a model able to fit a tiny subset)"
    ),
}


def validation_line(record: dict[str, Any], confidence: float | None = None) -> str:
    """The console line of one judged validation: epoch, verdict, confidence (default: the record's,
    rounded to 4 places), evidence."""
    confidence = record["confidence"] if confidence is None else confidence
    shown = verdict_text(record["verdict"], confidence)
    return f"GapMonitor epoch {record['epoch']}: {shown} - {record['evidence']}"


def logged_scalars(record: dict[str, Any]) -> dict[str, float]:
    """What the monitor logs at each validation (non-finite values as ``nan``)."""
    names = {"train_clean/loss": "train_clean/loss", "train_clean/acc": "train_clean/acc", "gap/acc": "gap/acc",
             "gap/loss_ratio": "gap/loss_ratio", "confidence": "doctor/confidence"}  # fmt: skip
    return {name: record[key] if math.isfinite(record[key]) else float("nan") for key, name in names.items()}


def final_line(final: dict[str, Any]) -> str:
    """The console line of the run's final verdict (``diagnosis["final"]``)."""
    return f"GapMonitor final: {final['verdict']} (confidence {final['confidence']}) - {final['evidence']}"


def nonfinite_final(epoch: int, step: int, value: float, lr: float | None) -> dict[str, Any]:
    """The final verdict of a run stopped on a non-finite training loss
    (:class:`~lit_recipes.errors.NonFiniteLoss`): ``not_converging``, the optimisation diverged."""
    where = f"training loss {value} at epoch {epoch}, step {step}" + (f" (lr {lr:.3g})" if lr is not None else "")
    return {
        "epoch": epoch,
        "verdict": "not_converging",
        "confidence": 1.0,
        "evidence": f"non-finite {where}: the optimisation diverged; the run stopped there",
        "remedy": REMEDIES["not_converging"],
        "diverged": True,
    }


def diagnosis(
    history: Sequence[dict[str, Any]],
    train_running: Sequence[dict[str, Any]],
    th: Thresholds,
    num_classes: int | None,
    *,
    stopped_epoch: int | None = None,
    subset_size: int | None = None,
    chance_acc: float | None = None,
) -> dict[str, Any]:
    """The content of ``diagnosis.json``: the final verdict (run-level evidence, remedy), the
    val-loss minimum, the onset vs EarlyStopping, verdict counts, the settings and the history."""
    out = summarize(history, th, num_classes or 2)
    out["final"]["remedy"] = REMEDIES.get(out["final"]["verdict"], "")
    out.update(
        verdict_counts={v: sum(r["verdict"] == v for r in history) for v in VERDICTS},
        first_overfitting_epoch=next((r["epoch"] for r in history if r["verdict"] == "overfitting"), None),
        stopped_epoch=stopped_epoch,
        subset_size=subset_size,
        chance_acc=chance_acc,
        thresholds=th.as_dict(),
        history=history,
        train_running=train_running,
    )
    return out


def write_curves(
    directory: str | Path, history: Sequence[dict[str, Any]], train_running: Sequence[dict[str, Any]]
) -> Path:
    """Draw the learning curves into ``directory/curves.png``; returns the path."""
    from lit_recipes.callbacks.learning_curves import plot_curves

    return save_figure(plot_curves(history, train_running), Path(directory) / "curves.png")


def write_diagnosis(directory: str | Path, content: dict[str, Any]) -> Path:
    """Write ``content`` (see :func:`diagnosis`) to ``directory/diagnosis.json``; returns the path."""
    path = Path(directory) / "diagnosis.json"
    save_json(path, content)
    return path


def publish(directory: str | Path, content: dict[str, Any], table: bool = True) -> Path:
    """Write ``diagnosis.json`` into ``directory``; when a validation ran, log the final line and
    print the table (``table``). Returns the JSON's path."""
    path = write_diagnosis(directory, content)
    if content.get("history"):  # none: e.g. the sweeps of lr-find; nothing to report
        rank_zero_info(final_line(content["final"]))
        if table:
            print_table(content["history"], content["final"])
    return path


def restore_best(trainer: Any, pl_module: Any, best_state: dict[str, Any] | None, best_val_loss: float) -> str | None:
    """After an early stop, load the checkpoint callback's best checkpoint, else ``best_state`` (the
    weights at the val-loss minimum). Returns what was restored (a path, ``"val_loss_minimum"``, or
    ``None`` with a warning)."""
    ckpt_cb = trainer.checkpoint_callback
    path = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
    if path:
        checkpoint = trainer.strategy.load_checkpoint(path)
        pl_module.load_state_dict(checkpoint["state_dict"])
        rank_zero_info(f"GapMonitor: restored the best checkpoint {path}")
        return str(path)
    if best_state is not None:
        pl_module.load_state_dict(best_state)
        rank_zero_info(f"GapMonitor: restored the weights at the val-loss minimum ({best_val_loss:.4f})")
        return "val_loss_minimum"
    rank_zero_warn("GapMonitor: stopped early but found no best weights to restore")
    return None


def signature_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The default values of ``function``'s parameters (those that have one)."""
    params = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def print_table(history: Sequence[dict[str, Any]], final: dict[str, Any]) -> None:
    """Print the end-of-fit table (one row per validation, then the verdict and remedy), >= 120 wide."""
    from rich.console import Console

    from lit_recipes.callbacks.learning_curves import report_table

    Console(width=max(Console().width, 120)).print(report_table(history, final))


__all__ = [
    "REMEDIES",
    "diagnosis",
    "final_line",
    "logged_scalars",
    "print_table",
    "publish",
    "restore_best",
    "signature_defaults",
    "validation_line",
    "write_curves",
    "write_diagnosis",
]
