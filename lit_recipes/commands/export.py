"""``lit-recipes export``: a checkpoint's model as ``model.pt`` (a plain state_dict) + ``model.json``.

Usage::

    lit-recipes export runs/lit-recipes/<run>/checkpoints/last.ckpt model_out/

The exported folder loads without Lightning (:mod:`lit_recipes.exported`, ``lit-recipes predict --model``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

from lit_recipes.artifacts import atomic_write, save_json
from lit_recipes.checkpoints import check_state_dict, load_checkpoint
from lit_recipes.errors import BadInput, OverwriteRefused
from lit_recipes.module import ClassifierModule, export_state


def export_model(
    ckpt_path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``model.pt`` (a plain state_dict) and ``model.json`` (name and arguments) to ``out_dir``.

    A non-empty ``out_dir`` is refused unless ``overwrite``; the checkpoint is checked before
    anything is created, and a failed export leaves no folder behind.

    Load them again without Lightning::

        spec = json.load(open("out/model.json"))
        net = create_model(spec["model"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                           **spec["model_kwargs"]); net.load_state_dict(torch.load("out/model.pt", weights_only=True))
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
    from lit_recipes.exported import check_spec, checkpoint_spec

    spec = {**spec, **checkpoint_spec(ckpt, ckpt_path)}  # + class names, input size, mean/std, eval transform
    check_spec(spec, ckpt_path)  # what load_exported will check: refused here, before model.pt is written
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


__all__ = ["export_main", "export_model"]
