"""K-fold cross-validation: ``lit-recipes kfold`` and ``lit-recipes kfold-report``.

For each fold the driver builds everything again from the config (:class:`KFoldCLI`, a
:class:`~lit_recipes.commands.fit.LitRecipesCLI` with a ``kfold`` group): a fresh seeded model, a fresh
datamodule and a fresh Trainer with fresh callbacks, so nothing leaks from one fold into the next.
It then calls ``datamodule.set_fold(i, k, stratified)`` (scikit-learn's shuffled, seeded
``StratifiedKFold`` / ``KFold`` of the training pool; the test split never enters any fold), fits,
validates and tests the best checkpoint, and scores the test split once more to keep the fold's
softmax outputs. Each fold writes under ``<run dir>/fold_<i>/``::

    <run dir>/kfold.json            manifest: config fingerprint, k, stratified, logger
    <run dir>/config.yaml           the resolved config
    <run dir>/fold_<i>/checkpoints/ the fold's checkpoints
    <run dir>/fold_<i>/test_probs.npz   test-split softmax outputs, targets, indices
    <run dir>/fold_<i>/result.json  the fold's val/test metrics: written last, atomically = "done"
    <run dir>/refit/...             the optional refit on the whole training pool
    <run dir>/kfold_results.json    the report: per fold, mean, sample std (ddof=1), ensemble
    <run dir>/kfold_metrics.png     box + strip plot of the fold metrics

Running the same command again skips the folds that have a ``result.json`` and continues an
unfinished one from its ``last.ckpt`` (``--kfold.resume restart``: redo it from scratch).
``--kfold.fold i`` runs one fold only (a SLURM array task), and ``lit-recipes kfold-report DIR``
aggregates what the folds wrote, without the models.

Seeds: every fold is seeded with ``seed_everything`` of the config (the same seed for every fold,
so the fold-to-fold spread reflects the data split only); ``--kfold.vary_seed true`` seeds fold
``i`` with ``seed + i`` instead. The folds themselves come from the datamodule's ``seed``.

Example:
    >>> from lit_recipes.commands.kfold import run_kfold
    >>> report = run_kfold(  # doctest: +SKIP
    ...     ["--config", "lit_recipes/configs/digits_lenet.yaml", "--trainer.logger=false"], num_folds=5
    ... )
    >>> report["summary"]["test/acc"]["mean"], report["ensemble"]["test/acc"]  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import inspect
import json
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from lit_recipes.artifacts import save_figure, save_json
from lit_recipes.commands.fit import LitRecipesCLI

MANIFEST = "kfold.json"
RESULT = "result.json"
PROBS = "test_probs.npz"
REPORT_JSON = "kfold_results.json"
REPORT_PNG = "kfold_metrics.png"
STD_NOTE = "sample standard deviation over folds (ddof=1)"

# keys of the resolved config that do not change what a fold computes (where it writes, how it
# logs, which fold this process runs) and so stay out of the config fingerprint
_NOT_FINGERPRINTED = (
    "config",
    "kfold",
    "test_after_fit",
    "trainer.logger",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "checkpoint.dirpath",
    "progress_bar",
)
_FINGERPRINTED_KFOLD_KEYS = ("num_folds", "stratified", "vary_seed")


@dataclass
class KFoldOptions:
    """The ``kfold`` group of ``lit-recipes kfold`` (``--kfold.num_folds 5`` or a ``kfold:`` YAML section).

    Args:
        num_folds: number of folds ``k`` (>= 2).
        fold: run this fold only (``0 .. k-1``, e.g. ``$SLURM_ARRAY_TASK_ID``) or ``"refit"`` (the refit only);
            ``None`` runs every fold, then the refit (if asked) and the report.
        stratified: stratified folds (scikit-learn ``StratifiedKFold``); ``false``: plain ``KFold``.
        refit: after the folds, train once more on the whole training pool (no validation split,
            the last weights) and report its test accuracy beside the fold ensemble.
        name: experiment name: the run directory's name and the W&B group. Default: the newest
            ``<config stem>[-<timestamp>]`` experiment of the same config (resumed), else a fresh
            ``<config stem>-<YYYYmmdd-HHMMSS>``; with ``fold`` set, the plain config stem.
        run_dir: the run directory. Default: ``<trainer.default_root_dir or runs>/kfold/<name>``.
        overwrite: delete an existing k-fold run in ``run_dir`` first instead of resuming it.
        vary_seed: seed fold ``i`` with ``seed_everything + i`` (default: the same seed for all).
        resume: what to do with a fold that was interrupted (no ``result.json``): ``last`` continues it
            from its ``checkpoints/last.ckpt`` (model, optimizer, LR schedule, callbacks, best-checkpoint
            tracking; the data order after the resume point is drawn afresh, so the numbers are close to,
            not bit-identical with, an uninterrupted run); ``restart`` redoes it from scratch
            (bit-identical on CPU). A fold without a readable ``last.ckpt`` is always redone.
    """

    num_folds: int = 5
    fold: int | Literal["refit"] | None = None
    stratified: bool = True
    refit: bool = False
    name: str | None = None
    run_dir: str | None = None
    overwrite: bool = False
    vary_seed: bool = False
    resume: Literal["last", "restart"] = "last"

    def __post_init__(self) -> None:
        if self.resume not in ("last", "restart"):
            raise ValueError(f"kfold.resume must be 'last' or 'restart', got {self.resume!r}")
        if isinstance(self.num_folds, bool) or not isinstance(self.num_folds, int) or self.num_folds < 2:
            raise ValueError(f"kfold.num_folds must be an integer >= 2, got {self.num_folds!r}")
        if self.fold is not None and self.fold != "refit":
            if isinstance(self.fold, bool) or not isinstance(self.fold, int) or not 0 <= self.fold < self.num_folds:
                raise ValueError(f"kfold.fold must be in [0, {self.num_folds}) or 'refit', got {self.fold!r}")
        if self.overwrite and self.fold is not None:
            raise ValueError(
                "kfold.overwrite deletes the whole run and cannot be combined with kfold.fold; "
                "delete the run directory once before launching the fold jobs"
            )
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            raise ValueError(f"kfold.name must be a plain directory name, got {self.name!r}")


class KFoldCLI(LitRecipesCLI):
    """:class:`~lit_recipes.commands.fit.LitRecipesCLI` plus the ``kfold`` group (:class:`KFoldOptions`).

    ``parse_only=True`` parses and validates the arguments without building anything.
    """

    def __init__(self, *args: Any, parse_only: bool = False, **kwargs: Any) -> None:
        self._parse_only = parse_only
        kwargs.setdefault("run", False)
        argv, sys.argv = sys.argv, sys.argv[:1]  # the args come explicitly (pytest, notebooks have their own)
        try:
            super().__init__(*args, **kwargs)
        finally:
            sys.argv = argv

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_dataclass_arguments(KFoldOptions, "kfold")

    def instantiate_classes(self) -> None:
        if not self._parse_only:
            super().instantiate_classes()


# ---------------------------------------------------------------------------------- the driver
@dataclass
class _Plan:
    args: list[str]
    opts: KFoldOptions
    name: str
    run_dir: Path
    fingerprint: str
    config_yaml: str
    seed: Any
    logger: dict[str, Any] | None  # {"class_path", "wandb": bool, "init_args": {...}} or None
    has_val_fraction: bool = False


def run_kfold(args: Sequence[str] = (), **options: Any) -> dict[str, Any] | None:
    """Run (or resume) a k-fold cross-validation; the Python API behind ``lit-recipes kfold``.

    Args:
        args: ``fit``-style arguments: ``--config``, ``--model.*``, ``--data.*``, ``--trainer.*``,
            ``--kfold.*``.
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


def _plan(args: list[str], options: dict[str, Any]) -> _Plan:
    unknown = set(options) - set(KFoldOptions.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown k-fold option(s): {', '.join(sorted(unknown))}")
    args = args + [f"--kfold.{k}={_arg_value(v)}" for k, v in options.items()]
    parsed = KFoldCLI(args=args, parse_only=True)
    cfg = parsed.config
    opts = KFoldOptions(**{k: cfg.kfold[k] for k in KFoldOptions.__dataclass_fields__})
    configs = [str(p) for p in (cfg.get("config") or [])]
    stem = Path(configs[-1]).stem if configs else "kfold"
    root = cfg.trainer.get("default_root_dir") or "runs"
    config_yaml = parsed.parser.dump(cfg)
    if opts.name or opts.run_dir:
        name = opts.name or stem
    else:
        name = _experiment_name(Path(root) / "kfold", stem, config_fingerprint(config_yaml), opts)
    run_dir = Path(opts.run_dir) if opts.run_dir else Path(root) / "kfold" / name
    seed = cfg.get("seed_everything")
    if seed is True:
        rank_zero_warn("k-fold: seed_everything is true (a random seed): the folds are not reproducible")
    return _Plan(
        args=args,
        opts=opts,
        name=name,
        run_dir=run_dir,
        fingerprint=config_fingerprint(config_yaml),
        config_yaml=config_yaml,
        seed=seed,
        logger=_logger_spec(cfg.trainer.get("logger")),
        has_val_fraction="val_fraction" in (cfg.data.get("init_args") or {}),
    )


def _arg_value(value: Any) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, bool) else str(value)


def config_fingerprint(config_yaml: str) -> str:
    """A short hash of the resolved config, without the keys that only say where and how a run
    writes (``trainer.logger``, ``trainer.default_root_dir``, ``checkpoint.dirpath`` ...) and
    without the per-process ``kfold`` keys (``fold``, ``refit``, ``name`` ...); ``num_folds``,
    ``stratified`` and ``vary_seed`` are part of it."""
    cfg = yaml.safe_load(config_yaml) or {}
    kfold = {k: (cfg.get("kfold") or {}).get(k) for k in _FINGERPRINTED_KFOLD_KEYS}
    for key in _NOT_FINGERPRINTED:
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    cfg["kfold"] = kfold
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _logger_spec(logger_cfg: Any) -> dict[str, Any] | None:
    if logger_cfg is None or isinstance(logger_cfg, bool) or isinstance(logger_cfg, list):
        if isinstance(logger_cfg, list):
            rank_zero_warn("k-fold: several loggers configured; their directories are not moved per fold")
        return None
    class_path = logger_cfg.get("class_path") if hasattr(logger_cfg, "get") else None
    if not class_path:
        return None
    init_args = logger_cfg.get("init_args")
    init_args = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args or {})
    module_name, _, cls_name = class_path.rpartition(".")
    try:
        cls = getattr(__import__(module_name, fromlist=[cls_name]), cls_name)
        from lightning.pytorch.loggers import WandbLogger

        is_wandb = issubclass(cls, WandbLogger)
    except (ImportError, AttributeError):
        is_wandb = False
    return {"class_path": class_path, "wandb": is_wandb, "init_args": init_args}


def _experiment_name(kfold_root: Path, stem: str, fingerprint: str, opts: KFoldOptions) -> str:
    """The name of a k-fold experiment without ``--kfold.name``: the newest ``<stem>[-<timestamp>]``
    run of the same config (resumed), else a fresh ``<stem>-<YYYYmmdd-HHMMSS>``. Jobs that run one
    fold each (``--kfold.fold``) share the plain ``<stem>`` so they meet in one folder."""
    runs = [kfold_root / stem] + sorted(kfold_root.glob(f"{stem}-2*"), reverse=True)
    if not opts.overwrite:
        for run in runs:
            try:
                same = json.loads((run / MANIFEST).read_text()).get("fingerprint") == fingerprint
            except (OSError, json.JSONDecodeError):
                continue
            if same:
                rank_zero_info(f"k-fold: resuming {run.name} (same config); a new experiment needs --kfold.name")
                return run.name
    if opts.fold is not None:
        return stem
    name = f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    while (kfold_root / name).exists():  # two experiments started within a second
        name += "x"
    rank_zero_info(f"k-fold: new experiment {name} (resume it with --kfold.name {name})")
    return name


def _fold_args(plan: _Plan, out_dir: Path, job: str, seed: Any, extra: Sequence[str] = ()) -> list[str]:
    args = [*plan.args, f"--trainer.default_root_dir={out_dir}", f"--checkpoint.dirpath={out_dir / 'checkpoints'}"]
    if plan.has_val_fraction:  # the folds (and the refit) make their own split: none to build first
        args.append("--data.init_args.val_fraction=0")
    if seed is not None:
        args.append(f"--seed_everything={_arg_value(seed)}")
    if plan.logger:
        if "save_dir" in plan.logger["init_args"]:
            args.append(f"--trainer.logger.init_args.save_dir={out_dir}")
        if plan.logger["wandb"]:
            args += [
                f"--trainer.logger.init_args.group={plan.name}",
                f"--trainer.logger.init_args.job_type={job}",
                f"--trainer.logger.init_args.name={plan.name}-{job}",
            ]
    return [*args, *extra]


def _fold_seed(plan: _Plan, fold: int) -> Any:
    seed = plan.seed
    if plan.opts.vary_seed and isinstance(seed, int) and not isinstance(seed, bool):
        return seed + fold
    return seed


def _check_manifest(plan: _Plan) -> None:
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


def _write_manifest(plan: _Plan, class_names: list[str]) -> None:
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
    (plan.run_dir / "config.yaml").write_text(plan.config_yaml)
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
            ckpt = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
            epoch, step = int(ckpt["epoch"]), int(ckpt["global_step"])
            del ckpt
        except Exception as err:  # a truncated or foreign file: start the fold again
            rank_zero_warn(f"k-fold: cannot resume from {last} ({type(err).__name__}: {err}); redoing the fold")
        else:
            rank_zero_info(f"k-fold: {out_dir} is unfinished, resuming from {last} (epoch {epoch}, step {step})")
            return last
    _clean_partial(out_dir)
    return None


def _prepare_datamodule(dm: Any, fold: int | None, opts: KFoldOptions) -> None:
    """``set_fold`` + ``setup("fit")`` with k-fold's own bad-input messages."""
    set_fold = getattr(dm, "set_fold", None)
    if fold is not None and not callable(set_fold):
        raise ValueError(
            f"data: {type(dm).__name__} has no set_fold(fold, num_folds); k-fold needs a datamodule "
            "built on lit_recipes.datamodules.ClassificationDataModule"
        )
    try:
        if fold is not None:
            if "stratified" in inspect.signature(set_fold).parameters:
                set_fold(fold, opts.num_folds, stratified=opts.stratified)
            elif opts.stratified:
                set_fold(fold, opts.num_folds)
            else:
                raise ValueError(
                    f"data: {type(dm).__name__}.set_fold() takes no 'stratified'; use kfold.stratified: true"
                )
        dm.setup("fit")
    except ValueError as err:
        raise ValueError(_explain_fold_error(err, dm, opts)) from None


def _explain_fold_error(err: ValueError, dm: Any, opts: KFoldOptions) -> str:
    match = re.search(r"class (\d+)'s (\d+) samples", str(err))
    if not (opts.stratified and match):
        return str(err)
    cls, count = int(match.group(1)), int(match.group(2))
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
    try:
        dm.test_dataloader()
    except (ValueError, NotImplementedError, AttributeError):
        return False
    return True


def _run_fold(plan: _Plan, fold: int) -> None:
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


def _run_refit(plan: _Plan) -> None:
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
    _finish_wandb(probe.trainer)
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
            state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
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


def _finish(trainer, out_dir: Path, result: dict[str, Any], plan: _Plan) -> None:
    result["fingerprint"] = plan.fingerprint
    if trainer.is_global_zero:
        save_json(out_dir / RESULT, result)  # last: the fold's "done" marker
    _finish_wandb(trainer)


def _finish_wandb(trainer) -> None:
    """End this fold's W&B run so the next fold's logger starts its own (Lightning would reuse it)."""
    if "wandb" not in sys.modules or not trainer.is_global_zero:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish()


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


@torch.no_grad()
def test_probabilities(trainer, model, dm) -> dict[str, np.ndarray]:
    """Softmax outputs of ``model`` on the whole test split (``predict_logits``: TTA included).

    Under DDP each rank scores its strided shard and the shards are gathered
    (``trainer.strategy.all_gather``, on every rank), so the result covers every test sample once.

    Returns:
        ``{"probs": (N, C) float32, "targets": (N,) int64, "indices": (N,) int64}`` sorted by index.
    """
    world, rank = int(trainer.world_size), int(trainer.global_rank)
    device = trainer.strategy.root_device
    was_training = model.training
    model.to(device).eval()
    probs, targets, indices = [], [], []
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
        size = -(-n_total // world)
        pad = size - len(i)
        p = torch.cat([p, p.new_zeros(pad, p.shape[1])])
        t = torch.cat([t, t.new_full((pad,), -1)])
        i = torch.cat([i, i.new_full((pad,), -1)])
        p, t, i = (trainer.strategy.all_gather(x).reshape(-1, *x.shape[1:]) for x in (p, t, i))
        keep = i >= 0
        p, t, i = p[keep], t[keep], i[keep]
    order = torch.argsort(i)
    model.train(was_training)
    return {
        "probs": p[order].cpu().numpy().astype(np.float32),
        "targets": t[order].cpu().numpy().astype(np.int64),
        "indices": i[order].cpu().numpy().astype(np.int64),
    }


# ---------------------------------------------------------------------------------- the report
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
    manifest = json.loads(manifest_path.read_text())
    k = int(manifest["num_folds"])
    folds, missing = [], []
    for i in range(k):
        path = run_dir / f"fold_{i}" / RESULT
        if path.is_file():
            folds.append(json.loads(path.read_text()))
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
        refit_res = json.loads(refit_path.read_text())
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
    if wandb.run is not None:
        wandb.finish()
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
        run.finish()


# ---------------------------------------------------------------------------------- entry points
def kfold_main(argv: list[str]) -> int:
    """``lit-recipes kfold --config CFG [--kfold.num_folds 5] [--kfold.fold i] [--kfold.refit true] ...``"""
    report = run_kfold(argv)
    if report is not None:
        print_report(report)
    return 0


def report_main(argv: list[str]) -> int:
    """``lit-recipes kfold-report DIR``: aggregate the folds a (cluster-parallel) k-fold run wrote."""
    parser = argparse.ArgumentParser(
        prog="lit-recipes kfold-report",
        description="Aggregate a k-fold run directory: table, mean ± std, fold ensemble, plot.",
    )
    parser.add_argument("run_dir", help="the k-fold run directory (holds kfold.json and fold_<i>/)")
    parser.add_argument("--allow-partial", action="store_true", help="aggregate the folds that are done")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--no-wandb", action="store_true", help="do not log a W&B summary run")
    ns = parser.parse_args(argv)
    report = build_report(ns.run_dir, allow_partial=ns.allow_partial, plot=not ns.no_plot)
    if (report.get("logger") or {}).get("wandb") and not ns.no_wandb:
        log_report_to_wandb(report)
    print_report(report)
    return 0


__all__ = [
    "KFoldCLI",
    "KFoldOptions",
    "build_report",
    "config_fingerprint",
    "kfold_main",
    "log_report_to_wandb",
    "plot_report",
    "print_report",
    "report_main",
    "report_table",
    "run_kfold",
    "test_probabilities",
]
