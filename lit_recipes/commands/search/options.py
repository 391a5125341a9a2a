"""The ``--search.*`` options and the plan of a search: the parsed config, the space, the folder and
the study's storage, checked before anything trains."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from lit_recipes.commands.search.report import RULES
from lit_recipes.commands.search.space import Param, format_value, load_space

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("one_se", "median", "none")
FINALS = ("refit", "best_fold", "ensemble", "none")
RESULTS = "search_results.json"
PLOT = "search.png"
MANIFEST = "search.json"
_RESERVED_KFOLD = ("run_dir", "fold", "refit", "overwrite", "name")


@dataclass
class SearchOptions:
    """The ``--search.*`` options of ``lit-recipes search``.

    Args:
        space: YAML file mapping config keys to distributions (:mod:`lit_recipes.commands.search.space`).
        trials: number of trials (complete + pruned + failed with an error) the study should hold.
        sampler: ``tpe`` (default), ``random`` or ``grid`` (Optuna's samplers; ``grid`` spreads
            ``grid_points`` values over each range).
        storage: an Optuna storage URL; default ``sqlite:///<search dir>/study.db``.
        name: the study's name (and the W&B group). Default ``<config stem>-<space stem>``.
        dir: the search folder. Default ``<trainer.default_root_dir or runs>/search/<name>``.
        metric: the validation metric each fold reports (``val/acc``, ``val/loss`` ...).
        direction: ``maximize`` / ``minimize``; default from the metric (``loss`` minimizes).
        pruner: ``one_se`` (default), ``median`` (Optuna's MedianPruner) or ``none``.
        prune_margin: ``one_se`` prunes a trial whose first folds trail the best trial on the same
            folds by more than this many standard errors of the best trial's mean.
        min_folds: folds a trial runs before it can be pruned.
        rule: ``one_se`` (default: the simplest trial within one SE of the best) or ``best``.
        final: ``refit`` (default: train on all training data), ``best_fold`` (the chosen trial's
            fold model with the best val metric), ``ensemble`` (mean softmax of its fold models),
            ``none``. Scored on the test split.
        seed: sampler seed.
        grid_points: values per range for the ``grid`` sampler.
    """

    space: str | None = None
    trials: int | None = None
    sampler: str = "tpe"
    storage: str | None = None
    name: str | None = None
    dir: str | None = None
    metric: str = "val/acc"
    direction: str | None = None
    pruner: str = "one_se"
    prune_margin: float = 2.0
    min_folds: int = 1
    rule: str = "one_se"
    final: str = "refit"
    seed: int = 0
    grid_points: int = 3

    def __post_init__(self) -> None:
        if self.space is None:
            raise ValueError("search.space is required: a YAML file of config keys and distributions")
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ValueError(f"search.trials must be an integer >= 1, got {self.trials!r}")
        for opt, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("final", FINALS), ("rule", RULES)):
            if getattr(self, opt) not in allowed:
                raise ValueError(f"search.{opt} must be one of {', '.join(allowed)}, got {getattr(self, opt)!r}")
        if not self.metric.startswith("val/"):
            raise ValueError(f"search.metric must be a validation metric (val/...), got {self.metric!r}")
        if self.direction is None:
            self.direction = "minimize" if "loss" in self.metric else "maximize"
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"search.direction must be maximize or minimize, got {self.direction!r}")
        if not (isinstance(self.prune_margin, (int, float)) and self.prune_margin >= 0):
            raise ValueError(f"search.prune_margin must be >= 0, got {self.prune_margin!r}")
        if isinstance(self.min_folds, bool) or not isinstance(self.min_folds, int) or self.min_folds < 1:
            raise ValueError(f"search.min_folds must be an integer >= 1, got {self.min_folds!r}")
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            raise ValueError(f"search.name must be a plain name, got {self.name!r}")
        if self.sampler == "grid" and self.grid_points < 2:
            raise ValueError(f"search.grid_points must be >= 2, got {self.grid_points}")


@dataclass
class _Plan:
    args: list[str]
    opts: SearchOptions
    params: list[Param]
    name: str
    search_dir: Path
    storage_url: str
    num_folds: int
    fingerprint: str
    logger: dict[str, Any] | None
    wandb: bool

    @property
    def maximize(self) -> bool:
        return self.opts.direction == "maximize"

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "search_dir": str(self.search_dir),
            "metric": self.opts.metric,
            "logger": self.logger,
        }


def parse_search_args(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``--search.x=v`` / ``--search.x v`` from the rest (passed on to the k-fold driver)."""
    names = {f.name: f for f in fields(SearchOptions)}
    options: dict[str, Any] = {}
    rest: list[str] = []
    argv = list(argv)
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--search."):
            key, eq, value = tok[len("--search.") :].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"--search.{key} needs a value")
                value = argv[i + 1]
                i += 1
            if key not in names:
                raise ValueError(f"unknown search option --search.{key} (known: {', '.join(sorted(names))})")
            options[key] = value
        else:
            rest.append(tok)
        i += 1
    return options, rest


def _coerce(options: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in options.items():
        if isinstance(value, str) and key in ("trials", "prune_margin", "min_folds", "seed", "grid_points"):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if isinstance(value, str) and value.lower() in ("null", "none", "") and key in ("storage", "name", "dir"):
            value = None
        out[key] = value
    return out


def _plan(args: list[str], options: dict[str, Any]) -> _Plan:
    from lit_recipes.commands.kfold.options import config_fingerprint, logger_spec

    opts = SearchOptions(**_coerce(options))
    params = load_space(opts.space)
    for tok in args:
        for key in _RESERVED_KFOLD:
            if tok.startswith(f"--kfold.{key}"):
                raise ValueError(f"{tok.split('=')[0]}: the search sets it (use --search.dir / --search.name)")
    parsed = _parse(args)
    cfg = parsed.config
    config_yaml = parsed.parser.dump(cfg)
    _check_keys(args, params, yaml.safe_load(config_yaml) or {})
    num_folds = int(cfg.kfold.num_folds)
    configs = [str(p) for p in (cfg.get("config") or [])]
    space_stem = Path(opts.space).stem if not isinstance(opts.space, dict) else "space"
    name = opts.name or f"{Path(configs[-1]).stem if configs else 'search'}-{space_stem}"
    root = cfg.trainer.get("default_root_dir") or "runs"
    search_dir = Path(opts.dir) if opts.dir else Path(root) / "search" / name
    storage_url = opts.storage or f"sqlite:///{(search_dir / 'study.db').resolve()}"
    logger = logger_spec(cfg.trainer.get("logger"))
    info = None
    if logger:
        keep = ("project", "entity")
        info = {k: logger["init_args"].get(k) for k in keep if k in logger["init_args"]}
    return _Plan(
        args=list(args),
        opts=opts,
        params=params,
        name=name,
        search_dir=search_dir,
        storage_url=storage_url,
        num_folds=num_folds,
        fingerprint=config_fingerprint(config_yaml),
        logger=info,
        wandb=bool(logger and logger["wandb"]),
    )


def _parse(args: list[str]):
    """Parse ``fit``-style arguments without building anything; a rejected value -> ValueError."""
    import io

    from lit_recipes.commands.kfold import KFoldCLI

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return KFoldCLI(args=args, parse_only=True)
    except SystemExit:
        raise ValueError(_reason(err.getvalue())) from None


def _reason(text: str) -> str:
    """The most specific line of a jsonargparse error."""
    lines = [ln.strip(" -") for ln in text.splitlines()]
    after = lines[next((i for i, ln in enumerate(lines) if ln.startswith("error:")), 0) :]
    specific = [ln for ln in after if ("not accepted" in ln or "Expected a" in ln) and "NoneType" not in ln]
    if specific:
        return specific[-1]
    first = next((ln for ln in after if ln), "the config parser rejected it")
    return first.removeprefix("error:").strip()


def _lookup(cfg: dict, key: str) -> bool:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _check_keys(args: list[str], params: list[Param], cfg: dict) -> None:
    """Every key must be one of the parsed config's (or accepted by its parser), and every value
    the space can produce must pass the config's type checks — before anything trains."""
    for p in params:
        if _lookup(cfg, p.key):
            continue
        try:
            _parse([*args, f"--{p.key}={format_value(p.sample_values()[0])}"])
        except ValueError as err:
            raise ValueError(f"search space: unknown config key {p.key} ({err})") from None
    rounds = max(len(p.sample_values()) for p in params)
    for r in range(rounds):
        values = {p.key: p.sample_values()[r % len(p.sample_values())] for p in params}
        try:
            _parse([*args, *[f"--{k}={format_value(v)}" for k, v in values.items()]])
        except ValueError as err:
            shown = ", ".join(f"{k}={format_value(v)}" for k, v in values.items())
            raise ValueError(f"search space: the config rejects {shown}: {err}") from None
    _check_values(args, params)


def _check_values(args: list[str], params: list[Param]) -> None:
    """Each value the space can produce (the ends of a range, every choice) builds the datamodule
    or model it configures, as ``fit`` would build it, so a value their constructors refuse
    (``batch_size: 0``) is one line naming the key and the value before trial 1. A group that
    does not build from the config alone (e.g. it needs the data's class count) is left to the trials."""
    groups = {g for g in ("data", "model") if any(p.key.startswith(f"{g}.") for p in params)}
    base = _parse(args).config
    for group in sorted(groups):
        try:
            _build_group(base, group)
        except Exception:  # noqa: BLE001 - not buildable without the linked values: not checked here
            groups.discard(group)
    for p in params:
        group = p.key.split(".", 1)[0]
        if group not in groups:
            continue
        for value in p.sample_values():
            config = _parse([*args, f"--{p.key}={format_value(value)}"]).config
            try:
                _build_group(config, group)
            except (ValueError, TypeError) as err:
                reason = " ".join(str(err).split()) or type(err).__name__
                raise ValueError(f"search space: {p.key}={format_value(value)} is refused: {reason}") from None


def _build_group(config: Any, group: str) -> None:
    """Construct ``config[group]`` (a ``class_path`` + ``init_args``) without touching the RNG."""
    import importlib

    from lightning.pytorch.utilities.seed import isolate_rng

    node = config.get(group)
    class_path = getattr(node, "class_path", None) if node is not None else None
    if not class_path:
        return
    init = node.get("init_args")
    kwargs = init.as_dict() if hasattr(init, "as_dict") else dict(init or {})
    module, name = class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    with isolate_rng():
        cls(**kwargs)


__all__ = ["FINALS", "MANIFEST", "PLOT", "PRUNERS", "RESULTS", "SAMPLERS", "SearchOptions", "parse_search_args"]
