"""One trial of a search: its folds run one at a time (``run_kfold(..., fold=i)``), each fold's
validation metric reported to Optuna (step = fold) and the pruner asked whether to go on."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_recipes.commands.search.options import _Plan
from lit_recipes.commands.search.report import log_trial_to_wandb, summarize_trial
from lit_recipes.commands.search.space import format_value
from lit_recipes.commands.search.study import _counted, _trial_dir, recover
from lit_recipes.errors import Interrupted, interrupt_signal


class _Surplus(Exception):
    """The study already holds its trials (another worker started the last one)."""


class _TrialError(Exception):
    """A trial failed with an error (recorded on the trial; the search goes on)."""


def _fold_result(trial_dir: Path, fold: int) -> dict[str, Any]:
    from lit_recipes.commands.kfold.rundir import RESULT

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
                run_kfold(args, fold=fold, run_dir=str(trial_dir), name=f"{plan.name}-{dirname}", report_hint=False)
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
            raise  # Optuna marks an interrupted trial FAIL (without an error): the next run re-queues it
        except SystemExit as exc:
            signum = interrupt_signal(exc)  # Lightning's sys.exit after Ctrl-C, its SIGTERMException
            if signum is None:
                raise
            raise Interrupted(signum) from exc  # a SystemExit would leave the trial RUNNING
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
