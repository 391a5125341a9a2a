"""The light ``lit-recipes`` entry point: help without torch, recipe names, composed callbacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lit_recipes.entry import (
    COMMANDS,
    compose_callbacks,
    help_text,
    merge_callback_lists,
    recipes_text,
    resolve_config,
    shipped_recipes,
)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECIPE = str(REPO / "lit_recipes" / "configs" / "digits_lenet.yaml")
EVERY_COMMAND = [
    "fit",
    "validate",
    "test",
    "predict",
    "lr-find",
    "sanity",
    "kfold",
    "kfold-report",
    "stats",
    "bench-data",
    "export",
    "recipes",
    "search",
]


def test_help_lists_every_command_without_importing_torch_or_lightning():
    code = (
        "import sys, io, contextlib\n"
        "from lit_recipes.entry import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    rc = main(['--help'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'pytorch_lightning', 'torchvision'))\n"
        "print(rc, heavy)\n"
        "print(buf.getvalue())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    first, _, text = proc.stdout.partition("\n")
    assert first == "0 []", first
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("  ") and not line.startswith("  --")]
    assert listed == [n for n, _ in COMMANDS]
    assert sorted(listed) == sorted(EVERY_COMMAND)


def test_console_script_points_to_the_entry_module():
    script = BIN / "lit-recipes"
    assert script.is_file(), f"no lit-recipes console script next to {sys.executable} (run make install)"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout == help_text()


def test_recipe_names_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "digits_lenet" in shipped_recipes()
    assert resolve_config("digits_lenet") == RECIPE
    assert resolve_config("digits_lenet.yaml") == RECIPE
    assert resolve_config("lit_recipes/configs/digits_lenet.yaml") == RECIPE  # the README's path, elsewhere
    (tmp_path / "digits_lenet.yaml").write_text("seed_everything: 1\n")
    assert resolve_config("digits_lenet.yaml") == "digits_lenet.yaml"  # an existing file wins
    assert resolve_config("nothing_like_it") == "nothing_like_it"  # left for the parser to report
    text = recipes_text()
    for name in shipped_recipes():
        assert f"  {name} " in text


def test_callback_lists_merge_by_class():
    recipe = [
        {"class_path": "lit_recipes.callbacks.LRRangeTest", "init_args": {"num_steps": 100}},
        {"class_path": "lit_recipes.callbacks.GapMonitor", "init_args": {"subset_size": 1000}},
    ]
    extra = [
        {"class_path": "lit_recipes.callbacks.GapMonitor", "init_args": {"every_n_epochs": 2}},
        "lightning.pytorch.callbacks.LearningRateMonitor",
    ]
    merged = merge_callback_lists([recipe, extra])
    assert [c["class_path"].rsplit(".", 1)[-1] for c in merged] == ["LRRangeTest", "GapMonitor", "LearningRateMonitor"]
    assert merged[1]["init_args"] == {"subset_size": 1000, "every_n_epochs": 2}
    assert recipe[1]["init_args"] == {"subset_size": 1000}  # inputs untouched


def test_second_config_adds_callbacks_and_keeps_the_recipes(tmp_path):
    extra = tmp_path / "more.yaml"
    extra.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.LearningRateMonitor\n"
        "      init_args: {logging_interval: step}\n"
    )
    argv, notes = compose_callbacks(["fit", "--config", RECIPE, "--config", str(extra), "--trainer.max_epochs=1"])
    assert notes == []
    assert argv[:5] == ["fit", "--config", RECIPE, "--config", str(extra)]
    assert argv[-1] == "--trainer.max_epochs=1"
    listed = json.loads(argv[5].split("=", 1)[1])
    assert [c["class_path"].rsplit(".", 1)[-1] for c in listed] == ["LRRangeTest", "GapMonitor", "LearningRateMonitor"]

    from lit_recipes.commands.fit import build_cli

    cli = build_cli([*argv[1:], "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"])
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    for name in ("LRRangeTest", "GapMonitor", "LearningRateMonitor"):
        assert name in names, names


def test_one_config_is_left_alone():
    argv = ["fit", "--config", RECIPE, "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor"]
    assert compose_callbacks(argv) == (argv, [])


def test_command_line_lr_wins_over_the_range_test():
    argv, notes = compose_callbacks(["fit", "--config", RECIPE, "--model.init_args.lr", "0.1"])
    assert len(notes) == 1 and "--model.init_args.lr=0.1" in notes[0]
    listed = json.loads(next(a for a in argv if a.startswith("--trainer.callbacks=")).split("=", 1)[1])
    finder = next(c for c in listed if c["class_path"].endswith("LRRangeTest"))
    assert finder["init_args"]["update_lr"] is False
    assert argv[-2:] == ["--model.init_args.lr", "0.1"]


def test_custom_class_path_from_the_current_folder(tmp_path):
    """`class_path: mymodel.Net` finds ./mymodel.py (no PYTHONPATH), and a recipe name works there."""
    (tmp_path / "mynet.py").write_text(
        "from lit_recipes.module import ClassifierModule\n\n\nclass MyModule(ClassifierModule):\n    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(BIN / "lit-recipes"), "fit", "--config", "digits_lenet", "--model", "mynet.MyModule", "--print_config"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "class_path: mynet.MyModule" in proc.stdout


def test_kfold_experiment_names(tmp_path):
    from lit_recipes.commands.kfold.options import experiment_name
    from lit_recipes.commands.kfold.plan import KFoldOptions
    from lit_recipes.commands.kfold.rundir import MANIFEST

    root = tmp_path / "kfold"
    first = experiment_name(root, "digits_lenet", "fp-a", KFoldOptions())
    assert first.startswith("digits_lenet-2") and len(first) == len("digits_lenet-YYYYmmdd-HHMMSS")
    (root / first).mkdir(parents=True)
    (root / first / MANIFEST).write_text(json.dumps({"fingerprint": "fp-a"}))
    assert experiment_name(root, "digits_lenet", "fp-a", KFoldOptions()) == first  # same config: resumed
    other = experiment_name(root, "digits_lenet", "fp-b", KFoldOptions())  # another config: a fresh name
    assert other != first and other.startswith("digits_lenet-2")
    # an old-style plain-named run of another config no longer blocks a new experiment
    (root / "digits_lenet").mkdir()
    (root / "digits_lenet" / MANIFEST).write_text(json.dumps({"fingerprint": "fp-old"}))
    assert experiment_name(root, "digits_lenet", "fp-c", KFoldOptions()).startswith("digits_lenet-2")
    # one job per fold: the plain stem, so the jobs meet in one folder
    assert experiment_name(root, "digits_lenet", "fp-d", KFoldOptions(fold=0)) == "digits_lenet"


def test_trainer_help_starts_with_classifier_module_options():
    import inspect

    from lit_recipes.entry import module_options_text
    from lit_recipes.module import ClassifierModule

    text = module_options_text()
    assert text.startswith("ClassifierModule options")
    params = [p for p in inspect.signature(ClassifierModule.__init__).parameters if p != "self"]
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("  --model.init_args.")]
    assert listed == [f"--model.init_args.{p}" for p in params]
    lr_line = next(line for line in text.splitlines() if line.startswith("  --model.init_args.lr "))
    assert "base learning rate" in lr_line and lr_line.endswith("[0.05]")


def test_help_covers_every_registered_command():
    from lit_recipes.commands.main import COMMANDS as CLI_COMMANDS

    assert set(CLI_COMMANDS) <= {n for n, _ in COMMANDS}


def test_every_registered_command_resolves_to_its_module():
    """Each ``lit-recipes <name>`` of the dispatcher names a function of the module named after the
    command (a broken entry would only say 'not available in this version' at run time)."""
    import importlib

    from lit_recipes.commands.main import COMMANDS as CLI_COMMANDS

    for name, target in CLI_COMMANDS.items():
        module_name, fn_name = target.split(":")
        assert module_name.startswith("lit_recipes.commands."), target
        assert callable(getattr(importlib.import_module(module_name), fn_name)), target
        expected = {"kfold-report": "kfold"}.get(name, name.replace("-", "_"))  # kfold-report: the k-fold package
        assert module_name.split(".")[2] == expected, target
