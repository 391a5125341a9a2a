"""Shared fixtures: every run is shrunk (few epochs, tmp_path, no logger unless a test wants one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REQUIRE_DATA_ENV = "LIT_RECIPES_REQUIRE_DATA"  # CI sets it: data-dependent tests fail instead of skipping
BIN = Path(sys.executable).parent

# the smallest real digits run: 2 training steps, no logger (tests write it as tiny.yaml)
TINY = """\
trainer:
  max_epochs: 1
  limit_train_batches: 2
  limit_val_batches: 1
  limit_test_batches: 1
  enable_progress_bar: false
  enable_model_summary: false
  logger: false
model:
  class_path: lit_recipes.module.ClassifierModule
  init_args:
    model: lenet5_bn
data:
  class_path: lit_recipes.datamodules.DigitsDataModule
  init_args:
    batch_size: 32
"""

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _restore_environ():
    """Commands run in-process set variables (e.g. WANDB_MODE=offline): undo them after every test,
    so no test's outcome depends on which tests ran before it."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def trainer_kwargs(tmp_path):
    """Small, quiet, CPU-only Trainer arguments."""
    return dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )


@pytest.fixture
def digits_dm():
    from lit_recipes.datamodules import DigitsDataModule

    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")
    return dm


def one_step_checkpoint(path: Path) -> Path:
    """A real Lightning checkpoint of lenet5_bn after one training step on digits (seed 0), at ``path``."""
    import lightning as L

    from lit_recipes.datamodules import DigitsDataModule
    from lit_recipes.module import ClassifierModule

    L.seed_everything(0)
    model = ClassifierModule("lenet5_bn", num_classes=10, in_channels=1, lr=0.05)
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(path.parent),
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    trainer.save_checkpoint(path)
    return path


def cifar_subset(per_class_train: int, per_class_test: int, classes=None) -> Path:
    """A cached CIFAR-10 JPEG subset (ImageFolder layout) through :mod:`lit_recipes.localdata`.

    Without ``LIT_RECIPES_DATA`` the calling test skips with one line; with ``LIT_RECIPES_REQUIRE_DATA=1``
    (CI) it fails instead, so a CI run without its data cannot go green.
    """
    from lit_recipes.localdata import DataNotFound, cifar10_jpeg_subset

    try:
        return cifar10_jpeg_subset(per_class_train=per_class_train, per_class_test=per_class_test, classes=classes)
    except DataNotFound as err:
        if os.environ.get(REQUIRE_DATA_ENV, "").strip() not in ("", "0"):
            pytest.fail(f"{REQUIRE_DATA_ENV} is set but the data is missing: {err}", pytrace=False)
        pytest.skip(f"no CIFAR-10 JPEGs: {err}")


@pytest.fixture(scope="session")
def cifar_jpeg_root(tmp_path_factory) -> Path:
    """A small CIFAR-10 JPEG tree in ImageFolder layout: 40 train / 10 test images per class (a private copy:
    tests may write cache files into it)."""
    src = cifar_subset(40, 10)
    dest = tmp_path_factory.mktemp("cifar10-jpeg")
    shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
    return dest


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 600):
    """Run ``lit-recipes ARGS`` in a subprocess; returns the CompletedProcess (text output)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(BIN / "lit-recipes"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=timeout,
    )


def run_torchrun(script: list[str], nproc: int = 2, env: dict | None = None, cwd: Path | None = None, timeout=600):
    """Run ``torchrun --standalone --nproc_per_node=N SCRIPT...`` on CPU (gloo)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(
        [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", *script],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=timeout,
    )


@pytest.fixture
def cli_runner():
    return run_cli


@pytest.fixture
def torchrun():
    return run_torchrun


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)
