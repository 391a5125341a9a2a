"""The search driver: an Optuna study whose trials are k-fold runs of :func:`lit_recipes.commands.kfold.run_kfold`.

Layout of a search folder (default ``<trainer.default_root_dir or runs>/search/<name>``)::

    study.db                  the Optuna study (SQLite; or any storage URL with --search.storage)
    search.json               what the study searches: config fingerprint, space, folds, metric
    trials/trial_<n>/         the trial's k-fold run directory (fold_<i>/, refit/ ...)
    search_results.json       the report: every trial, the pick, importances, the final model
    search.png                metric against each parameter + parameter importances

Each trial runs its folds one at a time (``run_kfold(..., fold=i)``: a fold that is done is
skipped, an unfinished one continues from its ``last.ckpt``), reports the fold's validation metric
to Optuna (step = fold) and asks the pruner whether to stop. Killed trials (a dead process on this
host, or a stale heartbeat) are failed and re-queued with the same parameters and folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_recipes.artifacts import save_json
from lit_recipes.commands.search.report import (
    RULE_TEXT,
    RULES,
    log_report_to_wandb,
    log_trial_to_wandb,
    pick,
    plot_search,
    summarize_trial,
    trials_table,
)
from lit_recipes.commands.search.space import Param, format_value, load_space, space_to_dict

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


# ---------------------------------------------------------------------------------- pruner
def _one_se_pruner(num_folds: int, margin: float, min_folds: int, maximize: bool):
    import optuna

    class OneSEPruner(optuna.pruners.BasePruner):
        """Prune a trial whose folds so far trail the best complete trial, on the same folds, by
        more than ``margin`` standard errors of the best trial's mean (its fold std / sqrt(k))."""

        def prune(self, study, trial) -> bool:
            done = trial.intermediate_values
            if len(done) < min_folds or len(done) >= num_folds:
                return False
            complete = [
                t
                for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if len(t.intermediate_values) >= num_folds
            ]
            if not complete:
                return False
            sign = 1.0 if maximize else -1.0
            best = max(complete, key=lambda t: (sign * t.value, -t.number))
            common = [f for f in done if f in best.intermediate_values]
            if not common:
                return False
            se = summarize_trial(list(best.intermediate_values.values()))["se"] or 0.0
            gap = sum(sign * (done[f] - best.intermediate_values[f]) for f in common) / len(common)
            return gap < -margin * se

    return OneSEPruner()


# ---------------------------------------------------------------------------------- planning
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
    from lit_recipes.commands.kfold import _logger_spec, config_fingerprint

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
    logger = _logger_spec(cfg.trainer.get("logger"))
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


# ---------------------------------------------------------------------------------- the study
def _storage(url: str):
    import optuna

    if "://" not in url:
        raise ValueError(f"search.storage must be a database URL such as sqlite:///path/study.db, got {url!r}")
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat_interval is "experimental"
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=60, grace_period=600)


class _GridSampler:
    """Optuna's GridSampler, tolerant of re-queued trials (fixed parameters, no grid id) in after_trial."""

    @staticmethod
    def make(search_space: dict[str, list], seed: int):
        import optuna

        class GridSampler(optuna.samplers.GridSampler):
            def after_trial(self, study, trial, state, values) -> None:
                if "grid_id" not in trial.system_attrs:
                    if self.is_exhausted(study):
                        study.stop()
                    return
                super().after_trial(study, trial, state, values)

        return GridSampler(search_space, seed=seed)


def _sampler(plan: _Plan, worker_index: int):
    import optuna

    o = plan.opts
    if o.sampler == "grid":  # every worker must shuffle the grid the same way
        return _GridSampler.make({p.key: p.grid(o.grid_points) for p in plan.params}, o.seed)
    seed = o.seed + 10007 * worker_index  # a resumed or second worker draws new values
    if o.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(plan: _Plan):
    import optuna

    o = plan.opts
    if o.pruner == "none":
        return optuna.pruners.NopPruner()
    if o.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=o.min_folds - 1)
    return _one_se_pruner(plan.num_folds, o.prune_margin, o.min_folds, plan.maximize)


def _manifest(plan: _Plan) -> dict[str, Any]:
    return {
        "format": 1,
        "name": plan.name,
        "fingerprint": plan.fingerprint,
        "space": space_to_dict(plan.params),
        "num_folds": plan.num_folds,
        "metric": plan.opts.metric,
        "direction": plan.opts.direction,
    }


@contextlib.contextmanager
def _lock(search_dir: Path, name: str, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on a file of the search folder (released when the process dies)."""
    search_dir.mkdir(parents=True, exist_ok=True)
    with open(search_dir / f".{name}.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _open_study(plan: _Plan):
    """Create or load the study, check it searches the same thing, register this worker."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan.search_dir.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(plan)
    with _lock(plan.search_dir, "study"):
        storage = _storage(plan.storage_url)
        study = optuna.create_study(
            study_name=plan.name,
            storage=storage,
            direction=plan.opts.direction,
            pruner=_pruner(plan),
            load_if_exists=True,
        )
        old = study.user_attrs.get("manifest")
        if old is None:
            study.set_user_attr("manifest", manifest)
        else:
            for key in ("fingerprint", "space", "num_folds", "metric", "direction"):
                if old.get(key) != manifest[key]:
                    raise ValueError(
                        f"search {plan.name}: the study in {plan.storage_url} was started with another {key} "
                        f"({old.get(key)!r}, now {manifest[key]!r}); use another --search.name or --search.dir"
                    )
        worker_index = int(study.user_attrs.get("workers", 0))
        study.set_user_attr("workers", worker_index + 1)
        save_json(plan.search_dir / MANIFEST, {**manifest, "storage": plan.storage_url})
    study.sampler = _sampler(plan, worker_index)
    return study


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _counted(t) -> bool:
    """Trials that use up the budget: complete, pruned, or failed with an error."""
    from optuna.trial import TrialState

    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and "error" in t.user_attrs
    )


def recover(study, search_dir: Path) -> list[int]:
    """Fail the running trials of dead workers on this host, and re-queue every trial that was
    killed (failed without an error: a dead process, a stale heartbeat, Ctrl-C) with the same
    parameters and folder, once. Returns the re-queued trial numbers."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    requeued = []
    with _lock(search_dir, "study"):
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get("worker", "")
            w_host, _, w_pid = worker.rpartition(":")
            if w_host == host and w_pid.isdigit() and int(w_pid) != os.getpid() and not _pid_alive(int(w_pid)):
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                rank_zero_info(f"search: trial #{t.number} lost its worker ({worker}); re-queuing it")
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        for t in trials:
            ua = t.user_attrs
            if t.state != TrialState.FAIL or "error" in ua or "surplus" in ua or t.number in retried or not t.params:
                continue
            study.enqueue_trial(
                dict(t.params), user_attrs={"dir": ua.get("dir", _trial_dir(t.number)), "retry_of": t.number}
            )
            requeued.append(t.number)
    return requeued


def _trial_dir(number: int) -> str:
    return f"trial_{number:04d}"


class _Surplus(Exception):
    """The study already holds its trials (another worker started the last one)."""


class _TrialError(Exception):
    """A trial failed with an error (recorded on the trial; the search goes on)."""


def _fold_result(trial_dir: Path, fold: int) -> dict[str, Any]:
    from lit_recipes.commands.kfold import RESULT

    return json.loads((trial_dir / f"fold_{fold}" / RESULT).read_text())


def _trial_args(plan: _Plan, values: dict[str, Any]) -> list[str]:
    args = list(plan.args)
    if plan.wandb:  # one W&B run per trial (search.report), not one per fold
        args.append("--trainer.logger=false")
    return [*args, *[f"--{k}={format_value(v)}" for k, v in values.items()]]


def _objective(plan: _Plan, study):
    import optuna

    from lit_recipes.commands.kfold import run_kfold

    def objective(trial: optuna.Trial) -> float:
        recover(study, plan.search_dir)
        ahead = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.number < trial.number and (_counted(t) or t.state == optuna.trial.TrialState.RUNNING)
        ]
        if len(ahead) >= plan.opts.trials:
            trial.set_user_attr("surplus", True)
            study.stop()
            raise _Surplus
        values = {p.key: p.suggest(trial) for p in plan.params}
        dirname = trial.user_attrs.get("dir") or _trial_dir(trial.number)
        trial.set_user_attr("dir", dirname)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial_dir = plan.search_dir / "trials" / dirname
        shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={format_value(v)}" for k, v in values.items())
        rank_zero_info(f"search {plan.name}: trial #{trial.number} ({shown}) -> {trial_dir}")
        args = _trial_args(plan, values)
        scores = []
        try:
            for fold in range(plan.num_folds):
                run_kfold(args, fold=fold, run_dir=str(trial_dir), name=f"{plan.name}-{dirname}")
                metrics = _fold_result(trial_dir, fold)["metrics"]
                if plan.opts.metric not in metrics:
                    raise ValueError(
                        f"search.metric {plan.opts.metric!r} is not among the fold's metrics ({', '.join(metrics)})"
                    )
                scores.append(float(metrics[plan.opts.metric]))
                trial.report(scores[-1], fold)
                if fold < plan.num_folds - 1 and trial.should_prune():
                    s = summarize_trial(scores)
                    rank_zero_info(
                        f"search {plan.name}: trial #{trial.number} pruned after {fold + 1} fold(s) "
                        f"({plan.opts.metric} {s['mean']:.4f})"
                    )
                    raise optuna.TrialPruned()
        except (optuna.TrialPruned, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - recorded on the trial, the search goes on
            line = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            trial.set_user_attr("error", line[:500])
            rank_zero_warn(f"search {plan.name}: trial #{trial.number} failed: {line}")
            raise _TrialError(line) from err
        s = summarize_trial(scores)
        trial.set_user_attr("std", s["std"])
        rank_zero_info(
            f"search {plan.name}: trial #{trial.number} {plan.opts.metric} {s['mean']:.4f} ± {s['std'] or 0:.4f}"
        )
        return s["mean"]

    return objective


def _trial_record(t) -> dict[str, Any]:
    values = [t.intermediate_values[k] for k in sorted(t.intermediate_values)]
    return {
        "number": t.number,
        "state": t.state.name,
        "params": dict(t.params),
        "values": values,
        **summarize_trial(values),
        "dir": t.user_attrs.get("dir"),
        "retry_of": t.user_attrs.get("retry_of"),
        "error": t.user_attrs.get("error"),
    }


def _after_trial(plan: _Plan):
    def callback(study, frozen) -> None:
        from optuna.trial import TrialState

        if plan.wandb and frozen.state in (TrialState.COMPLETE, TrialState.PRUNED):
            try:
                log_trial_to_wandb(plan.info(), _trial_record(frozen))
            except Exception as err:  # noqa: BLE001 - W&B trouble must not stop the search
                rank_zero_warn(f"search: could not log trial #{frozen.number} to W&B: {err}")
        if sum(_counted(t) for t in study.get_trials(deepcopy=False)) >= plan.opts.trials:
            study.stop()

    return callback


# ---------------------------------------------------------------------------------- entry point
def run_search(args: Sequence[str] = (), **options: Any) -> dict[str, Any] | None:
    """Run (or resume, or join) a search; the Python API behind ``lit-recipes search``.

    Args:
        args: ``fit``-style arguments for every trial (``--config``, ``--trainer.*``,
            ``--kfold.num_folds`` ...); ``--search.*`` arguments are read from them too.
        **options: :class:`SearchOptions` fields (``space=``, ``trials=`` ...), overriding ``--search.*``.

    Returns:
        The report (:func:`build_search_report`) once every trial is finished, else ``None``
        (other workers still run trials; the last one writes the report).
    """
    import optuna

    from_args, rest = parse_search_args(args)
    unknown = set(options) - {f.name for f in fields(SearchOptions)}
    if unknown:
        raise ValueError(f"unknown search option(s): {', '.join(sorted(unknown))}")
    plan = _plan(rest, {**from_args, **options})
    study = _open_study(plan)
    requeued = recover(study, plan.search_dir)
    if requeued:
        rank_zero_info(f"search {plan.name}: re-queued killed trial(s) {', '.join(f'#{n}' for n in requeued)}")
    done = sum(_counted(t) for t in study.get_trials(deepcopy=False))
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if done < plan.opts.trials or waiting:
        rank_zero_info(
            f"search {plan.name}: {done}/{plan.opts.trials} trials done; study {plan.storage_url}, folder {plan.search_dir}"
        )
        study.optimize(
            _objective(plan, study),
            catch=(_Surplus, _TrialError),
            callbacks=[_after_trial(plan)],
            gc_after_trial=True,
        )
    return finalize(plan, study)


def finalize(plan: _Plan, study) -> dict[str, Any] | None:
    """Build the report and the final model, once no trial is running (one worker at a time)."""
    from optuna.trial import TrialState

    busy = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    if busy:
        rank_zero_info(
            f"search {plan.name}: trial(s) {', '.join(f'#{t.number}' for t in busy)} still running in other "
            "workers; the last one writes the report (or run the same command again)"
        )
        return None
    with _lock(plan.search_dir, "final", blocking=False) as mine:
        if not mine:
            rank_zero_info(f"search {plan.name}: another worker is writing the report")
            return None
        report = build_search_report(plan, study)
        report["final"] = final_model(plan, report)
        save_json(plan.search_dir / RESULTS, report)
        if plan.wandb:
            try:
                log_report_to_wandb(report)
            except Exception as err:  # noqa: BLE001
                rank_zero_warn(f"search: could not log the report to W&B: {err}")
    return report


def build_search_report(plan: _Plan, study) -> dict[str, Any]:
    """The trials, the pick (with its rule spelled out), Optuna's importances and the plot."""
    import optuna

    trials = [_trial_record(t) for t in study.get_trials(deepcopy=False)]
    shown = [t for t in trials if not (t["state"] == "FAIL" and t["error"] is None)]  # killed and re-run
    choice = pick(shown, plan.params, plan.maximize, plan.opts.rule)
    report: dict[str, Any] = {
        "name": plan.name,
        "search_dir": str(plan.search_dir),
        "storage": plan.storage_url,
        "metric": plan.opts.metric,
        "direction": plan.opts.direction,
        "num_folds": plan.num_folds,
        "space": space_to_dict(plan.params),
        "sampler": plan.opts.sampler,
        "pruner": plan.opts.pruner,
        "std": "sample standard deviation over folds (ddof=1); SE = std / sqrt(folds)",
        "rule": RULE_TEXT[plan.opts.rule].format(metric=plan.opts.metric),
        "trials": shown,
        "pick": choice,
        "logger": plan.logger,
    }
    chosen = next((t for t in shown if choice and t["number"] == choice["chosen"]), None)
    report["chosen_params"] = chosen["params"] if chosen else None
    report["chosen_args"] = [f"--{k}={format_value(v)}" for k, v in chosen["params"].items()] if chosen else None
    complete = [t for t in shown if t["state"] == "COMPLETE"]
    report["importances"], report["importances_note"] = None, None
    if len(complete) >= 2 and len(plan.params) >= 1:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
                )
            report["importances"] = {k: float(v) for k, v in imp.items()}
        except Exception as err:  # noqa: BLE001 - e.g. no parameter varied among the complete trials
            report["importances_note"] = f"no importances: {err}"
    else:
        report["importances_note"] = "importances need at least 2 complete trials"
    report["plot"] = str(plot_search(report, plan.params, plan.search_dir / PLOT))
    return report


def final_model(plan: _Plan, report: dict[str, Any]) -> dict[str, Any] | None:
    """The chosen configuration's final model, scored on the test split."""
    from lit_recipes.commands.kfold import RESULT, build_report, run_kfold

    mode = plan.opts.final
    choice = report.get("pick")
    if mode == "none" or not choice:
        return None
    chosen = next(t for t in report["trials"] if t["number"] == choice["chosen"])
    trial_dir = plan.search_dir / "trials" / chosen["dir"]
    out: dict[str, Any] = {"mode": mode, "trial": chosen["number"], "trial_dir": str(trial_dir)}
    sign = 1.0 if plan.maximize else -1.0
    if mode == "refit":
        rank_zero_info(f"search {plan.name}: refit of trial #{chosen['number']} on all training data")
        run_kfold(
            _trial_args(plan, chosen["params"]),
            fold="refit",
            refit=True,
            run_dir=str(trial_dir),
            name=f"{plan.name}-{chosen['dir']}",
        )
        res = json.loads((trial_dir / "refit" / RESULT).read_text())
        ckpts = sorted((trial_dir / "refit" / "checkpoints").glob("*.ckpt"))
        last = trial_dir / "refit" / "checkpoints" / "last.ckpt"
        out["checkpoint"] = str(last if last.is_file() else ckpts[-1]) if ckpts else None
        out["metrics"] = {k: v for k, v in res["metrics"].items() if k.startswith("test/")}
        out["train_size"] = res.get("train_size")
    elif mode == "best_fold":
        results = [json.loads((trial_dir / f"fold_{i}" / RESULT).read_text()) for i in range(plan.num_folds)]
        best = max(results, key=lambda r: (sign * r["metrics"][plan.opts.metric], -r["fold"]))
        out["fold"] = best["fold"]
        out["checkpoint"] = best.get("best_model_path")
        out["metrics"] = {k: v for k, v in best["metrics"].items() if k.startswith("test/")}
    else:
        kf = build_report(trial_dir, plot=False)
        ens = kf.get("ensemble") or {}
        out["checkpoints"] = [
            json.loads((trial_dir / f"fold_{i}" / RESULT).read_text()).get("best_model_path")
            for i in range(plan.num_folds)
        ]
        out["metrics"] = {k: ens[k] for k in ("test/acc", "test/nll") if k in ens}
        out["mean_single_fold_test/acc"] = ens.get("mean_single_fold_test/acc")
    if not out.get("metrics"):
        rank_zero_warn(f"search {plan.name}: the data has no test split; the final model is not scored")
    return out


def print_search_report(report: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    console.print(trials_table(report))
    p = report.get("pick")
    if not p:
        console.print("no complete trial: nothing to choose")
        return
    metric = report["metric"]
    console.print(
        f"best trial #{p['best']}: {metric} {p['best_mean']:.4f} (SE {p['se']:.4f}); within one SE: "
        + ", ".join(f"#{n}" for n in p["within_one_se"])
    )
    console.print(f"chosen trial #{p['chosen']} by the {report['rule']}")
    console.print("chosen: " + " ".join(report["chosen_args"] or []))
    final = report.get("final")
    if final and final.get("metrics"):
        shown = ", ".join(f"{k} {v:.4f}" for k, v in final["metrics"].items() if "acc_class_" not in k)
        where = final.get("checkpoint") or f"{len(final.get('checkpoints') or [])} fold checkpoints"
        console.print(f"final model ({final['mode']}): {shown} -> {where}")
    console.print(f"wrote {Path(report['search_dir']) / RESULTS} and {report['plot']}")


def search_main(argv: list[str]) -> int:
    """``lit-recipes search --config CFG --search.space SPACE.yaml --search.trials N [--search.* ...] [--kfold.* ...]``"""
    if any(a in ("-h", "--help") for a in argv):
        sys.stdout.write(_HELP)
        return 0
    report = run_search(argv)
    if report is not None:
        print_search_report(report)
    return 0


_HELP = (
    "usage: lit-recipes search --config CFG --search.space SPACE.yaml --search.trials N [options]\n\n"
    "Each trial is a k-fold run (--kfold.num_folds, default 5) of the config with the trial's values;\n"
    "the objective is the mean fold --search.metric (default val/acc).\n\n"
    + "\n".join(f"  --search.{f.name}" for f in fields(SearchOptions))
    + "\n\nAny other argument (--trainer.*, --model.*, --data.*, --kfold.num_folds ...) goes to every trial.\n"
    "Run the same command again to resume; run it in several processes to work on one study.\n"
)

__all__ = [
    "SearchOptions",
    "build_search_report",
    "final_model",
    "parse_search_args",
    "print_search_report",
    "recover",
    "run_search",
    "search_main",
]
