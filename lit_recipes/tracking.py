"""Weights & Biases as the default tracker, offline by itself when there is no API key."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_info

log = logging.getLogger(__name__)


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        hosts = netrc.netrc(str(path)).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    return base in hosts


def ensure_wandb_mode(save_dir: str | os.PathLike = ".") -> str:
    """Decide W&B's mode before a run starts; returns it.

    An explicit ``WANDB_MODE`` always wins. Otherwise, with no API key (``WANDB_API_KEY`` or a
    ``~/.netrc`` entry), W&B goes offline: one line says so and how to upload the run later. It
    never prompts and never waits on the network.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if _has_wandb_credentials():
        return "online"
    os.environ["WANDB_MODE"] = "offline"
    rank_zero_info(
        f"W&B: no API key found, logging offline under {Path(save_dir) / 'wandb'}; "
        "upload later with `wandb sync <that dir>/offline-run-*`"
    )
    return "offline"


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that picks offline mode by itself when there is no API key.

    Example:
        >>> from lit_recipes.tracking import WandbLogger
        >>> logger = WandbLogger(project="lit-recipes", save_dir="runs")  # doctest: +SKIP
    """

    def __init__(self, project: str = "lit-recipes", save_dir: str = "runs", **kwargs) -> None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        ensure_wandb_mode(save_dir)
        kwargs.setdefault("settings", None)
        if kwargs["settings"] is None:
            import wandb

            # no console capture threads, no code saving, no update checks: quiet and quick to start
            kwargs["settings"] = wandb.Settings(console="off", save_code=False, x_disable_stats=False)
        super().__init__(project=project, save_dir=save_dir, **kwargs)
