"""The dispatcher of ``lit-recipes``: each command name goes to the module that runs it.

``fit | validate | test | predict`` run the LightningCLI (:mod:`lit_recipes.commands.fit`) and end
with the run summary (:mod:`lit_recipes.commands.summary`); the recipe commands are listed in
:data:`COMMANDS`. The console script's front door is :mod:`lit_recipes.entry`, which resolves recipe
names and the console before it calls :func:`main`.
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

from lit_recipes.commands.fit import RUN_FOLDER_ENV, LitRecipesCLI
from lit_recipes.commands.summary import finish_wandb, summary_text, wandb_info
from lit_recipes.errors import Interrupted, interrupt_signal, run_command

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
# commands whose rerun (the same command line) continues where an interruption stopped them
RESUMED_BY_RERUN = ("kfold", "search")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lit-recipes`` console script: every command runs inside the one error
    boundary (:func:`lit_recipes.errors.run_command`; ``--debug`` shows tracebacks)."""
    from_command_line = argv is None
    if from_command_line:
        from lit_recipes.errors import pop_debug_flag

        pop_debug_flag(sys.argv)  # in place: Lightning's DDP launcher re-runs sys.argv
    argv = list(sys.argv[1:] if argv is None else argv)
    if from_command_line:  # the console script's process (not a notebook or a test calling main)
        _catch_sigterm()
    if argv and argv[0] in COMMANDS:
        module_name, fn_name = COMMANDS[argv[0]].split(":")
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError):
            sys.stderr.write(f"error: the {argv[0]!r} command is not available in this version\n")
            return 2
        if argv[0] in RESUMED_BY_RERUN:
            fn = _rerun_resumes(fn, argv[0])
        return run_command(fn, argv[1:])
    # from the command line, LightningCLI reads sys.argv itself: Lightning's DDP launcher re-runs the
    # script with the same sys.argv in each new process, so it must stay intact
    return run_command(lambda a: _run_lightning_cli(None if from_command_line else a), argv)


def _sigterm(signum, frame) -> None:
    """SIGTERM outside a Trainer: stop like Ctrl-C. Inside ``trainer.fit`` Lightning's own handler
    (which calls this one too) stops at the next batch boundary instead (``SIGTERMException``)."""
    if signal.getsignal(signal.SIGTERM) is _sigterm:
        raise Interrupted(signal.SIGTERM)


def _catch_sigterm() -> None:
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
        signal.SIG_DFL,
        None,
    ):
        signal.signal(signal.SIGTERM, _sigterm)


def _rerun_resumes(fn, name: str):
    """``fn`` whose interruption names the same command line as the way to resume (without
    ``--kfold.overwrite``, which would delete what the rerun continues from)."""

    def run(argv: list[str]) -> int | None:
        try:
            return fn(argv)
        except BaseException as exc:
            signum = interrupt_signal(exc)
            if signum is None or getattr(exc, "resume", None):
                raise
            raise Interrupted(signum, "lit-recipes " + shlex.join([name, *_without_overwrite(argv)])) from exc

    return run


def _without_overwrite(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a.split("=", 1)[0] == "--kfold.overwrite":
            skip = "=" not in a and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            continue
        out.append(a)
    return out


def _resume_command(cli: LitRecipesCLI | None, argv: list[str] | None) -> str | None:
    """``lit-recipes fit <the same arguments> --ckpt_path <run>/checkpoints/last.ckpt``, or ``None``
    when no epoch has finished (there is no last checkpoint to continue from)."""
    trainer = getattr(cli, "trainer", None)
    ckpt = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
    last = getattr(ckpt, "last_model_path", "") or ""
    if cli is None or getattr(cli, "subcommand", None) != "fit" or not last or not os.path.isfile(last):
        return None
    args = list(sys.argv[1:] if argv is None else argv)
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--ckpt_path":
            skip = True
            continue
        if not a.startswith("--ckpt_path="):
            out.append(a)
    return "lit-recipes " + shlex.join([*out, "--ckpt_path", os.path.relpath(last)])


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
    except BaseException as exc:
        made = holder.get("cli")
        signum = interrupt_signal(exc)
        if signum is None and getattr(getattr(made, "trainer", None), "received_sigterm", False):
            signum = int(signal.SIGTERM)  # DDP: a collective failed because another rank was stopped first
        if signum is not None and made is not None and getattr(made, "trainer", None) is not None:
            _interrupted_summary(made, started)
            raise Interrupted(signum, _resume_command(made, argv)) from exc
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


def _interrupted_summary(cli: LitRecipesCLI, started: float) -> None:
    """The run summary of an interrupted command (rank 0), its W&B run closed."""
    trainer = cli.trainer
    try:
        runs = wandb_info(trainer)
        finish_wandb(trainer)
        if trainer.is_global_zero and cli.out_dir is not None:
            sys.stdout.write(summary_text(cli, started, runs))
            sys.stdout.flush()
    except Exception:  # noqa: BLE001 - the interruption line must come whatever the summary does
        pass


def _remove_unused(folders: list[Path]) -> None:
    """Remove the folders a failed command created that hold nothing a run produced: only
    ``run.json``, the saved ``config*.yaml`` and the logger's ``wandb`` folder (a run that failed
    before its first epoch leaves no run folder)."""
    for folder in folders:
        try:
            if folder.is_dir() and all(_set_up_only(p) for p in folder.iterdir()):
                shutil.rmtree(folder)
                if folder.parent.is_dir() and not any(folder.parent.iterdir()):
                    folder.parent.rmdir()
        except OSError:
            pass


def _set_up_only(path: Path) -> bool:
    """Whether ``path`` (in a run folder) is written while a run is set up, before any training."""
    if path.is_dir():
        return path.name == "wandb"
    return path.name == "run.json" or (path.name.startswith("config") and path.suffix == ".yaml")


__all__ = ["COMMANDS", "main"]


if __name__ == "__main__":
    sys.exit(main())
