"""Checked checkpoint loading: every way a ``--ckpt_path`` can be wrong becomes one line naming the file.

In order: the path exists, is a file, is not an exported model (``model.pt`` / ``model.json``),
loads with ``weights_only=True`` (a truncated or corrupt file says so), is a Lightning checkpoint
(has ``state_dict`` and ``pytorch-lightning_version``), was trained with the configured
architecture (:func:`check_architecture`) and has the configured tensor shapes
(:func:`check_state_dict`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lit_recipes.errors import CheckpointError

ARCH_KEYS = ("model", "num_classes", "in_channels", "model_kwargs")
SPECIAL = ("last", "best", "hpc", "registry")
_EXPORTED_HINT = (
    "an exported model is loaded with lit_recipes.load_exported(<its folder>); --ckpt_path takes a "
    ".ckpt written by `lit-recipes fit` (<run folder>/checkpoints/*.ckpt)"
)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a Lightning checkpoint safely (``weights_only=True``) or raise :class:`CheckpointError`."""
    import pickle

    import torch

    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"checkpoint not found: {p}",
            "a run's checkpoints are in <run folder>/checkpoints/ (the fit summary names the best)",
        )
    if p.is_dir():
        exported = (p / "model.pt").is_file() and (p / "model.json").is_file()
        raise CheckpointError(
            f"checkpoint is a folder, not a file: {p}",
            _EXPORTED_HINT if exported else "pass the .ckpt file inside it, e.g. <run folder>/checkpoints/last.ckpt",
        )
    if p.suffix.lower() in (".json", ".yaml", ".yml", ".csv", ".txt", ".png", ".jpg"):
        raise CheckpointError(f"not a checkpoint: {p} is a {p.suffix.lstrip('.').upper()} file", _EXPORTED_HINT)
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {p}")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if "weights only load failed" in str(err).lower() or "weights_only" in str(err):
            raise CheckpointError(
                f"checkpoint holds Python objects a safe load refuses: {p}",
                "only a checkpoint written by lit-recipes / Lightning with plain hyperparameters loads; "
                "re-save it or load it by hand with torch.load(..., weights_only=False) if you trust it",
            ) from None
        raise CheckpointError(f"checkpoint is not readable (corrupt: {first}): {p}") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError):
        raise CheckpointError(
            f"checkpoint is truncated or corrupt (torch.load cannot read it): {p}",
            "a copy or a save that was cut short leaves a partial file; use another checkpoint of the run",
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise CheckpointError(
                f"not a Lightning checkpoint: {p} is a plain state_dict (an exported model.pt?)", _EXPORTED_HINT
            )
        raise CheckpointError(f"not a Lightning checkpoint (no state_dict): {p}", _EXPORTED_HINT)
    if "pytorch-lightning_version" not in ckpt:
        raise CheckpointError(f"not a Lightning checkpoint (no pytorch-lightning_version): {p}", _EXPORTED_HINT)
    return ckpt


def architecture(hparams: dict[str, Any] | None) -> dict[str, Any]:
    """The architecture-defining hyperparameters (model name, classes, channels, model kwargs)."""
    hparams = dict(hparams or {})
    out = {k: hparams.get(k) for k in ARCH_KEYS if k in hparams}
    if not out.get("model_kwargs"):
        out.pop("model_kwargs", None)
    return out


def _fmt(arch: dict[str, Any]) -> str:
    model = arch.get("model")
    name = model if isinstance(model, str) else type(model).__name__ if model is not None else "?"
    rest = ", ".join(f"{k}={arch[k]}" for k in ARCH_KEYS[1:] if k in arch)
    return f"{name} ({rest})" if rest else str(name)


def check_architecture(ckpt: dict[str, Any], path: str | os.PathLike, configured: dict[str, Any]) -> None:
    """Raise if the checkpoint's architecture hyperparameters differ from the configured model's."""
    saved = architecture(ckpt.get("hyper_parameters"))
    mine = architecture(configured)
    keys = [k for k in ARCH_KEYS if k in saved and k in mine]
    if not isinstance(saved.get("model"), str) or not isinstance(mine.get("model"), str):
        keys = [k for k in keys if k != "model"]
    differ = [k for k in keys if saved.get(k) != mine.get(k)]
    if differ:
        raise CheckpointError(
            f"checkpoint {path} holds {_fmt(saved)}, the config builds {_fmt(mine)} (differs in {', '.join(differ)})",
            "pass the config the checkpoint was trained with (its run folder's config.yaml)",
        )


def check_state_dict(ckpt: dict[str, Any], path: str | os.PathLike, module: Any) -> None:
    """Raise if the checkpoint's tensors do not fit ``module`` (missing/unexpected keys, other shapes)."""
    saved = ckpt.get("state_dict") or {}
    mine = module.state_dict()
    missing = [k for k in mine if k not in saved]
    unexpected = [k for k in saved if k not in mine]
    strict = getattr(module, "strict_loading", True)
    if strict and (missing or unexpected):
        first = missing[0] if missing else unexpected[0]
        raise CheckpointError(
            f"checkpoint {path} does not fit the configured model: {len(missing)} missing and "
            f"{len(unexpected)} unexpected tensors (first: {first})",
            "pass the config the checkpoint was trained with (its run folder's config.yaml)",
        )
    for key, value in mine.items():
        other = saved.get(key)
        if other is None or not hasattr(other, "shape") or not hasattr(value, "shape"):
            continue
        if tuple(other.shape) != tuple(value.shape):
            raise CheckpointError(
                f"checkpoint {path} does not fit the configured model: {key} has shape "
                f"{list(other.shape)} in the checkpoint, {list(value.shape)} in the model",
                "pass the config the checkpoint was trained with (its run folder's config.yaml)",
            )


__all__ = ["architecture", "check_architecture", "check_state_dict", "load_checkpoint"]
