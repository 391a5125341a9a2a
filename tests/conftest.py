"""Shared fixtures: every run is shrunk (few epochs, tmp_path, no logger unless a test wants one)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
BIN = Path(sys.executable).parent

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_SILENT", "true")


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


def _extract_cifar_subset(dest: Path, per_class_train: int, per_class_test: int) -> Path:
    """Unpack the first N images per class of each split from the shared CIFAR-10 JPEG tarball."""
    if not CIFAR_TARBALL.is_file():
        pytest.skip(f"CIFAR-10 JPEG tarball not found at {CIFAR_TARBALL}")
    limits = {"train": per_class_train, "test": per_class_test}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_TARBALL, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 4 or parts[-3] not in limits:
                continue
            key = (parts[-3], parts[-2])
            if taken.get(key, 0) >= limits[parts[-3]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            out = dest / parts[-3] / parts[-2] / parts[-1]
            out.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src:
                out.write_bytes(src.read())
    return dest


@pytest.fixture(scope="session")
def cifar_jpeg_root(tmp_path_factory) -> Path:
    """A small CIFAR-10 JPEG tree in ImageFolder layout: 40 train / 10 test images per class."""
    return _extract_cifar_subset(tmp_path_factory.mktemp("cifar10-jpeg"), 40, 10)


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
