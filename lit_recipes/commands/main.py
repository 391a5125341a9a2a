"""The dispatcher of ``lit-recipes``: each command name goes to the module that runs it.

``fit | validate | test | predict`` run the LightningCLI (:mod:`lit_recipes.commands.fit`) and end
with the run summary (:mod:`lit_recipes.commands.summary`); the recipe commands are listed in
:data:`COMMANDS`. The console script's front door is :mod:`lit_recipes.entry`, which resolves recipe
names and the console before it calls :func:`main`.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import time
from pathlib import Path

from lit_recipes.commands.fit import RUN_FOLDER_ENV, LitRecipesCLI
from lit_recipes.commands.summary import finish_wandb, summary_text, wandb_info
from lit_recipes.errors import run_command

# name -> "module:function(argv) -> int"; the recipe commands that are not Trainer methods
COMMANDS: dict[str, str] = {
    "export": "lit_recipes.commands.export:export_main",
    "lr-find": "lit_recipes.commands.lr_find:lr_find_main",
    "sanity": "lit_recipes.commands.sanity:sanity_main",
    "kfold": "lit_recipes.commands.kfold:kfold_main",
    "kfold-report": "lit_recipes.commands.kfold:report_main",
    "stats": "lit_recipes.commands.stats:stats_main",
    "bench-data": "lit_recipes.commands.bench_data:bench_data_main",
    "search": "lit_recipes.commands.search:search_main",
}


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
    runs = wandb_info(trainer)
    if trainer is not None:
        finish_wandb(trainer)
    if trainer is not None and trainer.is_global_zero and cli.out_dir is not None:
        sys.stdout.write(summary_text(cli, started, runs))
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


__all__ = ["COMMANDS", "main"]


if __name__ == "__main__":
    sys.exit(main())
