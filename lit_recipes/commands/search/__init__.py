"""``lit-recipes search``: choose hyperparameters by k-fold cross-validation (an Optuna study).

Each trial is a k-fold run of :func:`lit_recipes.commands.kfold.run_kfold` with the trial's values of the
searched config keys; the objective is the mean fold validation metric. The pick allows for noise
(the one-standard-error rule), the final model is refit on all training data (or the best fold's
model, or the fold ensemble) and scored on the test split. See ``docs/search.md``.

Example:
    >>> from lit_recipes.commands.search import run_search
    >>> report = run_search(  # doctest: +SKIP
    ...     ["--config", "lit_recipes/configs/digits_lenet.yaml", "--kfold.num_folds=3"],
    ...     space="space.yaml", trials=8,
    ... )
    >>> report["pick"]["chosen"], report["final"]["metrics"]  # doctest: +SKIP
"""

from lit_recipes.commands.search.final import build_search_report, final_model, print_search_report
from lit_recipes.commands.search.options import SearchOptions, parse_search_args
from lit_recipes.commands.search.report import pick, plot_search, summarize_trial, trials_table
from lit_recipes.commands.search.runner import run_search, search_main
from lit_recipes.commands.search.space import Param, load_space, parse_param, trial_complexity
from lit_recipes.commands.search.study import recover

__all__ = [
    "Param",
    "SearchOptions",
    "build_search_report",
    "final_model",
    "load_space",
    "parse_param",
    "parse_search_args",
    "pick",
    "plot_search",
    "print_search_report",
    "recover",
    "run_search",
    "search_main",
    "summarize_trial",
    "trial_complexity",
    "trials_table",
]
