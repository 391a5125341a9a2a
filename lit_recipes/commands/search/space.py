"""The search space of ``lit-recipes search``: config keys mapped to distributions.

A space file is a YAML mapping from a dotted config key to a distribution::

    model.init_args.dropout: uniform(0, 0.5, simplest=high)
    model.init_args.optimizer.init_args.weight_decay: log_uniform(1e-5, 1e-2, simplest=high)
    data.init_args.batch_size: choice(256, 128, 64)
    model.init_args.model: [lenet5_bn, cifar_resnet20]     # a list is choice(...)

Distributions: ``uniform(a, b)``, ``log_uniform(a, b)`` (``0 < a``), ``int_uniform(a, b)``
(integers) and ``choice(v1, v2, ...)``. Values are read as YAML (``1e-5`` is a number, ``null``
is None, quoted values stay strings).

*Simplest* (for the one-standard-error rule): every parameter declares which end of its range
is the simplest or cheapest: ``simplest=low`` (default) or ``simplest=high`` for the ranges, the
first listed value for ``choice``. A value's *complexity* is its distance from that end, scaled
to 0..1 (on the log scale for ``log_uniform``; the position in the list for ``choice``), and a
trial's complexity is the mean over its parameters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")

# keys that decide the folds (or the search itself): every trial must see the same ones
FORBIDDEN_PREFIXES = ("kfold.", "search.", "config", "trainer.default_root_dir", "checkpoint.dirpath")
FORBIDDEN_KEYS = ("data.init_args.seed", "seed_everything")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 numbers: ``1e-5`` is a float (PyYAML's YAML 1.1 wants ``1.0e-5``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


@dataclass(frozen=True)
class Param:
    """One searched config key."""

    key: str
    dist: str  # one of DISTRIBUTIONS
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple = field(default_factory=tuple)
    simplest: str = "low"  # "low" | "high" (ranges); choice: the first listed value

    def describe(self) -> str:
        if self.dist == "choice":
            return f"choice({', '.join(map(_show, self.choices))})"
        extra = ", simplest=high" if self.simplest == "high" else ""
        return f"{self.dist}({_show(self.low)}, {_show(self.high)}{extra})"

    def suggest(self, trial) -> Any:
        """Draw this parameter from an Optuna trial."""
        if self.dist == "uniform":
            return trial.suggest_float(self.key, self.low, self.high)
        if self.dist == "log_uniform":
            return trial.suggest_float(self.key, self.low, self.high, log=True)
        if self.dist == "int_uniform":
            return trial.suggest_int(self.key, self.low, self.high)
        return trial.suggest_categorical(self.key, list(self.choices))

    def grid(self, points: int) -> list:
        """The values a grid search visits: the choices, or ``points`` evenly spaced values
        (geometrically for ``log_uniform``, distinct integers for ``int_uniform``)."""
        if self.dist == "choice":
            return list(self.choices)
        if points < 2:
            raise ValueError(f"search.grid_points must be >= 2, got {points}")
        if self.dist == "log_uniform":
            lo, hi = math.log(self.low), math.log(self.high)
            return [float(math.exp(lo + (hi - lo) * i / (points - 1))) for i in range(points)]
        values = [self.low + (self.high - self.low) * i / (points - 1) for i in range(points)]
        if self.dist == "int_uniform":
            return sorted({int(round(v)) for v in values})
        return [float(v) for v in values]

    def complexity(self, value: Any) -> float:
        """Distance of ``value`` from the simplest end, 0 (simplest) .. 1."""
        if self.dist == "choice":
            idx = next((i for i, c in enumerate(self.choices) if _same(c, value)), None)
            if idx is None:
                raise ValueError(f"{self.key}: {value!r} is not one of {self.choices}")
            return idx / max(len(self.choices) - 1, 1)
        if self.dist == "log_uniform":
            t = (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        else:
            t = (value - self.low) / (self.high - self.low)
        t = min(max(float(t), 0.0), 1.0)
        return 1.0 - t if self.simplest == "high" else t

    def sample_values(self) -> list:
        """A few values that exercise the config's type checks (ends of a range, every choice)."""
        if self.dist == "choice":
            return list(self.choices)
        return [self.low, self.high]


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b)


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "null" if v is None else str(v)


_CALL = re.compile(r"^\s*([A-Za-z_][\w]*)\s*\((.*)\)\s*$", re.DOTALL)
_KWARG = re.compile(r"^([A-Za-z_]\w*)\s*=\s*(.*)$")


def parse_param(key: str, spec: Any) -> Param:
    """Parse one entry of a space file (``uniform(0, 0.5)``, ``[64, 128]``, ...).

    Raises:
        ValueError: one line naming the key: an unknown distribution, an empty range, bad bounds.
    """
    if not isinstance(key, str) or not key.strip() or key != key.strip():
        raise ValueError(f"search space: a key must be a dotted config key, got {key!r}")
    for prefix in FORBIDDEN_PREFIXES:
        if key == prefix.rstrip(".") or key.startswith(prefix):
            raise ValueError(f"search space: {key} cannot be searched (the search sets it)")
    if key in FORBIDDEN_KEYS:
        raise ValueError(
            f"search space: {key} cannot be searched: every trial must use the same folds and seed "
            "(set it in the config instead)"
        )
    if isinstance(spec, list):
        name, raw = "choice", spec
    elif isinstance(spec, str):
        match = _CALL.match(spec)
        if not match:
            raise ValueError(
                f"search space: {key}: cannot read {spec!r}; write one of {', '.join(d + '(...)' for d in DISTRIBUTIONS)}"
            )
        name, inner = match.group(1), match.group(2)
        if name not in DISTRIBUTIONS:
            raise ValueError(f"search space: {key}: unknown distribution {name!r} (known: {', '.join(DISTRIBUTIONS)})")
        try:
            raw = load_yaml(f"[{inner}]") if inner.strip() else []
        except yaml.YAMLError:
            raise ValueError(f"search space: {key}: cannot read the arguments of {spec!r}") from None
    else:
        raise ValueError(
            f"search space: {key}: expected a distribution such as 'uniform(0, 0.5)' or a list of choices, got {spec!r}"
        )
    args, kwargs = [], {}
    for item in raw:
        kw = _KWARG.match(item) if isinstance(item, str) else None
        if kw and name != "choice" or (kw and kw.group(1) == "simplest"):
            kwargs[kw.group(1)] = kw.group(2).strip()
        else:
            args.append(item)
    unknown = set(kwargs) - {"simplest"}
    if unknown:
        raise ValueError(f"search space: {key}: unknown option(s) {', '.join(sorted(unknown))} in {spec!r}")
    if name == "choice":
        if "simplest" in kwargs:
            raise ValueError(f"search space: {key}: choice(...) takes no simplest=; list the simplest value first")
        if not args:
            raise ValueError(f"search space: {key}: empty choice()")
        for v in args:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise ValueError(f"search space: {key}: choice values must be numbers, strings, booleans or null")
        if len({(type(v), v) for v in args}) != len(args):
            raise ValueError(f"search space: {key}: choice{tuple(args)} lists a value twice")
        return Param(key, "choice", choices=tuple(args))
    simplest = kwargs.get("simplest", "low")
    if simplest not in ("low", "high"):
        raise ValueError(f"search space: {key}: simplest must be 'low' or 'high', got {simplest!r}")
    if len(args) != 2:
        raise ValueError(f"search space: {key}: {name}(low, high) takes two bounds, got {len(args)}")
    low, high = args
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numeric or not all(math.isfinite(v) for v in (low, high)):
        raise ValueError(f"search space: {key}: the bounds of {name} must be finite numbers, got {low!r}, {high!r}")
    if name == "int_uniform":
        if not all(isinstance(v, int) or float(v).is_integer() for v in (low, high)):
            raise ValueError(f"search space: {key}: int_uniform bounds must be integers, got {low!r}, {high!r}")
        low, high = int(low), int(high)
    else:
        low, high = float(low), float(high)
    if not low < high:
        raise ValueError(f"search space: {key}: empty range {name}({_show(low)}, {_show(high)}): needs low < high")
    if name == "log_uniform" and low <= 0:
        raise ValueError(f"search space: {key}: log_uniform needs 0 < low, got {_show(low)}")
    return Param(key, name, low=low, high=high, simplest=simplest)


def load_space(space: str | Path | dict) -> list[Param]:
    """Read a space file (or an already loaded mapping) into a list of :class:`Param`, in file order."""
    if isinstance(space, dict):
        mapping = space
    else:
        path = Path(space)
        if not path.is_file():
            raise FileNotFoundError(f"search.space: file not found: {path}")
        try:
            mapping = load_yaml(path.read_text())
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"search.space: {path} is not valid YAML ({first})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"search.space: expected a non-empty mapping of config keys to distributions, got {mapping!r}")
    return [parse_param(k, v) for k, v in mapping.items()]


def space_to_dict(params: list[Param]) -> dict[str, str]:
    return {p.key: p.describe() for p in params}


def trial_complexity(params: list[Param], values: dict[str, Any]) -> float:
    """Mean complexity of a trial's values (0 = every parameter at its simplest end)."""
    return float(sum(p.complexity(values[p.key]) for p in params) / len(params))


def format_value(value: Any) -> str:
    """A value as a command-line argument (``--key=value``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


__all__ = [
    "DISTRIBUTIONS",
    "Param",
    "format_value",
    "load_space",
    "load_yaml",
    "parse_param",
    "space_to_dict",
    "trial_complexity",
]
