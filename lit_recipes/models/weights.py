"""Safe loading of a weights file: ``torch.load(weights_only=True)`` only, each failure one error naming the file.

This is the one implementation of the safe load; :func:`lit_recipes.checkpoints.safe_torch_load`
uses it with the checkpoint error types. It sits in ``models/`` (no Lightning, nothing of
``lit_recipes`` above it) because a torchvision model loads a local weights file itself.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch


class WeightsError(ValueError):
    """A weights file that cannot be loaded safely; ``hint`` (optional) says what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


UNSAFE_HINT = (
    "only a file written by lit-recipes / Lightning / torch.save of tensors loads; "
    "re-save it or load it by hand with torch.load(..., weights_only=False) if you trust it"
)
TRUNCATED_HINT = "a copy or a save that was cut short leaves a partial file; use another copy"


def safe_load(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    mmap: bool = False,
    what: str = "weights file",
    error: type[Exception] = WeightsError,
    unsafe_error: type[Exception] = WeightsError,
    unsafe_hint: str = UNSAFE_HINT,
    truncated_hint: str = TRUNCATED_HINT,
) -> Any:
    """``torch.load(path, weights_only=True)``; a refused pickle raises ``unsafe_error``, a truncated or
    corrupt file ``error``, each one line naming the file (``what`` names the kind of file)."""
    p = Path(path)
    try:
        return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        text = str(err).strip()
        if "weights only load failed" in text.lower() or "weights_only" in text:
            raise unsafe_error(f"{what} holds Python objects a safe load refuses: {p}", unsafe_hint) from None
        first = text.splitlines()[0] if text else ""
        raise error(f"{what} is not readable (corrupt: {first}): {p}") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError, KeyError, IndexError):
        raise error(f"{what} is truncated or corrupt (torch.load cannot read it): {p}", truncated_hint) from None


__all__ = ["WeightsError", "safe_load"]
