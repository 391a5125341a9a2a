"""The project's error types and the one error boundary every ``lit-recipes`` command runs inside.

A known failure (bad input, a missing or unreadable file, a refused overwrite) reaches the user as
one line, ``lit-recipes: error: <what> (<file/key/value>)``, plus at most one ``lit-recipes: hint:``
line, and exit status 2.
Anything else is a bug: one line naming the exception and exit status 1, with the traceback only
under ``--debug`` or ``LIT_RECIPES_DEBUG=1``.

This module imports neither torch nor Lightning.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

DEBUG_ENV = "LIT_RECIPES_DEBUG"
PREFIX = "lit-recipes: "
MAX_LINE = 400


class LitRecipesError(Exception):
    """A failure the user can fix; ``hint`` (optional) is the one line that says how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class BadInput(LitRecipesError, ValueError):
    """An argument, a config value or a file that cannot be used as given."""


class ConfigError(BadInput):
    """The command line or a config file does not parse (shortened jsonargparse/YAML errors)."""


class CheckpointError(BadInput):
    """A ``--ckpt_path`` (or ``export``'s checkpoint) that is missing, not a Lightning checkpoint,
    unreadable, or of another architecture than the config."""


class OverwriteRefused(LitRecipesError, FileExistsError):
    """A command would replace files it did not write (pass ``--overwrite`` where offered)."""


class TrackingError(LitRecipesError):
    """W&B cannot start as configured (e.g. ``WANDB_MODE=online`` without an API key)."""


class DiskFull(LitRecipesError, OSError):
    """A write failed because the disk (or the user's quota) is full: names the folder written to.

    Raised by the atomic writers (:func:`lit_recipes.artifacts.atomic_write`, the checkpoint
    plugin); the file that was being replaced is intact."""


class NonFiniteLoss(LitRecipesError):
    """Training stopped on a non-finite loss (``ClassifierModule(on_nonfinite="stop")``, the default).

    Raised from the training step (no optimizer step follows) and from ``on_save_checkpoint`` (no
    checkpoint with non-finite weights is written): a callback saving on exceptions must skip it
    (``isinstance(exception, NonFiniteLoss)``), the last checkpoint on disk is the last finite one.
    ``epoch``, ``step`` (global step of the first non-finite loss), ``value`` and ``lr`` say where.
    Under DDP every rank raises it at the same step (``all_ranks``: only rank 0 prints the line)."""

    all_ranks = True

    def __init__(
        self, message: str, hint: str | None = None, *, epoch: int = -1, step: int = -1, value: float = float("nan"),
        lr: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message, hint)
        self.epoch, self.step, self.value, self.lr = epoch, step, value, lr


def debug_enabled() -> bool:
    """``--debug`` (sets the variable) or ``LIT_RECIPES_DEBUG=1``: show tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def pop_debug_flag(argv: list[str]) -> list[str]:
    """Remove ``--debug`` from ``argv`` (in place, so a re-launched DDP process sees the same) and
    set ``LIT_RECIPES_DEBUG=1`` (inherited by those processes)."""
    if "--debug" in argv:
        while "--debug" in argv:
            argv.remove("--debug")
        os.environ[DEBUG_ENV] = "1"
    return argv


def _known_types() -> tuple[type[BaseException], ...]:
    from lit_recipes.contracts import ContractError  # a datamodule/module that lacks what a command needs

    known: list[type[BaseException]] = [LitRecipesError, ValueError, OSError, argparse.ArgumentError, ContractError]
    try:  # Lightning's "bad Trainer argument" (e.g. max_epochs=-5); imported only if already loaded
        if "lightning" in sys.modules:
            from lightning.fabric.utilities.exceptions import MisconfigurationException

            known.append(MisconfigurationException)
    except ImportError:  # pragma: no cover
        pass
    try:
        if "yaml" in sys.modules:
            import yaml

            known.append(yaml.YAMLError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(known)


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` on one line (whitespace runs collapsed), cut at ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe(err: BaseException) -> tuple[str, str | None]:
    """(message, hint) of a known failure."""
    hint = getattr(err, "hint", None)
    cause = err.__cause__ or err.__context__
    while hint is None and cause is not None:  # a wrapper (jsonargparse, Lightning) keeps the message only
        hint = getattr(cause, "hint", None)
        cause = cause.__cause__ or cause.__context__
    if isinstance(err, argparse.ArgumentError):
        return shorten_parser_error(str(err))
    if isinstance(err, OSError) and not isinstance(err, LitRecipesError) and err.strerror and err.filename:
        # e.g. NotADirectoryError: "Not a directory (runs/x)" names the file instead of errno noise
        what = err.strerror
        if isinstance(err, NotADirectoryError):
            hint = hint or "a folder on that path is a regular file: pick another folder"
        return f"{what} ({err.filename})", hint
    text = str(err)
    if "Does not validate against any of the Union subtypes" in text or text.startswith('Parser key "'):
        short, parser_hint = shorten_parser_error(text)  # jsonargparse wraps errors raised while instantiating
        return short, hint or parser_hint
    if isinstance(err, KeyError) and err.args:
        text = f"missing key {err.args[0]!r}"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__, hint
    if hint is None and len(lines) > 1 and len(lines[-1]) < 200:
        return one_line(" ".join(lines[:-1])), lines[-1]
    return one_line(" ".join(lines)), hint


def report(message: str, hint: str | None = None, stream=None) -> None:
    """Write ``lit-recipes: error: message`` (+ ``lit-recipes: hint: ...``) to stderr."""
    stream = stream or sys.stderr
    stream.write(f"{PREFIX}error: {one_line(message)}\n")
    if hint:
        stream.write(f"{PREFIX}hint: {one_line(hint)}\n")
    stream.flush()


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped a command; ``resume`` is the command line that continues
    it (``None``: nothing to resume). The boundary prints ``lit-recipes: interrupted — resume with:
    <resume>`` and exits ``128 + signum`` (130, 143)."""

    def __init__(self, signum: int = 2, resume: str | None = None) -> None:
        super().__init__(signum, resume)
        self.signum, self.resume = int(signum), resume


def interrupt_signal(exc: BaseException) -> int | None:
    """The signal behind ``exc`` when it is an interruption, else ``None``: ``KeyboardInterrupt``
    (SIGINT), Lightning's ``SIGTERMException`` (SIGTERM, raised at the next batch boundary), and
    the ``sys.exit(1)`` Lightning's Trainer raises after it handled a ``KeyboardInterrupt``."""
    import signal

    if isinstance(exc, Interrupted):
        return exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return int(signal.SIGINT)
    if type(exc).__name__ == "SIGTERMException":  # lightning.pytorch.utilities.exceptions (a SystemExit)
        return int(signal.SIGTERM)
    if isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt):
        return interrupt_signal(exc.__context__)
    return None


def report_interrupted(exc: BaseException, stream=None) -> int:
    """The last line of an interrupted command (rank 0 only under DDP); returns its exit status."""
    stream = stream or sys.stderr
    signum = interrupt_signal(exc) or 2
    resume = getattr(exc, "resume", None)
    if os.environ.get("RANK", "0") in ("", "0") and os.environ.get("LOCAL_RANK", "0") in ("", "0"):
        stream.write(f"{PREFIX}interrupted — resume with: {resume}\n" if resume else f"{PREFIX}interrupted\n")
        stream.flush()
    return 128 + signum


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def raise_disk_full(err: BaseException, target: str | os.PathLike) -> None:
    """Raise :class:`DiskFull` naming ``target``'s folder when ``err`` (or what
    caused it) is "no space left" / "quota exceeded"; return otherwise."""
    if isinstance(err, LitRecipesError):
        return
    cause: BaseException | None = err
    while cause is not None and not (isinstance(cause, OSError) and cause.errno in DISK_FULL_ERRNOS):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return
    folder = Path(target).parent
    also = "; W&B could not write its logs either" if _LOGGING_DISK_ERRORS[0] else ""
    raise DiskFull(
        f"disk full writing {folder} ({os.strerror(cause.errno)} while writing {Path(target).name}; "
        f"the files written before are intact{also})",
        "free space there (or pick another --trainer.default_root_dir) and rerun the same command to resume",
    ) from None


def quiet_disk_full_logging() -> None:
    """Count, instead of printing, the ``--- Logging error ---`` tracebacks that Python's logging
    prints for every record a handler cannot write because the disk is full (W&B's ``debug.log``
    handlers print dozens); the one ``disk full`` error line says so. Installed once per process by
    the command boundary; other logging errors print as before."""
    import logging

    if getattr(logging.Handler.handleError, "_lit_recipes", False):
        return
    original = logging.Handler.handleError

    def handle_error(self, record):  # noqa: ANN001 - logging's signature
        err = sys.exc_info()[1]
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            _LOGGING_DISK_ERRORS[0] += 1
            return
        original(self, record)

    handle_error._lit_recipes = True  # type: ignore[attr-defined]
    logging.Handler.handleError = handle_error  # type: ignore[method-assign]


_LOGGING_DISK_ERRORS = [0]


def run_command(fn: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """The error boundary: run ``fn(argv)``; a known failure -> one line, rc 2; an unexpected one ->
    one line, rc 1 (the traceback with ``--debug`` / ``LIT_RECIPES_DEBUG=1``)."""
    argv = pop_debug_flag(argv)
    quiet_disk_full_logging()  # a full disk: W&B's logging tracebacks are folded into the one error line
    try:
        return int(fn(argv) or 0)
    except (KeyboardInterrupt, SystemExit) as exc:
        if interrupt_signal(exc) is not None:  # Ctrl-C, SIGTERM: one line saying how to resume, 130 / 143
            if debug_enabled() and not isinstance(exc, Interrupted):
                raise
            return report_interrupted(exc)
        code = exc.code  # argparse's own exits (--help: 0, usage errors: 2) stay as they are
        return code if isinstance(code, int) else (0 if code is None else 1)
    except _known_types() as err:
        if debug_enabled():
            raise
        message, hint = describe(err)
        if not (getattr(err, "all_ranks", False) and os.environ.get("RANK", "0") not in ("", "0")):
            report(message, hint)  # a failure every DDP rank raises alike: rank 0 says it
        return 2
    except Exception as err:  # noqa: BLE001 - the boundary: one line instead of a traceback wall
        if debug_enabled():
            raise
        report(
            f"unexpected {type(err).__name__}: {one_line(str(err), 300) or '(no message)'}",
            "run again with --debug (or LIT_RECIPES_DEBUG=1) for the traceback, and report it if it is a bug",
        )
        return 1


# ---------------------------------------------------------------------------------- jsonargparse
_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Expected a <class 'NoneType'>",
    "Problem with given class_path",
    "- Not a valid subclass",
)


def shorten_parser_error(message: str, option_names: Iterable[str] = ()) -> tuple[str, str | None]:
    """jsonargparse's multi-line error -> (``<key>: <message>``, hint or None).

    The nested ``Parser key "a"`` / ``Parser key "b"`` become ``a.b`` (``init_args`` spelled out
    for a class); the Union-subtype listing, the value dump and the usage text are dropped.
    """
    message = str(message)
    if message.startswith("unrecognized arguments:"):
        args = message.split(":", 1)[1].split()
        first = args[0].split("=", 1)[0] if args else ""
        hint = None
        close = difflib.get_close_matches(first, list(option_names), n=1, cutoff=0.75)
        if close:
            hint = f"did you mean {close[0]}?"
        return f"unknown option {' '.join(args)}", hint
    if message.startswith("Problems parsing config"):
        return one_line(message.replace("Problems parsing config:", "config does not parse:")), None
    message = _named_class_error(message)
    keys = re.findall(r'Parser key "([^"]+)"', message)
    class_paths = re.findall(r"Problem with given class_path '([^']+)'", message)
    given = re.search(r"^\s*Given value: (.*)$", message, flags=re.M)
    details, last_resort = [], []
    for raw in message.splitlines():
        line = _CALLABLE_TYPE.sub("", raw.strip().lstrip("- ").strip())
        if line.startswith("Parser key"):
            line = line.split(":", 1)[1].strip() if ":" in line else ""
        if not line or line.startswith("Given value"):
            continue
        if any(line.startswith(n.lstrip("- ")) for n in _NOISE):
            continue
        if line.startswith("Expected a path but"):  # jsonargparse's "or a config file?" fallback: last
            last_resort.append(line)
            continue
        details.append(line.rstrip(":"))
    details = [_plain_detail(d) for d in details + last_resort]
    key = _join_keys(keys, bool(class_paths))
    accepted = re.search(r"Option '([^']+)' is not accepted", message)
    hint = None
    if accepted:
        name = accepted.group(1)
        if class_paths:
            key = f"{key}.init_args.{name}" if key else name
            params = _init_params(class_paths[-1])
            close = difflib.get_close_matches(name, params, n=1, cutoff=0.6)
            details = [f"{class_paths[-1].rsplit('.', 1)[-1]} has no argument {name!r}"]
            if close:
                hint = f"did you mean {key.rsplit('.', 1)[0]}.{close[0]}?"
    detail = details[0] if details else "invalid value"
    if given and "Got value" not in detail and "given" not in detail.lower() and "got " not in detail and not accepted:
        value = given.group(1).strip()
        if not value.lstrip("[").startswith(("NestedArg(", "Namespace(")):  # a dump of the parsed config
            detail = f"{detail}, got {value!r}"
    detail = detail.replace("<class '", "").replace("'>", "").replace("Expected a ", "expected ")
    return (f"{key}: {detail}" if key else detail), hint


_CALLABLE_TYPE = re.compile(r"^Type .*? expects a function or a callable class: ")


def _plain_detail(detail: str) -> str:
    """No dump of the parsed config (``Got value: Namespace(...)``), ``NestedArg(key=k, val=v)``
    as ``k=v``, and a list or string where a mapping belongs said so."""
    detail = re.sub(r"\.? ?Got value: (?:Namespace|NestedArg)\(.*$", "", detail)
    detail = re.sub(r"NestedArg\(key='([^']*)', val=(.*?)\)", r"\1=\2", detail)
    detail = re.sub(r"^'(\w+)' object has no attribute 'keys'$", r"expected a mapping (key: value), got a \1", detail)
    if detail.startswith("Subclass types expect one of"):
        detail = "expected a class path or a mapping with class_path (and init_args)"
    return detail


def _named_class_error(message: str) -> str:
    """A Union of class types lists one error per candidate class: keep the first class whose error is
    about a value (``Parser key "draw": Expected ... Got value: softmax``) and drop the others (the
    base ``Callback`` saying ``Option 'draw' is not accepted`` would hide the real culprit); when
    none takes the option, keep the first (the class the user named, whose arguments give the hint)."""
    first = re.search(r"(?m)^([ \t]*)- Problem with given class_path '", message)
    if first is None:
        return message
    # the outermost alternatives only: a class's own nested class_path errors stay inside its block
    parts = re.split(rf"(?m)^({re.escape(first.group(1))}- Problem with given class_path '[^']+':)", message)
    blocks = list(zip(parts[1::2], parts[2::2], strict=True))
    for head, body in blocks:
        if "is not accepted" not in body and 'Parser key "' in body:
            return parts[0] + head + body
    if len(blocks) > 1:  # no class takes the option: the first one named (the user's class) says so
        return parts[0] + "".join(blocks[0])
    return message


def _join_keys(keys: list[str], has_class: bool) -> str:
    if not keys:
        return ""
    out = keys[0]
    for k in keys[1:]:
        if k == out:  # the same key again (a nested restatement of the error)
            continue
        if k.startswith(out + "."):
            out = k
        else:
            out = f"{out}.init_args.{k}" if has_class else f"{out}.{k}"
    return out


def _init_params(class_path: str) -> list[str]:
    """The named ``__init__`` arguments of a class, those its ``**kwargs`` passes on to its bases
    included (as jsonargparse accepts them); ``[]`` when the class does not import."""
    import importlib
    import inspect

    try:
        module, name = class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 - a hint only
        return []
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        try:
            params = list(inspect.signature(klass.__init__).parameters.values())[1:]  # no self
        except (TypeError, ValueError):
            break
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names += [p.name for p in params if p.kind in named and p.name not in names]
        if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return names


def check_yaml_files(paths: Iterable[str]) -> None:
    """Load each ``--config`` file once so a syntax error names its file (the parser's message does
    not), and so does an empty file or one that is not a mapping (jsonargparse: "Unexpected config")."""
    import yaml

    for path in paths:
        if not path or not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
            raise ConfigError(f"YAML syntax error in {path} at {where}: {err.problem or err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"YAML error in {path}: {one_line(str(err))}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not a text (YAML) file") from None
        if data is None:
            raise ConfigError(
                f"config file is empty ({path})", "give it the keys to set: `lit-recipes fit --print_config` shows them"
            )
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file must be a mapping of keys (trainer:, model:, data: ...), not a {type(data).__name__} ({path})"
            )


__all__ = [
    "BadInput",
    "CheckpointError",
    "ConfigError",
    "Interrupted",
    "DiskFull",
    "LitRecipesError",
    "NonFiniteLoss",
    "OverwriteRefused",
    "TrackingError",
    "check_yaml_files",
    "debug_enabled",
    "describe",
    "pop_debug_flag",
    "report",
    "run_command",
    "shorten_parser_error",
]
