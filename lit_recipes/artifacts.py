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
from typing import TYPE_CHECKING, Any

from lit_recipes.errors import raise_disk_full

if TYPE_CHECKING:  # Lightning is imported where it is used: predicting and exported models stay Lightning-free
    import lightning as L

RUN_FILE = "run.json"
RUN_DIR_ATTR = "lit_recipes_run_dir"


def run_dir(trainer: L.Trainer) -> Path:
    """The folder a command writes into: the run folder the CLI chose (``runs/<recipe>/<stamp>-<id>``,
    or its ``test``/``predict`` sub-folder), else ``<save_dir>/<project>/<run id>`` for W&B,
    ``trainer.log_dir`` for other loggers, ``default_root_dir`` with no logger. Created if missing."""
    from lightning.pytorch.loggers import WandbLogger

    chosen = getattr(trainer, RUN_DIR_ATTR, None)
    logger = trainer.logger
    if chosen is not None:
        path = Path(chosen)
    elif isinstance(logger, WandbLogger):
        path = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / str(logger.version)
    elif logger is not None and trainer.log_dir is not None:
        path = Path(trainer.log_dir)
    else:
        path = Path(trainer.default_root_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def set_run_dir(trainer: L.Trainer, path: str | os.PathLike) -> None:
    """Make :func:`run_dir` of ``trainer`` return ``path`` (the CLI's run folder)."""
    setattr(trainer, RUN_DIR_ATTR, Path(path))


def new_run_id(length: int = 8) -> str:
    """A short random run id (lowercase letters and digits, as W&B's)."""
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def create_run_folder(root: str | os.PathLike, recipe: str, run_id: str | None = None, now=None) -> Path:
    """Create ``<root>/<recipe>/<YYYYmmdd-HHMMSS>-<id>`` (never an existing folder) and return it."""
    import datetime as _dt
    import re

    recipe = re.sub(r"[^A-Za-z0-9_.-]+", "_", recipe).strip("._") or "run"
    now = now or _dt.datetime.now()
    for _ in range(20):
        rid = run_id or new_run_id()
        path = Path(root) / recipe / f"{now:%Y%m%d-%H%M%S}-{rid}"
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            if run_id is not None:
                raise
    raise FileExistsError(f"could not create a new run folder under {Path(root) / recipe}")  # pragma: no cover


def find_run_folder(path: str | os.PathLike) -> Path | None:
    """The run folder (holding ``run.json``) that ``path`` (a checkpoint) lies in, or ``None``."""
    p = Path(path).resolve()
    for parent in list(p.parents)[:4]:
        if (parent / RUN_FILE).is_file():
            return parent
    return None


def read_run_info(folder: str | os.PathLike) -> dict:
    """The ``run.json`` of a run folder (``{}`` when missing or unreadable)."""
    try:
        data = json.loads((Path(folder) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def unique_path(path: str | os.PathLike) -> Path:
    """``path`` if free, else ``<stem>-2<suffix>``, ``-3`` ...: a name nothing else uses."""
    path = Path(path)
    if not path.exists():
        return path
    n = 2
    while True:
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1


def unique_subfolder(parent: str | os.PathLike, name: str) -> Path:
    """Create and return ``parent/name`` (or ``name-2``, ``name-3`` ... when taken): never an existing one."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = parent / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir(exist_ok=False)
            return path
        except FileExistsError:
            n += 1


def fresh_folder(path: str | os.PathLike, replaceable: tuple[str, ...] = (), sub: str | None = None) -> Path:
    """A folder for a command's output that holds no other command's files.

    ``path`` itself when it is new, empty, or holds only files named in ``replaceable`` (the same
    command's earlier output, which the caller replaces); otherwise a new ``path/<sub>`` (``sub``
    given; ``<sub>-2`` ... when taken) or a new sibling ``<name>-2``, ``-3`` ... Created before it
    is returned."""
    path = Path(path)
    if not path.exists():
        path.mkdir(parents=True)
        return path
    if path.is_dir() and all(p.is_file() and p.name in replaceable for p in path.iterdir()):
        return path
    if sub is not None and path.is_dir():
        return unique_subfolder(path, sub)
    return unique_subfolder(path.parent, path.name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary file in the same folder, which then
    replaces ``path`` (a reader never sees half a file; on an error the old file stays and the
    temporary one is removed). The file follows the umask. Returns ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise_disk_full(err, path)
        raise
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename: a crash leaves the old file or the new one
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written artifact follows the umask
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise_disk_full(err, path)
        raise
    return path


def save_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8), atomically."""
    data = text.encode()
    return atomic_write(Path(path), lambda fh: fh.write(data))


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    data = json.dumps(obj, indent=2, sort_keys=False, default=_json_default).encode()
    return atomic_write(Path(path), lambda fh: fh.write(data))


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(Path(path), lambda fh: fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def log_image(trainer: L.Trainer, key: str, path: str | os.PathLike, step: int | None = None) -> None:
    """Log a PNG file to every W&B logger of ``trainer`` (a no-op without W&B)."""
    from lightning.pytorch.loggers import WandbLogger

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
