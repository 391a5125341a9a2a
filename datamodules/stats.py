"""Exact per-channel mean/std of a split, streamed, optionally cached as JSON beside the data."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lit_recipes.artifacts import save_json
from lit_recipes.datamodules.sources import Source


def channel_stats(
    source: Source, indices: Sequence[int], cache_path: str | Path | None = None, tag: str | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``source[indices]`` in [0, 1] units.

    Streams one image at a time with float64 sums, so the result is exact for any data set size.
    With ``cache_path``, results are stored in that JSON file keyed by a hash of the indices and
    reused on the next call. ``tag`` (e.g. a fingerprint of the files and the image size) is added
    to the key, so different variants of the same data never share an entry.
    """
    indices = np.asarray(indices, dtype=np.int64)
    key = hashlib.sha1(indices.tobytes()).hexdigest()[:16] + f"-{len(indices)}"
    if tag:
        key = f"{tag}-{key}"
    cache = {}
    if cache_path is not None and Path(cache_path).is_file():
        try:
            cache = json.loads(Path(cache_path).read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
        if key in cache:
            return tuple(cache[key]["mean"]), tuple(cache[key]["std"])
    total = None
    total_sq = None
    count = 0
    for i in indices:
        image, _ = source.get(int(i))
        x = np.asarray(image, dtype=np.float64).reshape(-1, image.shape[-1]) / 255.0
        total = x.sum(0) if total is None else total + x.sum(0)
        total_sq = (x * x).sum(0) if total_sq is None else total_sq + (x * x).sum(0)
        count += x.shape[0]
    if count == 0:
        raise ValueError("cannot compute statistics of an empty split")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.where(std < 1e-8, 1.0, std)
    result = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if cache_path is not None:
        cache[key] = {"mean": result[0], "std": result[1], "num_images": len(indices)}
        try:
            save_json(cache_path, cache)
        except OSError:
            pass  # a read-only data folder: statistics are recomputed next time
    return result
