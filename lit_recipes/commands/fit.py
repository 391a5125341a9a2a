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
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lit_recipes.artifacts import (
    atomic_write,
    create_run_folder,
    find_run_folder,
    read_run_info,
    run_dir,
    save_json,
    set_run_dir,
    unique_path,
    unique_subfolder,
)
from lit_recipes.checkpoints import SPECIAL, check_architecture, check_state_dict, load_checkpoint
from lit_recipes.datamodules.base import ClassificationDataModule
from lit_recipes.errors import (
    BadInput,
    ConfigError,
    OverwriteRefused,
    check_yaml_files,
    debug_enabled,
    run_command,
    shorten_parser_error,
)
from lit_recipes.module import ClassifierModule, export_state

# name -> "module:function(argv) -> int"; the recipe commands that are not Trainer methods
COMMANDS: dict[str, str] = {
    "export": "lit_recipes.commands.fit:export_main",
    "lr-find": "lit_recipes.commands.lr_find:lr_find_main",
    "sanity": "lit_recipes.commands.sanity:sanity_main",
    "kfold": "lit_recipes.commands.kfold:kfold_main",
    "kfold-report": "lit_recipes.commands.kfold:report_main",
    "stats": "lit_recipes.commands.stats:stats_main",
    "bench-data": "lit_recipes.commands.stats:bench_data_main",
    "search": "lit_recipes.commands.search:search_main",
}


class RunDirSaveConfig(SaveConfigCallback):
    """Save the resolved config as ``config.yaml`` in the run directory (never over another run's),
    and log it to the experiment's hyperparameters."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            path = unique_path(run_dir(trainer) / self.config_filename)  # a resumed run keeps the first one
            self.parser.save(self.config, str(path), overwrite=True, multifile=False)
            if trainer.logger is not None:
                cfg = self.parser.dump(self.config)
                trainer.logger.log_hyperparams({"config": cfg})
        self.already_saved = True


RUNS_ROOT = "runs"
RUN_FOLDER_ENV = "LIT_RECIPES_RUN_FOLDER"  # the chosen folders, inherited by Lightning's DDP worker processes
DATA_DEFAULT = "lit_recipes.datamodules.DigitsDataModule"
MODEL_DEFAULT = "lit_recipes.module.ClassifierModule"


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


def _wait_for(marker: Path, timeout: float = 600.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if marker.is_file() and marker.read_text().strip():
            return marker.read_text().strip()
        time.sleep(0.2)
    raise TimeoutError(f"rank 0 did not choose a run folder within {timeout:g} s ({marker})")


def config_files(args: list[str]) -> list[str]:
    """The ``--config`` / ``-c`` files named in ``args``, in order."""
    out = []
    for i, a in enumerate(args):
        if a in ("--config", "-c") and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith("--config="):
            out.append(a.split("=", 1)[1])
    return out


def recipe_name(args: list[str], model: Any = None) -> str:
    """A run's recipe: the first ``--config`` file's stem, else the model's name, else ``lit-recipes``."""
    files = config_files(args)
    if files:
        return Path(files[0]).stem
    if isinstance(model, str) and model:
        return model
    return "lit-recipes"


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


class LitRecipesCLI(LightningCLI):
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
        super().__init__(*args, **kwargs)

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

    # ------------------------------------------------------------------------------ run folders
    def _choose_run_folder(self, cfg) -> None:
        """Pick this command's folder: a new ``<root>/<recipe>/<stamp>-<id>``; the checkpoint's run
        folder for a resumed ``fit``; a new sub-folder of it (``test``, ``test-2`` ...) for the
        other commands on a checkpoint. Sets ``trainer.default_root_dir`` and the checkpoint folder."""
        if not self._new_run_folder:
            return
        inherited = os.environ.get(RUN_FOLDER_ENV)
        elastic = os.environ.get("TORCHELASTIC_RUN_ID")  # torchrun started every rank at once
        marker = Path(tempfile.gettempdir()) / f"lit-recipes-run-{elastic}" if elastic else None
        if not inherited and marker is not None and int(os.environ.get("RANK", "0")) > 0:
            inherited = _wait_for(marker)
        if inherited:  # a DDP worker process re-running the command: rank 0 chose already
            run, out = inherited.split(os.pathsep)
            self.run_folder, self.out_dir = Path(run), Path(out)
        else:
            self._allocate(cfg)
            os.environ[RUN_FOLDER_ENV] = f"{self.run_folder}{os.pathsep}{self.out_dir}"
            if marker is not None:
                marker.write_text(os.environ[RUN_FOLDER_ENV])
        cfg["trainer.default_root_dir"] = str(self.out_dir)
        if self.subcommand == "fit" and cfg.get("checkpoint") is not None and not cfg.get("checkpoint.dirpath"):
            cfg["checkpoint.dirpath"] = str(self.run_folder / "checkpoints")

    def _allocate(self, cfg) -> None:
        root = cfg.get("trainer.default_root_dir") or RUNS_ROOT
        root_path = Path(root)
        if root_path.exists() and not root_path.is_dir():
            raise BadInput(f"trainer.default_root_dir is a file, not a folder ({root})")
        for parent in root_path.parents:
            if parent.exists() and not parent.is_dir():
                raise BadInput(f"trainer.default_root_dir lies under a regular file ({parent})")
        existing = find_run_folder(self._ckpt_path) if self._ckpt_path else None
        if existing is not None:
            info = read_run_info(existing)
            self.run_folder = existing
            if self.subcommand == "fit":  # a resume continues the run's folder and W&B run
                self.out_dir = existing
                self._wandb_id = info.get("id")
                import warnings

                # continuing the run's own checkpoint folder is the point of a resume
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
                info.setdefault("resumes", []).append(
                    {"at": time.strftime("%Y-%m-%d %H:%M:%S"), "ckpt_path": str(self._ckpt_path)}
                )
                save_json(existing / "run.json", info)
            else:
                self.out_dir = unique_subfolder(existing, str(self.subcommand))
                self._created.append(self.out_dir)
            return
        init = cfg.get("model.init_args") if cfg.get("model") else None
        model_name = init.get("model") if init is not None and hasattr(init, "get") else None
        recipe = recipe_name(self._raw_args, model_name)
        new_root = not root_path.exists()
        self.run_folder = self.out_dir = create_run_folder(root, recipe)
        self._created.append(self.run_folder)
        if new_root:
            self._created.append(root_path)
        self._wandb_id = self.run_folder.name.rsplit("-", 1)[-1]
        save_json(
            self.run_folder / "run.json",
            {
                "id": self._wandb_id,
                "recipe": recipe,
                "command": self.subcommand,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "config_files": config_files(self._raw_args),
                "ckpt_path": self._ckpt_path,
            },
        )

    def _point_loggers_at_run(self, cfg) -> None:
        """W&B writes under the run folder (or ``default_root_dir``) unless its ``save_dir`` is given;
        a new fit's W&B run id is the folder's id, a resumed fit continues the run's W&B id."""
        loggers = cfg.get("trainer.logger")
        specs = loggers if isinstance(loggers, list) else [loggers]
        for spec in specs:
            if not hasattr(spec, "get") or not str(spec.get("class_path", "")).endswith("WandbLogger"):
                continue
            init = spec.get("init_args")
            if init is None:
                continue
            if not init.get("save_dir"):
                init["save_dir"] = str(self.out_dir or cfg.get("trainer.default_root_dir") or RUNS_ROOT)
            wandb_id = getattr(self, "_wandb_id", None)
            if self.out_dir is not None and self.subcommand == "fit" and wandb_id and not init.get("id"):
                init["id"] = wandb_id
                if not init.get("name"):
                    init["name"] = f"{self.run_folder.parent.name}/{self.run_folder.name}"

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
            trainer = self._instantiate_trainer({**trainer_cfg, **kwargs}, extra)
        else:
            trainer = super().instantiate_trainer(**kwargs)
        if self.out_dir is not None:
            set_run_dir(trainer, self.out_dir)
        return trainer

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
def export_model(
    ckpt_path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``model.pt`` (a plain state_dict) and ``model.json`` (name and arguments) to ``out_dir``.

    A non-empty ``out_dir`` is refused unless ``overwrite``; the checkpoint is checked before
    anything is created, and a failed export leaves no folder behind.

    Load them again without Lightning::

        spec = json.load(open("out/model.json"))
        net = create_model(spec["model"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                           **spec["model_kwargs"]); net.load_state_dict(torch.load("out/model.pt"))
    """
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    ckpt = load_checkpoint(ckpt_path)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"export target is a file, not a folder: {out_dir}")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OverwriteRefused(
            f"export target is not empty: {out_dir}", "pick an empty or new folder, or pass --overwrite to replace it"
        )
    first_missing = next((p for p in [out_dir, *out_dir.parents] if p.exists()), None)
    created = None if out_dir.exists() else out_dir
    if created is not None:  # the top-most folder this export creates: removed again if it fails
        for parent in out_dir.parents:
            if parent == first_missing:
                break
            created = parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot create export directory {out_dir}: {err.strerror}") from None
    try:
        return _write_export(ckpt, ckpt_path, out_dir)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _write_export(ckpt: dict, ckpt_path: Path, out_dir: Path) -> tuple[Path, Path]:
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"export directory is not writable: {out_dir}")
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
    check_state_dict({"state_dict": state}, ckpt_path, module.model)
    module.model.load_state_dict(state)
    state, spec = export_state(module)
    from lit_recipes.exported import checkpoint_spec

    spec = {**spec, **checkpoint_spec(ckpt, ckpt_path)}  # + class names, input size, mean/std, eval transform
    weights = out_dir / "model.pt"
    atomic_write(weights, lambda fh: torch.save(state, fh))
    spec_path = save_json(out_dir / "model.json", spec)
    return weights, spec_path


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lit-recipes export", description="Export a checkpoint's model weights.")
    parser.add_argument("checkpoint", help="a .ckpt written by lit-recipes fit")
    parser.add_argument("out_dir", help="folder for model.pt and model.json (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty out_dir")
    ns = parser.parse_args(argv)
    weights, spec = export_model(ns.checkpoint, ns.out_dir, overwrite=ns.overwrite)
    sys.stdout.write(f"wrote {weights} and {spec}\n")
    return 0


# ---------------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lit-recipes`` console script: every command runs inside the one error
    boundary (:func:`lit_recipes.errors.run_command`; ``--debug`` shows tracebacks)."""
    from_command_line = argv is None
    if from_command_line:
        from lit_recipes.errors import pop_debug_flag

        pop_debug_flag(sys.argv)  # in place: Lightning's DDP launcher re-runs sys.argv
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        module_name, fn_name = COMMANDS[argv[0]].split(":")
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError):
            sys.stderr.write(f"error: the {argv[0]!r} command is not available in this version\n")
            return 2
        return run_command(fn, argv[1:])
    # from the command line, LightningCLI reads sys.argv itself: Lightning's DDP launcher re-runs the
    # script with the same sys.argv in each new process, so it must stay intact
    return run_command(lambda a: _run_lightning_cli(None if from_command_line else a), argv)


def _run_lightning_cli(argv: list[str] | None) -> int:
    started = time.time()
    inherited = RUN_FOLDER_ENV in os.environ
    holder: dict[str, LitRecipesCLI] = {}

    class _Tracked(LitRecipesCLI):
        def before_instantiate_classes(self) -> None:
            holder["cli"] = self
            super().before_instantiate_classes()

    try:
        cli = _Tracked(args=argv, new_run_folder=True)
    except BaseException:
        made = holder.get("cli")
        if made is not None:
            _remove_unused(made._created)
        raise
    finally:
        if not inherited:
            os.environ.pop(RUN_FOLDER_ENV, None)
    trainer = getattr(cli, "trainer", None)
    wandb_info = _wandb_info(trainer)
    finish_wandb(trainer)
    if trainer is not None and trainer.is_global_zero and cli.out_dir is not None:
        sys.stdout.write(summary_text(cli, started, wandb_info))
        sys.stdout.flush()
    return 0


def _remove_unused(folders: list[Path]) -> None:
    """Remove the folders a failed command created that hold nothing but ``run.json``."""
    for folder in folders:
        try:
            if folder.is_dir() and all(p.name == "run.json" for p in folder.iterdir()):
                shutil.rmtree(folder)
                if folder.parent.is_dir() and not any(folder.parent.iterdir()):
                    folder.parent.rmdir()
        except OSError:
            pass


def _wandb_info(trainer) -> list[dict[str, str]]:
    """Offline folder / URL of each W&B run of ``trainer`` (read before ``finish``)."""
    out: list[dict[str, str]] = []
    if trainer is None:
        return out
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        run = getattr(logger, "_experiment", None) if isinstance(logger, WandbLogger) else None
        if run is None:
            continue
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


def finish_wandb(trainer) -> None:
    """Close the W&B run of ``trainer`` (writes the summary; offline runs become syncable)."""
    if trainer is None or not trainer.is_global_zero:
        return
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


def _run_cleanly(fn, argv: list[str]) -> int:
    """Kept for callers of the old name: :func:`lit_recipes.errors.run_command`."""
    return run_command(fn, argv)


__all__ = ["COMMANDS", "LitRecipesCLI", "build_cli", "export_model", "main", "recipe_name", "summary_text"]


if __name__ == "__main__":
    sys.exit(main())
