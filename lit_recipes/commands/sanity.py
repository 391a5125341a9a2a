"""``lit-recipes sanity --config my.yaml``: overfit a tiny subset before a long run.

Builds the model and the datamodule from the same config as ``fit`` (``build_cli``), then runs
:func:`lit_recipes.callbacks.sanity.overfit_tiny_subset`: augmentation, dropout, weight decay,
mixup and label smoothing off, ``--n`` samples (default 5 per class), up to ``--max_steps`` steps
at the config's LR (or ``--lr``). Prints PASS or FAIL with the likely causes; exit status 0 on
PASS, 1 on FAIL, 2 on bad input.

Example::

    lit-recipes sanity --config lit_recipes/configs/digits_lenet.yaml
    lit-recipes sanity --config my.yaml --n 40 --max_steps 500 --json sanity.json
"""

from __future__ import annotations

import argparse
import sys

from lit_recipes.artifacts import save_json
from lit_recipes.callbacks.sanity import overfit_tiny_subset
from lit_recipes.commands.fit import build_cli


def sanity_main(argv: list[str]) -> int:
    """Entry point of ``lit-recipes sanity``; the options it does not know go to ``build_cli``."""
    parser = argparse.ArgumentParser(
        prog="lit-recipes sanity",
        description="Overfit a tiny subset with regularisation off: PASS if the loss goes to ~0.",
        epilog="Every other option (--config, --model.*, --data.*, --trainer.*) is that of `lit-recipes fit`.",
    )
    parser.add_argument("--n", type=int, default=None, help="samples in the subset (default: 5 per class)")
    parser.add_argument("--max_steps", type=int, default=300, help="optimizer steps at most (default 300)")
    parser.add_argument("--loss_threshold", type=float, default=0.05, help="PASS below this loss (default 0.05)")
    parser.add_argument("--lr", type=float, default=None, help="constant LR (default: the config's model.lr)")
    parser.add_argument("--sanity_seed", type=int, default=0, help="seed of the subset choice (default 0)")
    parser.add_argument("--json", default=None, help="also write the result (loss curve, probes) to this JSON file")
    ns, rest = parser.parse_known_args(argv)
    cli = build_cli([*rest, "--trainer.logger=false", "--trainer.enable_progress_bar=false"])
    datamodule = cli.datamodule
    datamodule.setup("fit")
    device = cli.trainer.strategy.root_device
    result = overfit_tiny_subset(
        cli.model,
        datamodule,
        n=ns.n,
        max_steps=ns.max_steps,
        loss_threshold=ns.loss_threshold,
        lr=ns.lr,
        seed=ns.sanity_seed,
        device=device,
    )
    sys.stdout.write(result.report() + "\n")
    if ns.json:
        save_json(ns.json, result.to_dict())
    return 0 if result.passed else 1


__all__ = ["sanity_main"]
