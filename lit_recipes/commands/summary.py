"""The block printed at the end of every Trainer command (``fit``/``validate``/``test``/``predict``)
and the W&B facts it shows; the runs are closed with :func:`lit_recipes.plumbing.finish_wandb`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lit_recipes.lightning_compat import wandb_experiment_started
from lit_recipes.plumbing import finish_wandb

if TYPE_CHECKING:
    from lit_recipes.commands.fit import LitRecipesCLI


def wandb_info(trainer) -> list[dict[str, str]]:
    """Offline folder / URL of each W&B run of ``trainer`` that was started (read before ``finish``)."""
    out: list[dict[str, str]] = []
    if trainer is None:
        return out
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if not (isinstance(logger, WandbLogger) and wandb_experiment_started(logger)):
            continue
        run = logger.experiment
        try:
            files_dir = Path(run.dir)
            offline = bool(getattr(run.settings, "_offline", False)) or os.environ.get("WANDB_MODE") == "offline"
            out.append({"offline": str(files_dir.parent)} if offline else {"url": str(run.url)})
        except Exception:  # noqa: BLE001 - the summary must not fail the run
            continue
    return out


def _rel(path: str | os.PathLike) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # pragma: no cover - another drive on Windows
        return str(path)


def summary_text(cli: LitRecipesCLI, started: float, wandb_info: list[dict[str, str]] | None = None) -> str:
    """The block printed at the end of every Trainer command: run folder, best checkpoint and
    score, GapMonitor verdict, plots written, W&B offline folder and its ``wandb sync`` line."""
    trainer = cli.trainer
    rows: list[tuple[str, str]] = [("run folder", _rel(cli.run_folder))]
    if cli.out_dir != cli.run_folder:
        rows.append((f"{cli.subcommand} output", _rel(cli.out_dir)))
    ckpt = trainer.checkpoint_callback
    if cli.subcommand == "fit" and ckpt is not None and getattr(ckpt, "best_model_path", ""):
        score = ckpt.best_model_score
        text = _rel(ckpt.best_model_path)
        if score is not None:
            text += f"  ({ckpt.monitor} {float(score):.4f})"
        rows.append(("best checkpoint", text))
    elif cli.subcommand == "fit" and ckpt is not None and getattr(ckpt, "last_model_path", ""):
        rows.append(("last checkpoint", _rel(ckpt.last_model_path)))
    if cli.subcommand == "fit" and getattr(trainer, "interrupted", False):
        last = getattr(ckpt, "last_model_path", "") if ckpt is not None else ""
        where = f"in epoch {trainer.current_epoch}"
        if last and os.path.isfile(last):
            rows.append(("interrupted", f"{where}; resume point {_rel(last)} (the last finished epoch)"))
        else:
            rows.append(("interrupted", f"{where}, before an epoch finished: nothing to resume"))
    metrics = {k: v for k, v in trainer.callback_metrics.items() if k.split("/")[0] in ("test", "val")}
    shown = [k for k in ("test/acc", "test/loss", "val/acc", "val/loss") if k in metrics]
    if cli.subcommand in ("test", "validate") or ("test/acc" in metrics and cli.subcommand == "fit"):
        if shown:
            rows.append(("scores", ", ".join(f"{k} {float(metrics[k]):.4f}" for k in shown)))
    for cb in trainer.callbacks:
        diagnosis = getattr(cb, "diagnosis", None)
        final = diagnosis.get("final") if isinstance(diagnosis, dict) else None
        if isinstance(final, dict) and final.get("verdict"):
            conf = final.get("confidence")
            verdict = str(final["verdict"]) + (f" (confidence {conf})" if conf is not None else "")
            rows.append(("verdict", f"{verdict}, {type(cb).__name__}: {_rel(cli.out_dir / 'diagnosis.json')}"))
    out = Path(cli.out_dir)
    plots = sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*.png")
        if "wandb" not in p.relative_to(out).parts[:-1] and p.stat().st_mtime >= started - 1
    )
    if plots:
        rows.append(("plots", ", ".join(plots) + f"  (in {_rel(out)})"))
    for info in wandb_info or []:
        if "offline" in info:
            rows.append(("W&B (offline)", _rel(info["offline"])))
            rows.append(("upload with", f"wandb sync {_rel(info['offline'])}"))
        elif "url" in info:
            rows.append(("W&B", info["url"]))
    width = max(len(k) for k, _ in rows)
    lines = [f"── lit-recipes {cli.subcommand}: summary ──"] + [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n" + "\n".join(lines) + "\n"


__all__ = ["finish_wandb", "summary_text", "wandb_info"]
