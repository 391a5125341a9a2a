"""The ``kfold`` option group and the plan of a k-fold run: :class:`KFoldOptions`, :class:`KFoldCLI`
(the ``fit`` CLI plus the group), the config fingerprint, the experiment name and each fold's
arguments. Nothing here trains."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_recipes.commands.fit import LitRecipesCLI
from lit_recipes.commands.kfold.plan import KFoldOptions, Plan
from lit_recipes.commands.kfold.rundir import MANIFEST
from lit_recipes.plumbing import swapped_argv

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


class KFoldCLI(LitRecipesCLI):
    """:class:`~lit_recipes.commands.fit.LitRecipesCLI` plus the ``kfold`` group (:class:`KFoldOptions`).

    ``parse_only=True`` parses and validates the arguments without building anything.
    """

    def __init__(self, *args: Any, parse_only: bool = False, **kwargs: Any) -> None:
        self._parse_only = parse_only
        kwargs.setdefault("run", False)
        with swapped_argv():  # the args come explicitly (pytest, notebooks have their own)
            super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_dataclass_arguments(KFoldOptions, "kfold")

    def instantiate_classes(self) -> None:
        if not self._parse_only:
            super().instantiate_classes()


def _plan(args: list[str], options: dict[str, Any]) -> Plan:
    """Parse ``args`` (+ ``options`` as ``--kfold.*``) without building anything; name the run."""
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
        name = experiment_name(Path(root) / "kfold", stem, config_fingerprint(config_yaml), opts)
    run_dir = Path(opts.run_dir) if opts.run_dir else Path(root) / "kfold" / name
    seed = cfg.get("seed_everything")
    if seed is True:
        rank_zero_warn("k-fold: seed_everything is true (a random seed): the folds are not reproducible")
    return Plan(
        args=args,
        opts=opts,
        name=name,
        run_dir=run_dir,
        fingerprint=config_fingerprint(config_yaml),
        config_yaml=config_yaml,
        seed=seed,
        logger=logger_spec(cfg.trainer.get("logger")),
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


def logger_spec(logger_cfg: Any) -> dict[str, Any] | None:
    """The configured ``trainer.logger`` as ``{"class_path", "wandb": is it a WandbLogger, "init_args"}``;
    ``None`` for no logger, ``true``/``false`` or a list of loggers (k-fold and search move one logger per fold)."""
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


def experiment_name(kfold_root: Path, stem: str, fingerprint: str, opts: KFoldOptions) -> str:
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


def _fold_args(plan: Plan, out_dir: Path, job: str, seed: Any, extra: Sequence[str] = ()) -> list[str]:
    """The arguments of one fold's (or the refit's) CLI: its folders, seed and W&B run names."""
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


def _fold_seed(plan: Plan, fold: int) -> Any:
    """``seed_everything`` of fold ``fold``: the config's seed, ``+ fold`` with ``kfold.vary_seed``."""
    seed = plan.seed
    if plan.opts.vary_seed and isinstance(seed, int) and not isinstance(seed, bool):
        return seed + fold
    return seed
