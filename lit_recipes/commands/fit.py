"""``lit-recipes fit | validate | test | predict``: the LightningCLI with lit_recipes' defaults.

Usage::

    lit-recipes fit --config lit_recipes/configs/digits_lenet.yaml
    lit-recipes fit --config my.yaml --print_config
    lit-recipes test --config my.yaml --ckpt_path runs/digits_lenet/<run>/checkpoints/last.ckpt

:func:`build_cli` builds model, datamodule and Trainer from a ``fit``-style argument list without
running anything; the recipe commands (lr-find, sanity, kfold, stats, ...) use it. Each command
line is dispatched by :mod:`lit_recipes.commands.main`.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lit_recipes import lightning_compat
from lit_recipes.artifacts import run_dir, save_text, set_run_dir, unique_path
from lit_recipes.checkpoints import (
    SPECIAL,
    check_architecture,
    check_state_dict,
    install_checkpoint_io,
    load_checkpoint,
)
from lit_recipes.commands.run_folder import RUN_FOLDER_ENV, RunFolders, config_files, recipe_name
from lit_recipes.datamodules.base import ClassificationDataModule
from lit_recipes.errors import BadInput, ConfigError, check_yaml_files, debug_enabled, shorten_parser_error
from lit_recipes.module import ClassifierModule
from lit_recipes.plumbing import finish_wandb, swapped_argv
from lit_recipes.resume import LastCheckpoint
from lit_recipes.tracking import ReleaseNotices, hold_notices, release_notices


class RunDirSaveConfig(SaveConfigCallback):
    """Save the resolved config as ``config.yaml`` in the run directory (never over another run's),
    and log it to the experiment's hyperparameters."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            path = unique_path(run_dir(trainer) / self.config_filename)  # a resumed run keeps the first one
            save_text(path, self.parser.dump(self.config))  # atomic; a full disk names the run folder
            if trainer.logger is not None:
                cfg = self.parser.dump(self.config)
                trainer.logger.log_hyperparams({"config": cfg})
        self.already_saved = True


class LitRecipesArgumentParser(LightningArgumentParser):
    """The CLI's parser: a parse error is one line naming the key (``--debug``: jsonargparse's full text)."""

    lit_top_level = False

    def error(self, message: str, ex: Exception | None = None):
        if self.lit_top_level and not debug_enabled():
            options = [s for a in self._actions for s in a.option_strings]
            sub = getattr(ex, "subcommand_parser", None)
            if sub is not None:
                options += [s for a in sub._actions for s in a.option_strings]
            text, hint = shorten_parser_error(message, options)
            raise ConfigError(text, hint) from None
        return super().error(message, ex)


def _yaml(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _sets_class(args: list[str], key: str, subcommand: str | None) -> bool:
    """Does the command line or a config file choose ``key``'s class (``class_path``)?"""
    for i, a in enumerate(args):
        value = None
        if a == f"--{key}" and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(f"--{key}="):
            value = a.split("=", 1)[1]
        elif a.split("=", 1)[0] == f"--{key}.class_path":
            return True
        if value is not None:
            if os.path.isfile(value):
                if "class_path" in _yaml(value):
                    return True
            elif not value.startswith("{") or "class_path" in value:
                return True
    for path in config_files(args):
        cfg = _yaml(path)
        for section in (cfg, cfg.get(subcommand) if subcommand else None):
            if isinstance(section, dict) and isinstance(section.get(key), dict) and "class_path" in section[key]:
                return True
    return False


class LitRecipesCLI(RunFolders, LightningCLI):
    """LightningCLI with lit_recipes' defaults: W&B logger (offline without a key), checkpointing
    on ``val/acc`` with ``last.ckpt``, a progress bar refreshed every 10 steps (``--progress_bar.*``;
    each refresh reads the logged values back from the device), seed 42, and
    ``data.num_classes``/``in_channels`` linked to the model."""

    def __init__(self, *args: Any, new_run_folder: bool = False, **kwargs: Any) -> None:
        # new_run_folder: the command line's fit/validate/test/predict get their own run folder
        # (runs/<recipe>/<stamp>-<id>, or a sub-folder of the checkpoint's run); build_cli keeps the
        # folders it is given (k-fold, lr-find, notebooks choose theirs)
        self._new_run_folder = new_run_folder
        self._ckpt: dict | None = None
        self._ckpt_path: str | None = None
        self._requested: dict[str, int] = {}
        self._wandb_id: str | None = None
        self.run_folder: Path | None = None  # the run's folder
        self.out_dir: Path | None = None  # where this command writes (the run folder or its sub-folder)
        self._created: list[Path] = []
        kwargs.setdefault("parser_class", LitRecipesArgumentParser)
        kwargs.setdefault("model_class", ClassifierModule)
        kwargs.setdefault("datamodule_class", ClassificationDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_callback", RunDirSaveConfig)
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"} if _has_omegaconf() else {})
        # "Seed set to 42", the W&B line, Lightning's device lines: held until the checks pass, so a
        # command that fails prints its error line first (released by ReleaseNotices, or here)
        hold_notices()
        ok = False
        try:
            super().__init__(*args, **kwargs)
            ok = True
        finally:
            release_notices(emit=ok and not getattr(self, "_parse_only", False))  # kfold/search's checks: quiet

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        parser.lit_top_level = True
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        raw = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        self._raw_args = raw
        check_yaml_files(config_files(raw))  # a YAML syntax error names its file
        subcommand = raw[0] if raw and not raw[0].startswith("-") else None
        parsers = [parser, *getattr(self, "_subcommand_parsers", {}).values()]
        for key in ("data", "model"):
            # a chosen class must not inherit the default class's init_args (jsonargparse carries the
            # ones both accept: the digits test_fraction 0.2 would silently hold out 20 % elsewhere)
            if _sets_class(raw, key, subcommand):
                for p in parsers:
                    try:
                        p.set_defaults({key: None})
                    except (KeyError, ValueError, TypeError):
                        pass
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before anything is built: one line naming the file for each fault.
        The checkpoint's hyperparameters never replace a configured model (the architecture is
        compared after instantiation); with no ``--config``/``--model`` they are used, as Lightning does."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        ckpt_path = self.config[sub].get("ckpt_path")
        if not ckpt_path or ckpt_path in SPECIAL:
            return
        self._ckpt_path = str(ckpt_path)
        self._ckpt = load_checkpoint(ckpt_path)
        configured = any(a in ("--config", "-c") or a.startswith(("--config=", "--model")) for a in self._raw_args)
        if not configured:
            from lightning.pytorch.utilities import rank_zero_info

            rank_zero_info(f"model: the hyperparameters saved in {ckpt_path} (no --config given)")
            super()._parse_ckpt_path()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # last.ckpt at every epoch end with the RNG states (Lightning's copies it only on an improvement)
        parser.add_lightning_class_args(LastCheckpoint, "checkpoint")
        parser.add_lightning_class_args(TQDMProgressBar, "progress_bar")
        parser.set_defaults(
            {
                "progress_bar.refresh_rate": 10,
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch:03d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "trainer.logger": {
                    # save_dir: the run folder (the CLI's), else trainer.default_root_dir, else runs
                    "class_path": "lit_recipes.tracking.WandbLogger",
                    "init_args": {"project": "lit-recipes", "save_dir": None},
                },
                "model": {"class_path": "lit_recipes.module.ClassifierModule"},
                "data": {"class_path": "lit_recipes.datamodules.DigitsDataModule"},
            }
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="after fit, test the best checkpoint on the test split",
        )
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_channels", "model.init_args.in_channels", apply_on="instantiate")

    def _check_ckpt_path(self) -> None:
        cfg = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        ckpt = cfg.get("ckpt_path") if hasattr(cfg, "get") else None
        if ckpt and ckpt not in ("last", "best", "hpc", "registry") and not Path(ckpt).is_file():
            raise FileNotFoundError(f"checkpoint not found: {ckpt}")

    def before_instantiate_classes(self) -> None:
        self._check_ckpt_path()
        cfg = self._cfg()
        init = cfg.get("model.init_args") if cfg.get("model") else None
        for key in ("num_classes", "in_channels"):
            value = init.get(key) if init is not None and hasattr(init, "get") else None
            explicit = any(key in a for a in self._raw_args) or any(
                key in str(_yaml(f).get("model", "")) for f in config_files(self._raw_args)
            )
            if value is not None and explicit:
                self._requested[key] = value
        self._choose_run_folder(cfg)
        self._point_loggers_at_run(cfg)

    def _cfg(self):
        return self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        data_values = {k: getattr(self.datamodule, k, None) for k in self._requested}
        for key, value in self._requested.items():
            if data_values[key] is not None and data_values[key] != value:
                raise BadInput(
                    f"model.init_args.{key} is {value} but the data has {data_values[key]} "
                    f"({type(self.datamodule).__name__})",
                    f"leave model.init_args.{key} out: it is taken from the data",
                )
        if self._ckpt is not None:
            hparams = dict(getattr(self.model, "hparams", {}) or {})
            check_architecture(self._ckpt, self._ckpt_path, hparams)
            check_state_dict(self._ckpt, self._ckpt_path, self.model)

    def instantiate_trainer(self, **kwargs: Any):
        trainer_cfg = lightning_compat.cli_config_value(self, self.config_init, "trainer", default={})
        drop = set()
        if trainer_cfg.get("enable_checkpointing") is False or trainer_cfg.get("fast_dev_run"):
            # `--trainer.enable_checkpointing=false` drops the default ModelCheckpoint instead of failing
            drop.add("checkpoint")
        given = trainer_cfg.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        defaults = self.trainer_defaults.get("callbacks") or []
        defaults = defaults if isinstance(defaults, list) else [defaults]
        if trainer_cfg.get("enable_progress_bar") is False:
            # `--trainer.enable_progress_bar=false` wins over a bar in the config's callbacks (Lightning would refuse)
            drop.add("progress_bar")
            if any(isinstance(c, ProgressBar) for c in given):
                trainer_cfg = {**trainer_cfg, "callbacks": [c for c in given if not isinstance(c, ProgressBar)]}
        elif any(isinstance(c, ProgressBar) for c in given + defaults):
            drop.add("progress_bar")  # the config brings its own bar
        if drop:
            keys = [c for c in lightning_compat.cli_callback_keys(self, self.subcommand) if c not in drop]
            extra = [lightning_compat.cli_config_value(self, self.config_init, c) for c in keys]
            trainer = lightning_compat.instantiate_trainer(self, {**trainer_cfg, **kwargs}, extra)
        else:
            trainer = super().instantiate_trainer(**kwargs)
        install_checkpoint_io(trainer)  # atomic saves; every checkpoint Lightning reads is weights_only=True
        trainer.callbacks.append(ReleaseNotices())
        if self.out_dir is not None:
            set_run_dir(trainer, self.out_dir)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        self.preflight(subcommand)  # the held notices are printed once the Trainer's setup passed too
        super()._run_subcommand(subcommand)

    def preflight(self, subcommand: str) -> None:
        """What can be checked before the first step, each fault one line (never after the fit):
        ``test_after_fit`` needs a test split; the batch size fits in the training split."""
        dm = self.datamodule
        if subcommand != "fit" or dm is None:
            return
        cfg = self.config.get("fit", self.config)
        if cfg.get("test_after_fit") and not _has_test_split(dm):
            extra = " (data.init_args.test_fraction is 0)" if getattr(dm, "test_fraction", None) == 0 else ""
            raise BadInput(
                f"test_after_fit is true but {type(dm).__name__} has no test split{extra}",
                "give the data a test split (e.g. data.init_args.test_fraction: 0.2) or pass --test_after_fit false",
            )
        if isinstance(dm, ClassificationDataModule):
            dm._ensure_loaded()
            n = len(dm.train_indices) if dm.train_indices is not None else None
            if n is not None and isinstance(dm.batch_size, int) and dm.batch_size > n:
                raise BadInput(
                    f"data.init_args.batch_size {dm.batch_size} is larger than the training split ({n} samples)",
                    f"pass a batch size of at most {n}",
                )

    def after_fit(self) -> None:
        cfg = self.config.get("fit", self.config)
        if cfg.get("test_after_fit"):
            has_best = self.trainer.checkpoint_callback is not None and self.trainer.checkpoint_callback.best_model_path
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if has_best else None)


def _has_test_split(dm: Any) -> bool:
    """Whether ``dm`` can give a test loader (lit_recipes datamodules: a test source exists)."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    if isinstance(dm, ClassificationDataModule):
        dm._ensure_loaded()
        return dm.test_source is not None
    return is_overridden("test_dataloader", dm)


def _has_omegaconf() -> bool:
    try:
        importlib.import_module("omegaconf")
    except ImportError:
        return False
    return True


def build_cli(args: list[str], **kwargs: Any) -> LitRecipesCLI:
    """Parse a ``fit``-style argument list (``--config``, ``--model.*``, ``--trainer.*`` …) and
    instantiate model, datamodule and trainer without running anything (``cli.model``,
    ``cli.datamodule``, ``cli.trainer``). Each call builds fresh objects (k-fold relies on it)."""
    kwargs.setdefault("run", False)
    with swapped_argv():  # args are explicit; don't let LightningCLI look at sys.argv
        return LitRecipesCLI(args=args, **kwargs)


__all__ = ["RUN_FOLDER_ENV", "LitRecipesCLI", "build_cli", "config_files", "finish_wandb", "recipe_name"]


if __name__ == "__main__":
    # `python -m lit_recipes.commands.fit ...` (as `torchrun ... -m lit_recipes.commands.fit fit ...` runs it):
    # the whole command line goes to the dispatcher, lit_recipes.commands.main
    from lit_recipes.commands.main import main

    sys.exit(main())
