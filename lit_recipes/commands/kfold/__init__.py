"""K-fold cross-validation: ``lit-recipes kfold`` and ``lit-recipes kfold-report``.

Every fold is built afresh from the config (a new seeded model, datamodule, Trainer and callbacks),
trained on ``datamodule.set_fold(i, k, stratified)``, tested on its best checkpoint, and its
test-split softmax outputs kept for the fold ensemble. Rerunning the command resumes; ``--kfold.fold i``
runs one fold (a cluster array task) and ``kfold-report DIR`` aggregates. See ``docs/kfold.md``.

Modules: :mod:`.plan` (the ``kfold`` group and the plan every fold shares), :mod:`.options` (the CLI,
parsing the arguments into the plan, the config fingerprint),
:mod:`.rundir` (the run directory: layout, manifest, resume), :mod:`.runner` (folds, refit,
DDP scoring), :mod:`.report` (aggregation, plot, table, W&B), :mod:`.main` (the two commands).

Example:
    >>> from lit_recipes.commands.kfold import run_kfold
    >>> report = run_kfold(  # doctest: +SKIP
    ...     ["--config", "lit_recipes/configs/digits_lenet.yaml", "--trainer.logger=false"], num_folds=5
    ... )
    >>> report["summary"]["test/acc"]["mean"], report["ensemble"]["test/acc"]  # doctest: +SKIP
"""

from __future__ import annotations

from lit_recipes.commands.kfold.main import kfold_main, report_main
from lit_recipes.commands.kfold.options import KFoldCLI, config_fingerprint
from lit_recipes.commands.kfold.plan import KFoldOptions
from lit_recipes.commands.kfold.report import build_report, log_report_to_wandb, plot_report, print_report, report_table
from lit_recipes.commands.kfold.runner import run_kfold, test_probabilities

__all__ = [
    "KFoldCLI",
    "KFoldOptions",
    "build_report",
    "config_fingerprint",
    "kfold_main",
    "log_report_to_wandb",
    "plot_report",
    "print_report",
    "report_main",
    "report_table",
    "run_kfold",
    "test_probabilities",
]
