"""Checked checkpoint loading: every way a ``--ckpt_path`` can be wrong becomes one line naming the file.

In order: the path exists, is a file, is not an exported model (``model.pt`` / ``model.json``),
loads with ``weights_only=True`` (a truncated or corrupt file says so), is a Lightning checkpoint
(has ``state_dict`` and ``pytorch-lightning_version``), was trained with the configured
architecture (:func:`check_architecture`) and has the configured tensor shapes
(:func:`check_state_dict`).

Every Trainer the project builds (``fit``/``validate``/``test``/``predict``, ``kfold``, ``search``)
gets :class:`AtomicCheckpointIO` (:func:`install_checkpoint_io`): checkpoints are written to a
temporary file in the target folder, fsynced and renamed onto the target (a crash or a full disk
never leaves half a checkpoint over a good one), and every checkpoint Lightning reads (resume,
``ckpt_path="best"``) is loaded with ``weights_only=True``, so no file can run code when loaded.
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


class UnsafeCheckpoint(CheckpointError):
    """The file holds Python objects that ``torch.load(weights_only=True)`` refuses (it could run code
    if loaded otherwise): never redone or skipped silently, always reported."""


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with its failures as one :class:`CheckpointError` naming
    the file (:class:`UnsafeCheckpoint` when the file holds objects the safe unpickler refuses)."""
    from lit_recipes.models.weights import safe_load

    return safe_load(
        path,
        map_location=map_location,
        mmap=mmap,
        what="checkpoint",
        error=CheckpointError,
        unsafe_error=UnsafeCheckpoint,
        unsafe_hint="only a checkpoint written by lit-recipes / Lightning with plain hyperparameters loads; "
        "re-save it or load it by hand with torch.load(..., weights_only=False) if you trust it",
        truncated_hint="a copy or a save that was cut short leaves a partial file; use another checkpoint of the run",
    )


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a Lightning checkpoint safely (``weights_only=True``) or raise :class:`CheckpointError`
    (``mmap=True`` maps the tensors instead of reading them: a cheap look at the counters)."""
    import torch

    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"checkpoint not found: {p}",
            "a run's checkpoints are in <run folder>/checkpoints/ (the fit summary names the best)",
        )
    if p.is_dir():
        if (p / "model.pt").is_file() or (p / "model.json").is_file():
            raise CheckpointError(
                f"{p} is an exported model folder (model.pt, model.json), not a checkpoint", _EXPORTED_HINT
            )
        raise CheckpointError(
            f"checkpoint is a folder, not a file: {p}",
            "pass the .ckpt file inside it, e.g. <run folder>/checkpoints/last.ckpt",
        )
    if p.suffix.lower() in (".json", ".yaml", ".yml", ".csv", ".txt", ".png", ".jpg"):
        raise CheckpointError(f"not a checkpoint: {p} is a {p.suffix.lstrip('.').upper()} file", _EXPORTED_HINT)
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {p}")
    ckpt = safe_torch_load(p, map_location=map_location, mmap=mmap)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise CheckpointError(
                f"not a Lightning checkpoint: {p} is a plain state_dict (an exported model.pt?)", _EXPORTED_HINT
            )
        raise CheckpointError(f"not a Lightning checkpoint (no state_dict): {p}", _EXPORTED_HINT)
    if "pytorch-lightning_version" not in ckpt:
        raise CheckpointError(f"not a Lightning checkpoint (no pytorch-lightning_version): {p}", _EXPORTED_HINT)
    return ckpt


def check_resume_files(folder: str | os.PathLike, pattern: str = "**/checkpoints/last.ckpt") -> int:
    """Safe-load (``weights_only=True``, memory-mapped) every resume checkpoint under ``folder`` before a
    rerun uses any: a file the safe unpickler refuses raises :class:`UnsafeCheckpoint` naming it (a
    truncated one is left to the resume itself, which redoes that fold). Returns the number checked."""
    n = 0
    for path in sorted(Path(folder).glob(pattern)):
        n += 1
        try:
            safe_torch_load(path, mmap=True)
        except UnsafeCheckpoint:
            raise
        except CheckpointError:
            pass
    return n


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


# ---------------------------------------------------------------------------------- CheckpointIO
_IO_CLASS: type | None = None


def _io_class() -> type:
    """:class:`AtomicCheckpointIO`, built on first use (importing this module does not import Lightning:
    the predictor loads checkpoints through :func:`load_checkpoint` without it)."""
    global _IO_CLASS
    if _IO_CLASS is not None:
        return _IO_CLASS
    import io

    import torch
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    from lit_recipes.artifacts import atomic_write

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Lightning's ``TorchCheckpointIO``, but every save is atomic (temporary file in the target
        folder, fsync, ``os.replace``; the umask's permissions; a full disk is one
        :class:`~lit_recipes.errors.DiskFull` naming the folder, the previous file intact) and every
        load is ``weights_only=True`` (a failure is one :class:`CheckpointError` naming the file)."""

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
            if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own writer
                return super().save_checkpoint(checkpoint, path, storage_options)
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)  # serialised before the file is opened: a failure here writes nothing
            data = buffer.getbuffer()
            atomic_write(path, lambda fh: fh.write(data))
            return None

        def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
            if "://" in str(path):
                return super().load_checkpoint(path, map_location=map_location, weights_only=True)
            if not Path(path).is_file():
                raise CheckpointError(f"checkpoint not found: {path}")
            return safe_torch_load(path, map_location=map_location if map_location is not None else "cpu")

    AtomicCheckpointIO.__module__ = __name__  # picklable as lit_recipes.checkpoints.AtomicCheckpointIO (spawn)
    AtomicCheckpointIO.__qualname__ = "AtomicCheckpointIO"
    _IO_CLASS = AtomicCheckpointIO
    return _IO_CLASS


def __getattr__(name: str) -> Any:
    if name == "AtomicCheckpointIO":
        return _io_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install_checkpoint_io(trainer: Any) -> Any:
    """Give ``trainer`` :class:`AtomicCheckpointIO` in place of Lightning's default ``TorchCheckpointIO``
    (also under an ``AsyncCheckpointIO`` wrapper). A user's own CheckpointIO plugin, and strategies
    with their own writer (XLA, DeepSpeed, FSDP), are left as they are. Returns ``trainer``."""
    from lit_recipes.lightning_compat import replace_default_checkpoint_io

    replace_default_checkpoint_io(trainer.strategy, _io_class())
    return trainer


__all__ = [
    "UnsafeCheckpoint",
    "architecture",
    "check_architecture",
    "check_resume_files",
    "check_state_dict",
    "install_checkpoint_io",
    "load_checkpoint",
    "safe_torch_load",
]
