"""Every access to a private or loop-internal part of Lightning, in one file.

lit_recipes uses a few attributes Lightning does not document as public API. Each is wrapped here
with a comment on why it is needed, so a Lightning upgrade is checked in this one file (and by
``tests/test_lightning_compat.py``, which exercises every function against the installed version).
No other module may touch ``trainer.fit_loop``, ``module._trainer`` or a logger's ``_experiment``.

One protected LightningCLI hook is *overridden* rather than called, so it cannot live here:
``LitRecipesCLI._parse_ckpt_path`` (``lit_recipes/commands/fit.py``) checks ``--ckpt_path`` before
anything is built and defers to Lightning's version only when no config is given. Check it too after
an upgrade (``LightningCLI._parse_ckpt_path`` in ``lightning/pytorch/cli.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def attached_trainer(module: Any) -> Any:
    """The Trainer a LightningModule is attached to, or ``None``.

    Why: ``LightningModule.trainer`` *raises* when no Trainer is attached (a module used on its own,
    in a notebook or a unit test); ``_trainer`` is the attribute behind it."""
    return getattr(module, "_trainer", None)


@contextlib.contextmanager
def detached_trainer(module: Any) -> Iterator[None]:
    """Detach the Trainer from ``module`` for the body (e.g. to ``deepcopy`` the network without
    copying the Trainer, its loaders and loggers along with it), then re-attach it.

    Why: Lightning has no public way to detach a Trainer; ``_trainer`` is what ``deepcopy`` follows."""
    trainer = getattr(module, "_trainer", None)
    if trainer is not None:
        module._trainer = None
    try:
        yield
    finally:
        if trainer is not None:
            module._trainer = trainer


def batches_that_stepped(trainer: Any) -> int:
    """Training batches that stepped the optimizer so far (Lightning's own logging cadence counter).

    Why: ``LoggerConnector.should_update_logs`` decides with this counter whether a step is logged; to
    skip the ``self.log`` calls nobody reads, the module has to use the same counter."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def batch_progress(trainer: Any) -> Any:
    """The training epoch loop's batch progress (``.current.ready``, ``.is_last_batch``).

    Why: the only record of how many batches of the current epoch ran, and of whether the batch in
    hand is the last one when the loader has no length (``num_training_batches`` is ``inf``)."""
    return trainer.fit_loop.epoch_loop.batch_progress


def epoch_batches_done(trainer: Any) -> bool:
    """Whether the training epoch in flight has run all its batches (a validation now is the
    epoch-end one, not a mid-epoch ``val_check_interval``).

    Why: ``_TrainingEpochLoop._num_ready_batches_reached`` is the only record of it that
    ``ModelCheckpoint``'s own hooks see."""
    return bool(trainer.fit_loop.epoch_loop._num_ready_batches_reached())


def replace_default_checkpoint_io(strategy: Any, make_io: Any) -> None:
    """Put ``make_io()`` in place of the strategy's default ``TorchCheckpointIO``, also when an
    ``AsyncCheckpointIO`` wraps it; a user's own plugin and XLA's writer are left as they are.

    Why: the trainer builds its ``TorchCheckpointIO`` lazily (``strategy._checkpoint_io`` is ``None``
    until used), and a wrapper keeps its base in ``_checkpoint_io`` with the flag
    ``_base_checkpoint_io_configured`` that stops the strategy from overwriting it."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
    from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

    current = getattr(strategy, "_checkpoint_io", None)
    if current is None or type(current) is TorchCheckpointIO:
        if "xla" not in type(strategy).__name__.lower():  # XLA accepts only its own XLACheckpointIO
            strategy.checkpoint_io = make_io()
    elif isinstance(current, _WrappingCheckpointIO):
        base = current.checkpoint_io
        if base is None or type(base) is TorchCheckpointIO:
            current._checkpoint_io = make_io()
            current._base_checkpoint_io_configured = True


def setup_fit_data(trainer: Any) -> None:
    """Build the training dataloader now, in ``on_fit_start``.

    Why: Lightning builds it after ``on_fit_start``; the LR range test sweeps in ``on_fit_start``
    (before the scheduler's first step) and needs the loader there. The call is idempotent."""
    trainer.fit_loop.setup_data()


def request_train_dataloader_reload(trainer: Any) -> None:
    """Make Lightning rebuild the training dataloader at the start of the next epoch (every rank must
    call this; safe at ``on_fit_start`` and ``on_train_epoch_end``).

    Why: a new sampler (hard-negative mining re-weights the pool) needs a new loader, and Lightning
    only rebuilds it every ``reload_dataloaders_every_n_epochs``. In Lightning 2.6
    ``_FitLoop.on_advance_start`` calls ``setup_data()`` before every epoch and ``setup_data`` returns
    early while ``fit_loop._combined_loader`` is set; dropping the combined loader (after tearing its
    fetcher down) makes the next ``setup_data`` call ``datamodule.train_dataloader()`` again."""
    fit_loop = trainer.fit_loop
    if getattr(fit_loop, "_data_fetcher", None) is not None:
        fit_loop._data_fetcher.teardown()
        fit_loop._data_fetcher = None
    fit_loop._combined_loader = None


def cli_config_value(cli: Any, config: Any, key: str, default: Any = None) -> Any:
    """``LightningCLI._get``: the value of ``key`` in ``config`` for the running subcommand.

    Why: the CLI's config is nested under the subcommand name (``fit.trainer``) only when it runs
    one; ``_get`` hides that and is what LightningCLI itself uses."""
    return cli._get(config, key, default=default)


def cli_callback_keys(cli: Any, subcommand: str | None) -> list[str]:
    """The config keys of the callbacks LightningCLI adds itself (``add_lightning_class_args``).

    Why: to build the Trainer without one of them (see :func:`instantiate_trainer`), the CLI must
    list the others; the list lives on the protected per-subcommand parser."""
    return list(cli._parser(subcommand).callback_keys)


def wandb_experiment_started(logger: Any) -> bool:
    """Whether a ``WandbLogger`` has created its run (reading ``logger.experiment`` would start one).

    Why: ``WandbLogger.experiment`` creates the run lazily; closing runs at the end must not start
    one that was never used."""
    return getattr(logger, "_experiment", None) is not None


def instantiate_trainer(cli: Any, config: dict[str, Any], callbacks: list[Any]) -> Any:
    """``LightningCLI._instantiate_trainer``: build the Trainer from ``config`` with ``callbacks``.

    Why: the public ``instantiate_trainer`` always adds every configured callback; the CLI has to drop
    one (a second progress bar) and this protected method takes the list explicitly."""
    return cli._instantiate_trainer(config, callbacks)


__all__ = [
    "attached_trainer",
    "batch_progress",
    "batches_that_stepped",
    "cli_callback_keys",
    "cli_config_value",
    "detached_trainer",
    "instantiate_trainer",
    "request_train_dataloader_reload",
    "setup_fit_data",
    "wandb_experiment_started",
]
