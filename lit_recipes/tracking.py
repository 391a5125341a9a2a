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
        if self._wandb_init.get("anonymous") is None:  # W&B warns about the (deprecated) key even when unset
            self._wandb_init.pop("anonymous", None)


def read_offline_run(path: str | os.PathLike) -> dict:
    """Read an offline W&B run (``offline-run-*/run-*.wandb``) without the network.

    Returns ``{"history": [row dicts], "summary": {...}, "config": {...}}`` decoded from the run's
    protobuf records (the same file ``wandb sync`` uploads). Handy to check what a run logged.
    """
    import json as _json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if not files:
            raise FileNotFoundError(f"no run-*.wandb file in {path}")
        path = files[0]
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    block, pos = 32768, 7  # a 7-byte ':W&B' header, then LevelDB-style log blocks
    records, pending = [], b""
    while pos + 7 <= len(data):
        left_in_block = block - (pos % block)
        if left_in_block < 7:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left_in_block
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # FULL
            records.append(chunk)
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        elif kind == 4:  # LAST
            records.append(pending + chunk)
            pending = b""
    out: dict = {"history": [], "summary": {}, "config": {}}
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append(
                {i.key or "/".join(i.nested_key): _json.loads(i.value_json) for i in rec.history.item}
            )
        elif kind == "summary":
            for i in rec.summary.update:
                out["summary"][i.key or "/".join(i.nested_key)] = _json.loads(i.value_json)
        elif kind == "config":
            for i in rec.config.update:
                out["config"][i.key or "/".join(i.nested_key)] = _json.loads(i.value_json)
    last: dict = {}
    for row in out["history"]:  # the summary defaults to the last value of every key, as W&B shows it
        last.update({k: v for k, v in row.items() if not k.startswith("_")})
    out["summary"] = {**last, **out["summary"]}
    return out
