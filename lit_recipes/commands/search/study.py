"""The Optuna study of a search: storage, sampler, pruner (the one-SE pruner), the study's manifest
and locks, and the recovery of trials whose worker died."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lit_recipes.artifacts import save_json
from lit_recipes.commands.search.options import MANIFEST, _Plan
from lit_recipes.commands.search.report import summarize_trial
from lit_recipes.commands.search.space import space_to_dict


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


def _storage(url: str):
    import optuna

    if "://" not in url:
        raise ValueError(f"search.storage must be a database URL such as sqlite:///path/study.db, got {url!r}")
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    from sqlalchemy.exc import DatabaseError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat_interval is "experimental"
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=60, grace_period=600)
        except DatabaseError as err:  # not a database, a damaged one (a corrupt or foreign study.db)
            from lit_recipes.errors import BadInput

            where = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
            reason = " ".join(str(getattr(err, "orig", None) or err).split())
            raise BadInput(
                f"search.storage is not a readable Optuna database ({reason}): {where}",
                "move the file away to start the study afresh, or pass another --search.storage / --search.dir",
            ) from None


class _GridSampler:
    """Optuna's GridSampler, tolerant of re-queued trials (fixed parameters, no grid id) in after_trial."""

    @staticmethod
    def make(search_space: dict[str, list], seed: int):
        import optuna

        class GridSampler(optuna.samplers.GridSampler):
            def after_trial(self, study, trial, state, values) -> None:
                if not getattr(study._thread_local, "in_optimize_loop", True):
                    return  # recover() failing a dead worker's trial: no optimize() to stop
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


__all__ = ["recover"]
