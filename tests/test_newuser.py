"""What a new user tripped over on a fresh clone (issue 35, item 8): each test pins the fixed wording
or behaviour. Others live in their home files: the "dirpath has changed" warning of `test --ckpt_path`
(test_cli.py), the setuptools warning about lit_recipes.configs (test_packaging.py), the LR range
test's title (test_lr_sweep.py), the `kfold-report` hint of `search` (test_search.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "lit_recipes" / "configs" / "digits_lenet.yaml"


def test_a_config_file_typo_suggests_the_argument_the_base_class_takes(tmp_path, capsys, monkeypatch):
    """`val_fractoin` in a config: DigitsDataModule takes val_fraction through **kwargs (from its
    base class); the hint named test_fraction, the only close name in its own signature."""
    from lit_recipes.commands.main import main

    text = CONFIG.read_text()
    assert text.count("val_fraction:") == 1
    (tmp_path / "typo.yaml").write_text(text.replace("val_fraction:", "val_fractoin:"))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    try:
        code = main(["fit", "--config", str(tmp_path / "typo.yaml"), "--trainer.logger=false"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("lit-recipes: ")]
    assert lines == [
        "lit-recipes: error: data.init_args.val_fractoin: DigitsDataModule has no argument 'val_fractoin'",
        "lit-recipes: hint: did you mean data.init_args.val_fraction?",
    ]
    assert not (tmp_path / "runs").exists()


def test_init_params_follow_kwargs_into_the_base_classes():
    from lit_recipes.errors import _init_params

    names = _init_params("lit_recipes.datamodules.DigitsDataModule")
    assert names[0] == "test_fraction" and {"val_fraction", "batch_size", "seed"} <= set(names)
    assert "kwargs" not in names and "self" not in names
    assert _init_params("no.such.Class") == []


@pytest.mark.parametrize(
    ("lead", "text"),
    [
        (4, ", 4 epochs before EarlyStopping"),
        (1, ", 1 epoch before EarlyStopping"),
        (0, ", at EarlyStopping's epoch"),
        (-8, ", 8 epochs after EarlyStopping"),  # was ", -8 epoch(s) before"
    ],
)
def test_the_onset_lead_is_said_without_a_negative_count(lead, text):
    from lit_recipes.callbacks.doctor_rules import lead_text

    assert lead_text(lead) == text


def test_warming_up_is_shown_without_a_confidence():
    """A kept `warming_up` carried confidence 0.00 (the support of "no judgement yet"): meaningless."""
    from rich.console import Console

    from lit_recipes.callbacks.doctor_report import validation_line
    from lit_recipes.callbacks.learning_curves import report_table

    warm = {"epoch": 1, "verdict": "warming_up", "confidence": 0.0, "evidence": "kept: not_converging"}
    judged = {"epoch": 2, "verdict": "healthy", "confidence": 0.934, "evidence": "gap small"}
    assert validation_line(warm) == "GapMonitor epoch 1: warming_up - kept: not_converging"
    assert validation_line(judged) == "GapMonitor epoch 2: healthy (confidence 0.93) - gap small"
    row = {"train_clean/loss": 0.5, "val/loss": 0.6, "train_clean/acc": 0.8, "val/acc": 0.78}
    row |= {"gap/acc": 0.02, "gap/loss_ratio": 1.2}
    table = report_table([{**row, **warm}, {**row, **judged}], {"verdict": "healthy", "confidence": 0.934})
    assert list(table.columns[-1]._cells) == ["-", "0.93"]
    console = Console(width=200, record=True)
    console.print(table)
    assert "(confidence 0.93)" in console.export_text() and "confidence 0.00" not in console.export_text()


def test_predictor_takes_a_read_only_image_array_without_a_torch_warning():
    """np.asarray(PIL image) is read-only; torch.from_numpy warned on it (exported.py)."""
    from PIL import Image

    from lit_recipes.exported import Predictor

    predictor = Predictor(torch.nn.Flatten(), {"num_classes": 2, "in_channels": 3, "input_size": [8, 8]})
    arr = np.asarray(Image.new("RGB", (8, 8), (10, 20, 30)))
    assert not arr.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = predictor.transform(arr)
    assert x.shape == (3, 8, 8) and x[:, 0, 0].tolist() == pytest.approx([10 / 255, 20 / 255, 30 / 255])
    assert not arr.flags.writeable  # the caller's array untouched


def _readme_python_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.timeout(600)
def test_readme_python_block_prints_the_final_verdict_and_writes_under_runs(tmp_path):
    """It printed history[-1]'s verdict (`warming_up` while the final one was `underfitting`) and wrote
    lr_find.png/.json, curves.png and diagnosis.json into the current folder."""
    (tmp_path / "example.py").write_text(_readme_python_block())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    out = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example.py", "runs"]
    written = tmp_path / "runs" / "readme"
    assert {"lr_find.png", "lr_find.json", "curves.png", "diagnosis.json"} <= {p.name for p in written.iterdir()}
    final = json.loads((written / "diagnosis.json").read_text())["final"]["verdict"]
    assert final != "warming_up"
    assert re.fullmatch(rf"lr \S+; final verdict {final}", out.stdout.strip().splitlines()[-1])
