"""The k-fold run directory: its layout, the manifest, and what an interrupted fold left behind.

::

    <run dir>/kfold.json            manifest: config fingerprint, k, stratified, logger
    <run dir>/config.yaml           the resolved config
    <run dir>/fold_<i>/checkpoints/ the fold's checkpoints
    <run dir>/fold_<i>/test_probs.npz   test-split softmax outputs, targets, indices
    <run dir>/fold_<i>/result.json  the fold's val/test metrics: written last, atomically = "done"
    <run dir>/refit/...             the optional refit on the whole training pool
    <run dir>/kfold_results.json    the report: per fold, mean, sample std (ddof=1), ensemble
    <run dir>/kfold_metrics.png     box + strip plot of the fold metrics

Only rank 0 writes or deletes; every function here is safe to call on every rank.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from lit_recipes.artifacts import atomic_write, save_json, save_text
from lit_recipes.checkpoints import UnsafeCheckpoint, load_checkpoint

if TYPE_CHECKING:
    from lit_recipes.commands.kfold.plan import KFoldOptions, Plan

MANIFEST = "kfold.json"
RESULT = "result.json"
PROBS = "test_probs.npz"
REPORT_JSON = "kfold_results.json"
REPORT_PNG = "kfold_metrics.png"


def _check_manifest(plan: Plan) -> None:
    """Refuse a run directory that holds a k-fold run of another config (or an unreadable manifest)."""
    path = plan.run_dir / MANIFEST
    if not path.is_file():
        return
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path}: unreadable k-fold manifest ({err}); start fresh with --kfold.overwrite true"
        ) from None
    if manifest.get("fingerprint") != plan.fingerprint:
        raise ValueError(
            f"{plan.run_dir} holds a k-fold run of a different config (fingerprint {manifest.get('fingerprint')}, "
            f"this command {plan.fingerprint}); start fresh with --kfold.overwrite true (deletes it) "
            "or pick another --kfold.name / --kfold.run_dir"
        )


def _write_manifest(plan: Plan, class_names: list[str]) -> None:
    """Rank 0 writes ``config.yaml`` and ``kfold.json`` once (the first fold that starts)."""
    if rank_zero_only.rank != 0 or (plan.run_dir / MANIFEST).is_file():
        return
    logger = None
    if plan.logger:
        keep = ("project", "entity", "save_dir", "tags")
        logger = {
            "class_path": plan.logger["class_path"],
            "wandb": plan.logger["wandb"],
            **{k: plan.logger["init_args"].get(k) for k in keep if k in plan.logger["init_args"]},
        }
    (plan.run_dir).mkdir(parents=True, exist_ok=True)
    save_text(plan.run_dir / "config.yaml", plan.config_yaml)
    save_json(
        plan.run_dir / MANIFEST,
        {
            "format": 1,
            "name": plan.name,
            "fingerprint": plan.fingerprint,
            "num_folds": plan.opts.num_folds,
            "stratified": plan.opts.stratified,
            "vary_seed": plan.opts.vary_seed,
            "seed": plan.seed,
            "class_names": class_names,
            "logger": logger,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )


def _remove_run(run_dir: Path) -> None:
    """``kfold.overwrite``: delete a previous k-fold run (never a folder without a manifest)."""
    if not run_dir.exists():
        return
    if not (run_dir / MANIFEST).is_file():
        raise ValueError(f"kfold.overwrite: {run_dir} is not a k-fold run directory (no {MANIFEST}); not deleting it")
    if rank_zero_only.rank == 0:
        shutil.rmtree(run_dir)
        rank_zero_info(f"k-fold: deleted the previous run in {run_dir}")


def _clean_partial(out_dir: Path) -> None:
    """Rank 0 removes what an unfinished fold left behind (the fold is redone from scratch)."""
    if rank_zero_only.rank != 0 or not out_dir.exists():
        return
    rank_zero_info(f"k-fold: {out_dir} is unfinished, redoing it from scratch")
    shutil.rmtree(out_dir, ignore_errors=True)


def _resume_checkpoint(out_dir: Path, opts: KFoldOptions) -> Path | None:
    """The unfinished fold's ``last.ckpt`` when it can be continued from, else ``None`` (after
    removing the fold's leftovers, if any, so it is redone from scratch)."""
    if not out_dir.exists():
        return None
    last = out_dir / "checkpoints" / "last.ckpt"
    if opts.resume == "last" and last.is_file():
        try:  # memory-mapped: reads the counters and checks the archive without loading the weights
            ckpt = load_checkpoint(last, map_location="cpu", mmap=True)  # weights_only=True: no code runs
            epoch, step = int(ckpt["epoch"]), int(ckpt["global_step"])
            del ckpt
        except UnsafeCheckpoint:  # a planted pickle is reported (rc 2), never deleted or redone silently
            raise
        except Exception as err:  # a truncated or foreign file: start the fold again
            rank_zero_warn(f"k-fold: cannot resume from {last} ({type(err).__name__}: {err}); redoing the fold")
        else:
            rank_zero_info(f"k-fold: {out_dir} is unfinished, resuming from {last} (epoch {epoch}, step {step})")
            return last
    _clean_partial(out_dir)
    return None


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed``, atomically (a reader never sees half a file)."""
    atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))
