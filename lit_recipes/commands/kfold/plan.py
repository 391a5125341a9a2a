"""What one k-fold run is: its options (the ``kfold`` group of ``lit-recipes kfold``) and the plan
every fold shares (:mod:`.options` decides it once from the parsed arguments; :mod:`.rundir` and
:mod:`.runner` read it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


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
            from its ``checkpoints/last.ckpt`` (the end of its last finished epoch: model, optimizer, LR
            schedule, callbacks, best-checkpoint tracking and the random-number state, so on CPU it ends
            like an uninterrupted run); ``restart`` redoes it from scratch. A fold without a readable
            ``last.ckpt`` is always redone.
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


@dataclass
class Plan:
    """What every fold of one k-fold run shares, decided once from the parsed arguments."""

    args: list[str]
    opts: KFoldOptions
    name: str
    run_dir: Path
    fingerprint: str
    config_yaml: str
    seed: Any
    logger: dict[str, Any] | None  # {"class_path", "wandb": bool, "init_args": {...}} or None
    has_val_fraction: bool = False


__all__ = ["KFoldOptions", "Plan"]
