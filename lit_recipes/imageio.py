"""Image decoding shared by the datamodules and the exported predictor (numpy + PIL, no Lightning).

One decoder, so that a model exported with :func:`lit_recipes.load_exported` sees exactly the pixels
its datamodule fed it during evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def read_image(path: str | Path, mode: str, hw: Sequence[int] | None) -> np.ndarray:
    """Decode ``path`` as a uint8 HWC array in ``mode`` (``RGB``/``L``), resized to ``hw``; the
    datamodules' own decoding (palette/alpha handling and PIL bilinear resizing included)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("P", "PA") and mode == "RGB":
                im = im.convert("RGBA")
            arr = np.array(im.convert(mode))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    return resize_array(arr, hw)


def resize_array(image: np.ndarray, hw: Sequence[int] | None) -> np.ndarray:
    """Resize a uint8 HWC array to ``hw`` with PIL bilinear (a no-op at that size)."""
    if hw is None or image.shape[:2] == tuple(hw):
        return image
    from PIL import Image

    squeeze = image.ndim == 3 and image.shape[2] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    out = np.array(pil.resize((int(hw[1]), int(hw[0])), Image.BILINEAR))
    return out[..., None] if out.ndim == 2 else out
