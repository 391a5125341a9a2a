"""Where a run writes its files, and how they reach W&B.

Every callback and driver writes plots (PNG), JSON results and checkpoints under
:func:`run_dir`, atomically (a crash never leaves half a file over a good one), and logs images
to W&B when a :class:`~lightning.pytorch.loggers.WandbLogger` is attached.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger


def run_dir(trainer: L.Trainer) -> Path:
    """The run directory of ``trainer``: ``<save_dir>/<project>/<run id>`` for W&B,
    ``trainer.log_dir`` for other loggers, ``default_root_dir`` with no logger. Created if missing."""
    logger = trainer.logger
    if isinstance(logger, WandbLogger):
        path = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / str(logger.version)
    elif logger is not None and trainer.log_dir is not None:
        path = Path(trainer.log_dir)
    else:
        path = Path(trainer.default_root_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    data = json.dumps(obj, indent=2, sort_keys=False, default=_json_default).encode()
    return _atomic_write(Path(path), lambda fh: fh.write(data))


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        return _atomic_write(Path(path), lambda fh: fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def log_image(trainer: L.Trainer, key: str, path: str | os.PathLike, step: int | None = None) -> None:
    """Log a PNG file to every W&B logger of ``trainer`` (a no-op without W&B)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)


def _json_default(o: Any) -> Any:
    try:
        import numpy as np
        import torch

        if isinstance(o, torch.Tensor):
            return o.detach().cpu().tolist()
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
