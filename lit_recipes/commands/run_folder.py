"""Where a command line's run writes: a new ``<root>/<recipe>/<stamp>-<id>`` folder with its
``run.json``, the checkpoint's run folder for a resumed ``fit``, a new sub-folder of it (``test``,
``test-2`` ...) for the other commands on a checkpoint; and the W&B logger pointed at it.

Under DDP every rank re-runs the command: rank 0 chooses, the others inherit its choice (through
``LIT_RECIPES_RUN_FOLDER``, or a marker file in the temp folder when ``torchrun`` started every rank
at once; rank 0 removes it when it exits).
"""

from __future__ import annotations

import atexit
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from lit_recipes.artifacts import create_run_folder, find_run_folder, read_run_info, save_json, unique_subfolder
from lit_recipes.errors import BadInput

RUNS_ROOT = "runs"
RUN_FOLDER_ENV = "LIT_RECIPES_RUN_FOLDER"  # the chosen folders, inherited by Lightning's DDP worker processes


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


class RunFolders:
    """The run-folder methods of :class:`lit_recipes.commands.fit.LitRecipesCLI` (a mixin). The CLI
    sets ``_new_run_folder``, ``_ckpt_path``, ``_raw_args``, ``_created``, ``subcommand`` before they
    run; they set ``run_folder``, ``out_dir`` and ``_wandb_id``."""

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
                # the other ranks read it before the DDP rendezvous; gone at exit, a later torchrun with
                # the same --rdzv-id can not inherit this run's folder
                atexit.register(marker.unlink, missing_ok=True)
        cfg["trainer.default_root_dir"] = str(self.out_dir)
        if cfg.get("checkpoint") is not None and not cfg.get("checkpoint.dirpath"):
            # test/validate/predict too: the checkpoint's own folder, so that loading its ModelCheckpoint
            # state does not warn "The dirpath has changed" (they write no checkpoint)
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
                import warnings

                # test/validate/predict write no checkpoint: ModelCheckpoint's tracking state does not
                # matter, and a moved run folder would otherwise warn "The dirpath has changed ..."
                warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
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


__all__ = ["RUNS_ROOT", "RUN_FOLDER_ENV", "RunFolders", "config_files", "recipe_name"]
