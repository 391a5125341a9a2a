"""Weights & Biases as the default tracker, offline by itself when there is no API key."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from lightning.pytorch.callbacks import Callback
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


PROBE_TIMEOUT_S = 10.0
_LOGIN_HINT = "run `wandb login` (or set WANDB_API_KEY), or log offline with WANDB_MODE=offline"


def _wandb_host() -> tuple[str, int]:
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    scheme, _, rest = url.partition("://")
    hostport = (rest or scheme).split("/")[0]
    host, _, port = hostport.partition(":")
    return host, int(port) if port.isdigit() else (80 if scheme == "http" else 443)


def _proxy_for(host: str) -> tuple[str, int] | None:
    import urllib.request

    proxies = urllib.request.getproxies()
    if urllib.request.proxy_bypass(host):
        return None
    url = proxies.get("https") or proxies.get("http")
    if not url:
        return None
    rest = url.split("://", 1)[-1].split("/")[0].rsplit("@", 1)[-1]
    host_, _, port = rest.partition(":")
    return host_, int(port) if port.isdigit() else 8080


def wandb_reachable(timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Can a TCP connection to W&B's server (or the configured proxy) open within ``timeout`` s?
    Name resolution runs in a thread, so a hanging DNS lookup cannot stall longer either."""
    import socket
    import threading

    host, port = _wandb_host()
    target = _proxy_for(host) or (host, port)
    result: dict = {}

    def probe() -> None:
        try:
            with socket.create_connection(target, timeout=timeout):
                result["ok"] = True
        except OSError as err:
            result["err"] = err.strerror or type(err).__name__

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if result.get("ok"):
        return True, ""
    return False, result.get("err", f"no answer in {timeout:g} s")


class _HoldRecords(logging.Filter):
    """On a handler while notices are held: keeps Lightning's records (in order, shared list)."""

    def __init__(self, handler: logging.Handler, held: list) -> None:
        super().__init__()
        self.handler, self.held = handler, held

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("lightning"):
            self.held.append((self.handler, record))
            return False
        return True


_hold: dict = {"depth": 0, "filters": [], "records": []}


def hold_notices() -> None:
    """Hold back the one-line notices printed while a command is being set up ("Seed set to 42",
    the W&B offline line, Lightning's "GPU available" lines ...: every ``lightning*`` log record)
    until :func:`release_notices`: a command that fails its checks prints its error line first and
    nothing before it; one that passes prints the same notices, in the same order, just before it
    runs. Nested holds are released by the outermost release."""
    _hold["depth"] += 1
    if _hold["depth"] > 1:
        return
    handlers: list[logging.Handler] = []
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", ""):
        for handler in logging.getLogger(name).handlers:
            if handler not in handlers:
                handlers.append(handler)
    for handler in handlers:
        f = _HoldRecords(handler, _hold["records"])
        handler.addFilter(f)
        _hold["filters"].append(f)


def release_notices(emit: bool) -> None:
    """Stop holding (see :func:`hold_notices`); ``emit``: print what was held, else drop it."""
    if _hold["depth"] == 0:
        return
    _hold["depth"] -= 1
    if _hold["depth"] > 0:
        return
    for f in _hold["filters"]:
        f.handler.removeFilter(f)
    records = list(_hold["records"])
    _hold["filters"].clear()
    _hold["records"].clear()
    if emit:
        for handler, record in records:
            handler.handle(record)


class ReleaseNotices(Callback):
    """Prints the notices held by :func:`hold_notices` once every setup hook has passed (the
    Trainer's ``on_fit_start``, or the start of ``validate``/``test``/``predict``): a run that fails
    while it is set up (a callback's or the datamodule's checks) prints its error line alone."""

    def on_fit_start(self, trainer, pl_module) -> None:
        release_notices(emit=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        release_notices(emit=True)

    def on_test_start(self, trainer, pl_module) -> None:
        release_notices(emit=True)

    def on_predict_start(self, trainer, pl_module) -> None:
        release_notices(emit=True)


def ensure_wandb_mode(save_dir: str | os.PathLike = ".") -> str:
    """Decide W&B's mode before a run starts; returns it.

    An explicit ``WANDB_MODE`` wins, except that ``online`` without an API key is an error (one line
    saying how to log in or go offline) instead of W&B's interactive prompt or a traceback. With
    no ``WANDB_MODE`` and no API key (``WANDB_API_KEY`` or a ``~/.netrc`` entry), W&B goes offline
    and one line says so. With a key but no connection to the server within
    ``PROBE_TIMEOUT_S`` seconds, it goes offline too (one line) instead of stalling for minutes.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode:
        if mode == "online" and not _has_wandb_credentials():
            from lit_recipes.errors import TrackingError

            raise TrackingError("WANDB_MODE=online but no W&B API key (WANDB_API_KEY or ~/.netrc)", _LOGIN_HINT)
        return mode
    sync = f"upload later with `wandb sync {Path(save_dir) / 'wandb'}/offline-run-*`"
    if _has_wandb_credentials():
        ok, why = wandb_reachable()
        if ok:
            return "online"
        os.environ["WANDB_MODE"] = "offline"
        host, _ = _wandb_host()
        rank_zero_info(f"W&B: cannot reach {host} ({why}), logging offline under {Path(save_dir) / 'wandb'}; {sync}")
        return "offline"
    os.environ["WANDB_MODE"] = "offline"
    rank_zero_info(f"W&B: no API key found, logging offline under {Path(save_dir) / 'wandb'}; {sync}")
    return "offline"


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that picks offline mode by itself when there is no API key or no
    connection, never prompts, and resumes the W&B run when given the ``id`` of an earlier one.

    ``save_dir`` defaults to ``runs`` (the CLI passes each run's own folder).

    Example:
        >>> from lit_recipes.tracking import WandbLogger
        >>> logger = WandbLogger(project="lit-recipes", save_dir="runs")  # doctest: +SKIP
    """

    def __init__(self, project: str = "lit-recipes", save_dir: str | None = None, **kwargs) -> None:
        save_dir = save_dir or "runs"
        try:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(err.errno, f"cannot create the W&B save_dir: {err.strerror}", str(save_dir)) from None
        ensure_wandb_mode(save_dir)
        kwargs.setdefault("settings", None)
        if kwargs["settings"] is None:
            import wandb

            # no console capture threads, no code saving, no update checks: quiet and quick to start;
            # init_timeout bounds the wait for the server (the probe above normally answers first)
            kwargs["settings"] = wandb.Settings(console="off", save_code=False, x_disable_stats=False, init_timeout=15)
        if kwargs.get("id") and "resume" not in kwargs:
            kwargs["resume"] = "allow"  # the same id continues that run (a resumed fit)
        super().__init__(project=project, save_dir=save_dir, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # W&B warns about the (deprecated) key even when unset
            self._wandb_init.pop("anonymous", None)


def offline_run_dirs(save_dir: str | os.PathLike, run_id: str | None = None) -> list[Path]:
    """The offline run folders (``wandb/offline-run-*``) under ``save_dir``, newest last."""
    pattern = f"offline-run-*-{run_id}" if run_id else "offline-run-*"
    return sorted((Path(save_dir) / "wandb").glob(pattern))


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
