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

The pieces: :mod:`~lit_recipes.commands.search.options` (``--search.*`` and the plan),
:mod:`~lit_recipes.commands.search.study` (storage, sampler, pruner, recovery),
:mod:`~lit_recipes.commands.search.trials` (one trial's folds), :mod:`~lit_recipes.commands.search.final`
(the report and the final model).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lit_recipes.checkpoints import check_resume_files
from lit_recipes.commands.search.final import finalize, print_search_report
from lit_recipes.commands.search.options import SearchOptions, _plan, parse_search_args
from lit_recipes.commands.search.study import _counted, _open_study, recover
from lit_recipes.commands.search.trials import _after_trial, _objective, _Surplus, _TrialError


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
    check_resume_files(plan.search_dir)  # a pickle planted as a fold's last.ckpt: one line, before any trial
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

__all__ = ["run_search", "search_main"]
