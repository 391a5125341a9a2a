"""The quiet console: Lightning's tip, known deprecations, repeated model summaries and source
lines are gone by default and back with --verbose. Run in subprocesses (the filters are global)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lit_recipes.console import format_warning

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import sys, warnings
from lit_recipes import console
console.install(verbose=sys.argv[1] == "verbose")
import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from lightning.fabric.utilities.warnings import PossibleUserWarning

warnings.simplefilter("always")
console.ignore_noisy_warnings() if sys.argv[1] == "quiet" else None
rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](x)")
rank_zero_info("TPU available: False, using: 0 TPU cores")
rank_zero_info("an info line about this run")
warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead.", FutureWarning)
warnings.warn(
    "It is recommended to use `self.log('val/acc_class_0', ..., sync_dist=True)` when logging on epoch level "
    "in distributed setting to accumulate the metric across devices.",
    PossibleUserWarning,
)
warnings.warn("something worth a look", UserWarning)

from lit_recipes.datamodules import DigitsDataModule
from lit_recipes.module import ClassifierModule

for _ in range(2):  # as lr-find and k-fold do: two Trainers, the same model
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=True, num_sanity_val_steps=0,
    )
    trainer.fit(ClassifierModule("lenet5", num_classes=10, in_channels=1), datamodule=DigitsDataModule())
print("done")
"""


def _run(mode: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_quiet_by_default():
    out = _run("quiet")
    assert "done" in out
    assert "Tip" not in out and "litlogger" not in out
    assert "TPU available" not in out
    assert "an info line about this run" in out
    assert "LeafSpec" not in out
    assert "sync_dist" not in out
    lines = out.splitlines()
    hits = [i for i, line in enumerate(lines) if "something worth a look" in line]
    assert len(hits) == 1 and lines[hits[0]] == "warning: something worth a look (UserWarning)"
    assert 'warnings.warn("something' not in out  # no source line under the warning
    assert out.count("Total params") == 1  # the model summary, once
    assert out.count("GPU available") == 1  # once, not per Trainer


def test_verbose_keeps_everything():
    out = _run("verbose")
    assert "Tip" in out and "TPU available" in out
    assert "LeafSpec" in out
    assert "sync_dist" in out
    assert out.count("Total params") == 2
    assert out.count("GPU available") == 2


def test_format_warning_one_line():
    ours = REPO / "lit_recipes" / "console.py"
    assert format_warning("no hard examples this epoch", UserWarning, str(ours), 1) == (
        "lit-recipes: no hard examples this epoch\n"
    )
    callbacks_file = REPO / "callbacks" / "hard_negative.py"
    if callbacks_file.is_file():
        assert format_warning("x", UserWarning, str(callbacks_file), 3).startswith("lit-recipes: x")
    assert format_warning("odd\n", DeprecationWarning, "/elsewhere/lib.py", 7, "src") == (
        "warning: odd (DeprecationWarning)\n"
    )
