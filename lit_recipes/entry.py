"""The ``lit-recipes`` console script: a light front door to :func:`lit_recipes.commands.main.main`.

``lit-recipes --help`` and ``lit-recipes recipes`` answer from here without importing torch or
Lightning (a second instead of ~15). Before handing a command to :mod:`lit_recipes.commands.main` it

* resolves a shipped recipe name: ``--config digits_lenet`` works from any folder;
* puts the current folder on the import path, so ``class_path: mymodule.MyNet`` finds
  ``./mymodule.py`` (as ``python -m`` would);
* installs the quiet console (:mod:`lit_recipes.console`; ``--verbose`` keeps everything);
* sends ``predict --images ...`` to :mod:`lit_recipes.commands.predict` (no Lightning import).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# (name, one line); the Trainer commands first, then the recipe commands
COMMANDS: list[tuple[str, str]] = [
    ("fit", "train a model from a recipe: lit-recipes fit --config digits_lenet"),
    ("validate", "score a checkpoint on the validation split (--ckpt_path)"),
    ("test", "score a checkpoint on the test split (--ckpt_path)"),
    ("predict", "classify image files: --images <folder|glob> --ckpt_path X (or --model <export dir>)"),
    ("lr-find", "LR range test of a recipe (per weight decay): plot and suggested LR"),
    ("sanity", "overfit a tiny subset with regularisation off: PASS if the loss goes to ~0"),
    ("kfold", "k-fold cross-validation of a recipe (mean ± std, fold ensemble, optional refit)"),
    ("kfold-report", "aggregate a k-fold run folder whose folds ran as separate jobs"),
    ("stats", "class counts and channel mean/std of a data set"),
    ("bench-data", "images/s of the training loader vs the training step (is the input the bottleneck?)"),
    ("export", "write a checkpoint's model as model.pt + model.json (class names, mean/std, input size)"),
    ("search", "hyper-parameter search over a recipe"),
    ("recipes", "list the shipped recipes (usable as --config <name> from any folder)"),
]
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
VERBOSE_ENV = "LIT_RECIPES_VERBOSE"


def configs_dir() -> Path:
    """The folder of the shipped recipes (``lit_recipes/configs``)."""
    return Path(__file__).resolve().parent / "configs"


def shipped_recipes() -> dict[str, Path]:
    """Recipe name -> YAML path of every shipped recipe."""
    return {p.stem: p for p in sorted(configs_dir().glob("*.yaml"))}


def recipe_summary(path: Path, width: int = 96) -> str:
    """The recipe file's leading comment (its description), shortened to ``width`` characters."""
    words: list[str] = []
    try:
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line.startswith("#") or line.startswith("#  "):
                break  # the description ends at the first non-comment or indented (command) line
            words.append(line.lstrip("#").strip())
    except OSError:
        return ""
    text = " ".join(w for w in words if w)
    text = text.rstrip(":")
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def resolve_config(value: str) -> str:
    """``--config`` value -> a path: an existing file stays as given; otherwise a shipped recipe's
    name (``digits_lenet``, ``digits_lenet.yaml`` or ``lit_recipes/configs/digits_lenet.yaml``
    from another folder) becomes that recipe's path. Anything else is left for the parser to
    report."""
    if os.path.exists(value) or value.lstrip().startswith(("{", "[")) or "\n" in value:
        return value
    name = Path(value).name
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name[: -len(".yml")] if name.endswith(".yml") else name
    recipe = shipped_recipes().get(stem)
    return str(recipe) if recipe is not None else value


def resolve_configs(argv: list[str]) -> list[str]:
    """``argv`` with every ``--config X`` / ``--config=X`` resolved by :func:`resolve_config`."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    return out


LR_ARGS = ("--model.init_args.lr", "--model.lr")


def _config_values(argv: list[str]) -> list[tuple[int, str]]:
    """``(index of the last token of the pair, value)`` of every ``--config`` in ``argv``."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            out.append((i + 1, argv[i + 1]))
        elif arg.startswith("--config="):
            out.append((i, arg.split("=", 1)[1]))
    return out


def _callback_key(cb: object) -> str:
    path = cb.get("class_path", "") if isinstance(cb, dict) else str(cb)
    return str(path).rsplit(".", 1)[-1]


def merge_callback_lists(lists: list[list]) -> list:
    """Callback lists of several configs merged by class: a class already in the list gets the
    later config's ``init_args`` on top of its own; a new class is appended."""
    merged: list = []
    for callbacks in lists:
        for cb in callbacks:
            cb = {"class_path": cb} if isinstance(cb, str) else dict(cb)
            same = next((m for m in merged if _callback_key(m) == _callback_key(cb)), None)
            if same is None:
                merged.append(cb)
            else:
                same["init_args"] = {**(same.get("init_args") or {}), **(cb.get("init_args") or {})}
    return merged


def compose_callbacks(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(argv, notes)``: with several ``--config`` files that each list ``trainer.callbacks``,
    the lists are merged by class (:func:`merge_callback_lists`) instead of the last one replacing
    the others; an LR given on the command line wins over the recipe's LR range test (its
    ``update_lr`` is turned off, the test still runs and plots). The merged list is passed as one
    ``--trainer.callbacks=[...]`` right after the last ``--config``, so later command-line
    arguments (``--trainer.callbacks+=...``) still apply on top."""
    configs = _config_values(argv)
    user_lr = next((a for a in argv if a.startswith(LR_ARGS)), None)
    if user_lr in LR_ARGS:  # "--model.init_args.lr 0.1"
        i = argv.index(user_lr)
        user_lr = f"{user_lr}={argv[i + 1]}" if i + 1 < len(argv) else user_lr
    if not configs or (len(configs) < 2 and user_lr is None):
        return argv, []
    import json

    import yaml

    lists = []
    for _, value in configs:
        try:
            data = yaml.safe_load(Path(value).read_text())
        except (OSError, yaml.YAMLError):
            return argv, []  # the parser reports an unreadable config itself
        trainer = data.get("trainer") if isinstance(data, dict) else None
        if isinstance(trainer, dict) and trainer.get("callbacks") is not None:
            cbs = trainer["callbacks"]
            lists.append(cbs if isinstance(cbs, list) else [cbs])
    notes = []
    merged = merge_callback_lists(lists)
    range_tests = [cb for cb in merged if _callback_key(cb) == "LRRangeTest"]
    lr_wins = user_lr is not None and any((cb.get("init_args") or {}).get("update_lr", True) for cb in range_tests)
    if len(lists) < 2 and not lr_wins:
        return argv, []
    if lr_wins:
        for cb in range_tests:
            cb["init_args"] = {**(cb.get("init_args") or {}), "update_lr": False}
        notes.append(
            f"{user_lr} given: the recipe's LR range test still runs and plots but does not change the LR "
            "(drop the LR argument to train at its suggestion)"
        )
    last = configs[-1][0]
    if last + 1 < len(argv) and argv[last + 1].startswith("--trainer.callbacks="):
        return argv, []  # already composed (a DDP worker re-running the command) or replaced on purpose
    return [*argv[: last + 1], f"--trainer.callbacks={json.dumps(merged)}", *argv[last + 1 :]], notes


def help_text() -> str:
    width = max(len(n) for n, _ in COMMANDS)
    lines = [
        "usage: lit-recipes <command> [options]      (lit-recipes <command> --help for its options)",
        "",
        "Image classification with PyTorch Lightning: recipes of the classic training tricks.",
        "",
        "commands:",
        *(f"  {n:<{width}}  {d}" for n, d in COMMANDS),
        "",
        "options of every command:",
        f"  {'--verbose':<{width}}  show everything Lightning, W&B and the libraries print (default: quiet)",
        f"  {'--debug':<{width}}  show the traceback of an error (default: one line)",
        "",
        "start with:  lit-recipes recipes      then   lit-recipes fit --config digits_lenet",
        "docs:        docs/cli.md (commands), docs/predict.md (new images)",
    ]
    return "\n".join(lines) + "\n"


def recipes_text() -> str:
    recipes = shipped_recipes()
    width = max((len(n) for n in recipes), default=0)
    lines = ["shipped recipes (use the name from any folder: lit-recipes fit --config <name>):"]
    lines += [f"  {n:<{width}}  {recipe_summary(p)}" for n, p in recipes.items()]
    lines.append(
        f"files: {configs_dir()}  (copy one to start your own: lit-recipes fit --config <name> --print_config)"
    )
    return "\n".join(lines) + "\n"


def module_options_text() -> str:
    """ClassifierModule's own options, one line each: printed before LightningCLI's long help."""
    import inspect

    from lit_recipes.module import ClassifierModule

    doc = inspect.getdoc(ClassifierModule) or ""
    described: dict[str, str] = {}
    in_args, current = False, None
    for line in doc.splitlines():
        if line.strip() == "Args:":
            in_args = True
            continue
        if in_args and line and not line.startswith(" "):
            break
        if in_args and line.startswith("    ") and not line.startswith("        ") and ":" in line:
            names, _, text = line.strip().partition(":")
            current = [n.strip() for n in names.split(",")]
            for n in current:
                described[n] = text.strip()
        elif in_args and current and line.strip():
            for n in current:
                described[n] += " " + line.strip()
    sig = inspect.signature(ClassifierModule.__init__)
    rows = []
    for name, p in sig.parameters.items():
        if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        default = "" if p.default is inspect.Parameter.empty else p.default
        default = getattr(default, "__name__", default)
        text = described.get(name, "").replace("``", "").rstrip(".")
        text = text if len(text) <= 72 else text[:71].rstrip() + "…"
        rows.append(f"  --model.init_args.{name:<22} {text} [{default}]")
    head = [
        "ClassifierModule options (YAML: model.init_args.<name>; full text: lit-recipes fit --model.help ClassifierModule):",
        *rows,
        "data: --data.help DigitsDataModule | ImageFolderDataModule | CIFAR10DataModule;  recipes: lit-recipes recipes",
        "Lightning's full option list follows.",
        "",
    ]
    return "\n".join(head) + "\n"


def _pop_verbose(argv: list[str]) -> tuple[list[str], bool]:
    verbose = "--verbose" in argv or os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0")
    return [a for a in argv if a != "--verbose"], verbose


def _one_line_errors(fn, argv: list[str]) -> int:
    """Bad input of the light commands: one line on stderr, exit status 2 (``--debug`` /
    ``LIT_RECIPES_DEBUG`` shows the traceback): the error boundary of every command."""
    from lit_recipes.errors import run_command  # light: no torch, no Lightning

    return run_command(fn, argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lit-recipes`` console script."""
    from_command_line = argv is None
    args = list(sys.argv[1:] if argv is None else argv)
    args, verbose = _pop_verbose(args)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(help_text())
        return 0
    if args[0] in ("-V", "--version"):
        from lit_recipes import __version__

        sys.stdout.write(f"lit-recipes {__version__}\n")
        return 0
    if args[0] == "recipes":
        sys.stdout.write(recipes_text())
        return 0
    if os.getcwd() not in sys.path and "" not in sys.path:
        # class_path: mymodule.MyNet finds ./mymodule.py; appended, so a local file never shadows a library
        sys.path.append(os.getcwd())
    args = resolve_configs(args)
    args, notes = compose_callbacks(args)
    for note in notes:
        sys.stderr.write(f"lit-recipes: {note}\n")
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # DDP workers re-run this script: they stay verbose too

    from lit_recipes import console

    if args[0] == "predict":
        from lit_recipes.commands.predict import is_folder_predict

        if is_folder_predict(args[1:]):
            console.install(verbose, lightning=False)
            from lit_recipes.commands.predict import predict_main

            return _one_line_errors(predict_main, args[1:])
    console.install(verbose)
    trainer_help = args[0] in TRAINER_COMMANDS and any(a in ("-h", "--help") for a in args[1:])
    if trainer_help:
        sys.stdout.write(module_options_text())
    from lit_recipes.commands.main import main as cli_main
    from lit_recipes.plumbing import swapped_argv

    try:
        if from_command_line:
            # LightningCLI reads sys.argv itself (Lightning's DDP launcher re-runs the script with it)
            with swapped_argv(args):
                return cli_main(None)
        return cli_main(args)
    finally:
        if trainer_help:
            sys.stdout.write(
                f"\n(ClassifierModule's own options are at the top: lit-recipes {args[0]} --help | head -30)\n"
            )


if __name__ == "__main__":
    sys.exit(main())
