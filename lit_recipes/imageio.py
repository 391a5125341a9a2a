"""Image decoding shared by the datamodules and the exported predictor (numpy + PIL, no Lightning).

One decoder, so that a model exported with :func:`lit_recipes.load_exported` sees exactly the pixels
its datamodule fed it during evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lit_recipes.errors import BadInput

WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grey (PNG, TIFF); "I" as Pillow opens some


def _silence_bomb_warning() -> None:
    """PIL warns on an image above ``Image.MAX_IMAGE_PIXELS`` and decodes it anyway; :func:`read_image`
    refuses such an image itself (one error naming the file), so the warning is not shown."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def to_8bit(im):
    """A 16-bit grey PIL image as an 8-bit ``L`` image, scaled (``v * 255 / 65535``, rounded), not
    clipped at 255 (Pillow's own ``convert("L")`` clips: a 16-bit photo would come out nearly white)."""
    from PIL import Image

    arr = np.asarray(im, dtype=np.int64)
    arr = (np.clip(arr, 0, 65535) * 255 + 32767) // 65535
    return Image.fromarray(arr.astype(np.uint8), mode="L")


def read_image(path: str | Path, mode: str, hw: Sequence[int] | None) -> np.ndarray:
    """Decode ``path`` as a uint8 HWC array in ``mode`` (``RGB``/``L``), resized to ``hw``; the
    datamodules' own decoding (palette/alpha handling and PIL bilinear resizing included).

    16-bit grey images are scaled to 8 bits (:func:`to_8bit`); an image with more pixels than
    ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb, or a genuinely huge image) is refused.

    Raises:
        ValueError: the file cannot be decoded or is too large (names the file).
    """
    from PIL import Image, UnidentifiedImageError

    _silence_bomb_warning()
    try:
        with Image.open(path) as im:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and im.width * im.height > limit:
                raise _too_large(path, f"{im.width}x{im.height} = {im.width * im.height} pixels, limit {limit}")
            if im.mode in WIDE_MODES:
                im = to_8bit(im)
            if im.mode in ("P", "PA") and mode == "RGB":
                im = im.convert("RGBA")
            arr = np.array(im.convert(mode))
    except Image.DecompressionBombError as err:
        raise _too_large(path, str(err).split(",")[0]) from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        if isinstance(err, BadInput):
            raise
        raise ValueError(f"cannot read image {path}: {err}") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    return resize_array(arr, hw)


def _too_large(path: str | Path, what: str) -> BadInput:
    return BadInput(
        f"image too large to decode safely ({what}; a decompression bomb?): {path}",
        "if the image is genuine, raise PIL.Image.MAX_IMAGE_PIXELS (or resize it)",
    )


def resize_array(image: np.ndarray, hw: Sequence[int] | None) -> np.ndarray:
    """Resize a uint8 HWC array to ``hw`` with PIL bilinear (a no-op at that size)."""
    if hw is None or image.shape[:2] == tuple(hw):
        return image
    from PIL import Image

    squeeze = image.ndim == 3 and image.shape[2] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    out = np.array(pil.resize((int(hw[1]), int(hw[0])), Image.BILINEAR))
    return out[..., None] if out.ndim == 2 else out
