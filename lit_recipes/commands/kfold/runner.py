"""The k-fold driver: every fold (and the refit) built afresh from the config, fitted, validated
and tested on its best checkpoint, its test-split softmax outputs scored (gathered across DDP
ranks) and written; finished folds are skipped and an unfinished one resumed (:mod:`.rundir`)."""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from lit_recipes.artifacts import save_json
from lit_recipes.checkpoints import check_resume_files, load_checkpoint
from lit_recipes.commands.kfold.options import KFoldCLI, _fold_args, _fold_seed, _plan
from lit_recipes.commands.kfold.plan import KFoldOptions, Plan
from lit_recipes.commands.kfold.report import build_report, log_report_to_wandb, read_result
from lit_recipes.commands.kfold.rundir import (
    PROBS,
    RESULT,
    _check_manifest,
    _remove_run,
    _resume_checkpoint,
    _save_npz,
    _write_manifest,
)
from lit_recipes.contracts import FoldTooSmallError, IndexedDataModule, check_contract
from lit_recipes.plumbing import eval_mode, finish_wandb, gather_by_index


def run_kfold(args: Sequence[str] = (), *, report_hint: bool = True, **options: Any) -> dict[str, Any] | None:
    """Run (or resume) a k-fold cross-validation; the Python API behind ``lit-recipes kfold``.

    Args:
        args: ``fit``-style arguments: ``--config``, ``--model.*``, ``--data.*``, ``--trainer.*``,
            ``--kfold.*``.
        report_hint: with ``fold`` set, end with the line that says to aggregate with
            ``lit-recipes kfold-report`` (``search`` runs its folds this way and aggregates them itself).
        **options: :class:`KFoldOptions` fields, overriding ``--kfold.*`` (``num_folds=5``, ...).

    Returns:
        The report (:func:`build_report`) when every fold is done, else ``None`` (one fold run).
        Under DDP every rank trains; only rank 0 writes files and builds the report.
    """
    plan = _plan(list(args), options)
    opts = plan.opts
    if opts.overwrite:
        _remove_run(plan.run_dir)
    else:
        _check_manifest(plan)
    folds = list(range(opts.num_folds)) if opts.fold is None else [opts.fold] if opts.fold != "refit" else []
    todo = [i for i in folds if opts.overwrite or not (plan.run_dir / f"fold_{i}" / RESULT).is_file()]
    skipped = sorted(set(folds) - set(todo))
    for i in skipped:  # a damaged result.json of a finished fold: one line naming it, before anything trains
        read_result(plan.run_dir / f"fold_{i}" / RESULT)
    check_resume_files(plan.run_dir)  # a pickle planted as any fold's last.ckpt: one line, before anything trains
    if skipped:
        rank_zero_info(f"k-fold: {plan.run_dir}: folds {', '.join(map(str, skipped))} already done, skipping")
    for i in todo:
        _run_fold(plan, i)
    if (opts.refit and opts.fold is None) or opts.fold == "refit":
        if opts.overwrite or not (plan.run_dir / "refit" / RESULT).is_file():
            _run_refit(plan)
        else:
            rank_zero_info(f"k-fold: {plan.run_dir}: refit already done, skipping")
    if opts.fold is not None:
        if report_hint:
            rank_zero_info(
                f"k-fold: {plan.run_dir}: {'refit' if opts.fold == 'refit' else f'fold {opts.fold}'} done; "
                f"aggregate with `lit-recipes kfold-report {plan.run_dir}` once every fold has finished"
            )
        return None
    if rank_zero_only.rank != 0:
        return None
    report = build_report(plan.run_dir)
    if plan.logger and plan.logger["wandb"]:
        log_report_to_wandb(report)
    return report


def _prepare_datamodule(dm: Any, fold: int | None, opts: KFoldOptions) -> None:
    """``set_fold`` + ``setup("fit")`` with k-fold's own bad-input messages.

    Raises:
        ValueError: ``dm`` lacks ``set_fold``/``setup`` (not built on ``ClassificationDataModule``),
            or a class has fewer training samples than ``num_folds`` stratified folds need.
    """
    needs = ("set_fold", "setup") if fold is not None else ("setup",)
    check_contract(dm, IndexedDataModule, needs, role="data", user="lit-recipes kfold")  # the CLI: one line, rc 2
    try:
        if fold is not None:
            dm.set_fold(fold, opts.num_folds, stratified=opts.stratified)
        dm.setup("fit")
    except FoldTooSmallError as err:
        raise ValueError(_explain_fold_error(err, dm, opts)) from None


def _explain_fold_error(err: FoldTooSmallError, dm: Any, opts: KFoldOptions) -> str:
    """The too-small-class message in k-fold's terms, naming the class by its name."""
    cls, count = err.class_index, err.count
    try:
        cls_name = dm.class_names[cls]
    except Exception:  # noqa: BLE001 - the message still names the index
        cls_name = str(cls)
    return (
        f"kfold.num_folds {opts.num_folds} is larger than the {count} training samples of class "
        f"{cls_name!r} (index {cls}); stratified folds need at least num_folds samples per class: "
        "use fewer folds or --kfold.stratified false"
    )


def _has_test_split(dm: Any) -> bool:
    """Whether ``dm`` builds a test loader (no test split: no test metrics, no fold ensemble)."""
    try:
        dm.test_dataloader()
    except (ValueError, NotImplementedError, AttributeError):
        return False
    return True


def _run_fold(plan: Plan, fold: int) -> None:
    """Build fold ``fold`` afresh from the config, train and score it, write its ``result.json``."""
    out_dir = plan.run_dir / f"fold_{fold}"
    k = plan.opts.num_folds
    rank_zero_info(f"k-fold: fold {fold + 1}/{k} -> {out_dir}")
    resume_from = _resume_checkpoint(out_dir, plan.opts)
    cli = KFoldCLI(args=_fold_args(plan, out_dir, f"fold{fold}", _fold_seed(plan, fold)))
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    _prepare_datamodule(dm, fold, plan.opts)
    _write_manifest(plan, list(dm.class_names))
    result = _train_and_score(trainer, model, dm, out_dir, use_best=True, resume_from=resume_from)
    result.update(
        fold=fold,
        num_folds=k,
        stratified=plan.opts.stratified,
        seed=_fold_seed(plan, fold),
        train_size=int(len(dm.train_indices)),
        val_size=int(len(dm.val_indices)),
    )
    _finish(trainer, out_dir, result, plan)
    del cli, trainer, model, dm
    _release_memory()


def _run_refit(plan: Plan) -> None:
    """Train once more on the whole training pool: the fold config with no validation split
    (``val_fraction`` 0, validation off, the last weights kept, callbacks that need validation such
    as EarlyStopping and GapMonitor left out), then test. A datamodule with an
    explicit validation source keeps it and the best checkpoint on it."""
    out_dir = plan.run_dir / "refit"
    rank_zero_info(f"k-fold: refit on the whole training pool -> {out_dir}")
    resume_from = _resume_checkpoint(out_dir, plan.opts)
    probe = KFoldCLI(args=_fold_args(plan, out_dir, "refit", plan.seed))
    _prepare_datamodule(probe.datamodule, None, plan.opts)
    explicit_val = getattr(probe.datamodule, "val_source", None) is not None
    finish_wandb(probe.trainer)
    del probe
    extra = []
    if not explicit_val:
        extra = [
            "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0",
            "--checkpoint.monitor=null",
            "--checkpoint.filename=refit-epoch{epoch:03d}",
        ]
    cli = KFoldCLI(args=_fold_args(plan, out_dir, "refit", plan.seed, extra))
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    if not explicit_val:
        dm.val_fraction = 0.0
        _drop_validation_callbacks(trainer)
    _prepare_datamodule(dm, None, plan.opts)
    _write_manifest(plan, list(dm.class_names))
    result = _train_and_score(trainer, model, dm, out_dir, use_best=explicit_val, resume_from=resume_from)
    result.update(refit=True, seed=plan.seed, train_size=int(len(dm.train_indices)))
    _finish(trainer, out_dir, result, plan)
    del cli, trainer, model, dm
    _release_memory()


def _drop_validation_callbacks(trainer) -> None:
    """The refit has no validation loop: remove the callbacks that need one (EarlyStopping,
    GapMonitor, and any callback whose class sets ``needs_validation = True``)."""
    from lightning.pytorch.callbacks import EarlyStopping

    needs_val: tuple[type, ...] = (EarlyStopping,)
    try:
        from lit_recipes.callbacks import GapMonitor

        needs_val += (GapMonitor,)
    except ImportError:  # pragma: no cover - older checkouts without it
        pass
    dropped = [cb for cb in trainer.callbacks if isinstance(cb, needs_val) or getattr(cb, "needs_validation", False)]
    if dropped:
        trainer.callbacks = [cb for cb in trainer.callbacks if cb not in dropped]
        names = ", ".join(sorted({type(cb).__name__ for cb in dropped}))
        rank_zero_info(f"k-fold: the refit has no validation split; not using {names}")


def _train_and_score(
    trainer, model, dm, out_dir: Path, use_best: bool, resume_from: Path | None = None
) -> dict[str, Any]:
    """Fit (resuming from ``resume_from``), validate and test the best checkpoint (``use_best``) or the
    last weights, save the test-split probabilities; the fold's result without its identity fields."""
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=resume_from)
    fit_seconds = time.perf_counter() - t0
    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if (use_best and ckpt_cb is not None) else ""
    ckpt_path = "best" if best else None
    metrics: dict[str, float] = {}
    if use_best:
        if not best:
            rank_zero_warn(f"k-fold: {out_dir}: no best checkpoint (no checkpoint callback?); using the last weights")
        for row in trainer.validate(model, datamodule=dm, ckpt_path=ckpt_path, verbose=False):
            metrics.update({k: float(v) for k, v in row.items()})
    probs = None
    if _has_test_split(dm):
        for row in trainer.test(model, datamodule=dm, ckpt_path=ckpt_path, verbose=False):
            metrics.update({k: float(v) for k, v in row.items()})
        if best:  # score with exactly the weights of the best checkpoint
            state = load_checkpoint(best, map_location="cpu")["state_dict"]  # weights_only=True
            model.load_state_dict(state)
        probs = test_probabilities(trainer, model, dm)
    else:
        rank_zero_warn(f"k-fold: {type(dm).__name__} has no test split: no test metrics and no fold ensemble")
    if trainer.is_global_zero and probs is not None:
        _save_npz(out_dir / PROBS, **probs)
    return {
        "metrics": dict(sorted(metrics.items())),
        "best_model_path": str(best) if best else None,
        "best_model_score": float(ckpt_cb.best_model_score) if best and ckpt_cb.best_model_score is not None else None,
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "fit_seconds": round(fit_seconds, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "world_size": int(trainer.world_size),
        "test_probs": PROBS if probs is not None else None,
        **({"resumed_from": str(resume_from)} if resume_from is not None else {}),
    }


def _finish(trainer, out_dir: Path, result: dict[str, Any], plan: Plan) -> None:
    """Write ``result.json`` (rank 0; the "done" marker) and close the fold's W&B run."""
    result["fingerprint"] = plan.fingerprint
    if trainer.is_global_zero:
        save_json(out_dir / RESULT, result)  # last: the fold's "done" marker
    finish_wandb(trainer)  # end this fold's W&B run so the next fold's logger starts its own


def _release_memory() -> None:
    """Free the finished fold's objects (and cached CUDA memory) before the next fold is built."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.no_grad()
def test_probabilities(trainer, model, dm) -> dict[str, np.ndarray]:
    """Softmax outputs of ``model`` on the whole test split (``predict_logits``: TTA included).

    Under DDP each rank scores its strided shard and the shards are gathered
    (:func:`~lit_recipes.plumbing.gather_by_index`, on every rank), so the result covers every test
    sample once.

    Returns:
        ``{"probs": (N, C) float32, "targets": (N,) int64, "indices": (N,) int64}`` sorted by index.
    """
    world, rank = int(trainer.world_size), int(trainer.global_rank)
    device = trainer.strategy.root_device
    model.to(device)
    probs, targets, indices = [], [], []
    with eval_mode(model):
        for images, y, idx in dm.eval_dataloader("test", rank=rank, world_size=world):
            probs.append(torch.softmax(model.predict_logits(images.to(device)).float(), dim=-1))
            targets.append(y.to(device))
            indices.append(idx.to(device))
    n_classes = int(getattr(model, "num_classes", probs[0].shape[1] if probs else 0))
    p = torch.cat(probs) if probs else torch.empty(0, n_classes, device=device)
    t = torch.cat(targets) if targets else torch.empty(0, dtype=torch.long, device=device)
    i = torch.cat(indices) if indices else torch.empty(0, dtype=torch.long, device=device)
    if world > 1:
        n_total = len(dm.eval_dataloader("test").dataset)
        i, p, t = gather_by_index(trainer.strategy, i, p, t, total=n_total)
    order = torch.argsort(i)
    return {
        "probs": p[order].cpu().numpy().astype(np.float32),
        "targets": t[order].cpu().numpy().astype(np.int64),
        "indices": i[order].cpu().numpy().astype(np.int64),
    }
