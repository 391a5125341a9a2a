"""``lit-recipes``: a LightningCLI for fit/validate/test/predict plus the recipe commands.

Usage::

    lit-recipes fit --config lit_recipes/configs/digits_lenet.yaml
    lit-recipes fit --config my.yaml --print_config
    lit-recipes export runs/lit-recipes/<run>/checkpoints/last.ckpt model_out/
    lit-recipes lr-find | sanity | kfold | kfold-report | stats | bench-data ...

The recipe commands take the same ``--config`` files as ``fit``; each lives in its own module
(listed in :data:`COMMANDS`) and builds its objects through :func:`build_cli`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lit_recipes.artifacts import run_dir, save_json
from lit_recipes.datamodules.base import ClassificationDataModule
from lit_recipes.module import ClassifierModule, export_state

# name -> "module:function(argv) -> int"; the recipe commands that are not Trainer methods
COMMANDS: dict[str, str] = {
    "export": "lit_recipes.cli:export_main",
    "lr-find": "lit_recipes.tuning:lr_find_main",
    "sanity": "lit_recipes.sanity:sanity_main",
    "kfold": "lit_recipes.kfold:kfold_main",
    "kfold-report": "lit_recipes.kfold:report_main",
    "stats": "lit_recipes.datatools:stats_main",
    "bench-data": "lit_recipes.datatools:bench_data_main",
}


class RunDirSaveConfig(SaveConfigCallback):
    """Save the resolved config as ``config.yaml`` in the run directory (never over another run's),
    and log it to the experiment's hyperparameters."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            path = run_dir(trainer) / self.config_filename
            self.parser.save(self.config, str(path), overwrite=True, multifile=False)
            if trainer.logger is not None:
                cfg = self.parser.dump(self.config)
                trainer.logger.log_hyperparams({"config": cfg})
        self.already_saved = True


class LitRecipesCLI(LightningCLI):
    """LightningCLI with lit_recipes' defaults: W&B logger (offline without a key), checkpointing
    on ``val/acc`` with ``last.ckpt``, a progress bar refreshed every 10 steps (``--progress_bar.*``;
    each refresh reads the logged values back from the device), seed 42, and
    ``data.num_classes``/``in_channels`` linked to the model."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", ClassifierModule)
        kwargs.setdefault("datamodule_class", ClassificationDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_callback", RunDirSaveConfig)
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"} if _has_omegaconf() else {})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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
                    "class_path": "lit_recipes.tracking.WandbLogger",
                    "init_args": {"project": "lit-recipes", "save_dir": "runs"},
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

    def instantiate_trainer(self, **kwargs: Any):
        trainer_cfg = self._get(self.config_init, "trainer", default={})
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
            keys = [c for c in self._parser(self.subcommand).callback_keys if c not in drop]
            extra = [self._get(self.config_init, c) for c in keys]
            return self._instantiate_trainer({**trainer_cfg, **kwargs}, extra)
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        cfg = self.config.get("fit", self.config)
        if cfg.get("test_after_fit"):
            has_best = self.trainer.checkpoint_callback is not None and self.trainer.checkpoint_callback.best_model_path
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if has_best else None)


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
    saved, sys.argv = sys.argv, sys.argv[:1]  # args are explicit; don't let LightningCLI look at sys.argv
    try:
        return LitRecipesCLI(args=args, **kwargs)
    finally:
        sys.argv = saved


# ---------------------------------------------------------------------------------- export
def export_model(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``model.pt`` (a plain state_dict) and ``model.json`` (name and arguments) to ``out_dir``.

    Load them again without Lightning::

        spec = json.load(open("out/model.json"))
        net = create_model(spec["model"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                           **spec["model_kwargs"]); net.load_state_dict(torch.load("out/model.pt"))
    """
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot create export directory {out_dir}: {err.strerror}") from None
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"export directory is not writable: {out_dir}")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    hparams = ckpt.get("hyper_parameters", {})
    if not isinstance(hparams.get("model"), str):
        raise ValueError(f"{ckpt_path}: the checkpoint's model is not a registry name; export its state_dict by hand")
    module = ClassifierModule(
        model=hparams["model"],
        num_classes=hparams["num_classes"],
        in_channels=hparams["in_channels"],
        model_kwargs=hparams.get("model_kwargs"),
        dropout=hparams.get("dropout", 0.0),
    )
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    module.model.load_state_dict(state)
    state, spec = export_state(module)
    from lit_recipes.exported import checkpoint_spec

    spec = {**spec, **checkpoint_spec(ckpt, ckpt_path)}  # + class names, input size, mean/std, eval transform
    weights = out_dir / "model.pt"
    tmp = out_dir / ".model.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, weights)
    spec_path = save_json(out_dir / "model.json", spec)
    return weights, spec_path


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lit-recipes export", description="Export a checkpoint's model weights.")
    parser.add_argument("checkpoint", help="a .ckpt written by lit-recipes fit")
    parser.add_argument("out_dir", help="folder for model.pt and model.json")
    ns = parser.parse_args(argv)
    weights, spec = export_model(ns.checkpoint, ns.out_dir)
    sys.stdout.write(f"wrote {weights} and {spec}\n")
    return 0


# ---------------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lit-recipes`` console script."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        module_name, fn_name = COMMANDS[argv[0]].split(":")
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError):
            sys.stderr.write(f"lit-recipes: the {argv[0]!r} command is not available in this version\n")
            return 2
        return _run_cleanly(fn, argv[1:])
    # from the command line, LightningCLI reads sys.argv itself: Lightning's DDP launcher re-runs the
    # script with the same sys.argv in each new process, so it must stay intact
    return _run_cleanly(lambda a: _run_lightning_cli(None if from_command_line else a), argv)


def _run_lightning_cli(argv: list[str] | None) -> int:
    cli = LitRecipesCLI(args=argv)
    finish_wandb(getattr(cli, "trainer", None))
    return 0


def finish_wandb(trainer) -> None:
    """Close the W&B run of ``trainer`` (writes the summary; offline runs become syncable)."""
    if trainer is None or not trainer.is_global_zero:
        return
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


def _run_cleanly(fn, argv: list[str]) -> int:
    """Run a command; a bad-input error becomes one clear line on stderr and exit status 2."""
    debug = os.environ.get("LIT_RECIPES_DEBUG")
    try:
        return int(fn(argv) or 0)
    except (ValueError, FileNotFoundError, PermissionError, KeyError) as err:
        if debug:
            raise
        sys.stderr.write(f"lit-recipes: error: {err}\n")
        return 2


__all__ = ["COMMANDS", "LitRecipesCLI", "build_cli", "export_model", "main"]


if __name__ == "__main__":
    sys.exit(main())
