"""``lit-recipes stats``: look at a data set.

``stats`` prints the classes, the class counts (imbalance), the image size and the exact
per-channel mean/std of the training split (computed once, cached beside the data)::

    lit-recipes stats --data data/cifar10-jpeg            # an ImageFolder tree
    lit-recipes stats --config lit_recipes/configs/cifar10_resnet20.yaml --json

(``lit-recipes bench-data``, the loader's speed, is :mod:`lit_recipes.commands.bench_data`.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def datamodule_from_args(ns: argparse.Namespace, extra: list[str]):
    """(datamodule, model or None) from ``--data PATH`` or ``--config YAML`` (+ CLI overrides)."""
    if ns.data and not ns.config and Path(ns.data).suffix.lower() not in (".yaml", ".yml"):
        path = Path(ns.data)
        if not path.exists():
            raise FileNotFoundError(f"data not found: {path}")
        from lit_recipes.datamodules import CIFAR10DataModule, ImageFolderDataModule

        if (path / "cifar-10-batches-py").is_dir():
            return CIFAR10DataModule(str(path), batch_size=ns.batch_size or 128), None
        return ImageFolderDataModule(str(path), batch_size=ns.batch_size or 128), None
    config = ns.config or ns.data
    if not config:
        raise ValueError("give --data PATH (an image folder) or --config YAML")
    if not Path(config).is_file():
        raise FileNotFoundError(f"config not found: {config}")
    from lit_recipes.commands.fit import build_cli

    args = ["--config", config, "--trainer.logger=false", "--trainer.enable_checkpointing=false", *extra]
    if ns.batch_size:
        args.append(f"--data.init_args.batch_size={ns.batch_size}")
    cli = build_cli(args, save_config_callback=None)
    return cli.datamodule, cli.model


def dataset_summary(dm) -> dict[str, Any]:
    """Classes, counts, image size, mean/std (``normalize: dataset`` statistics) of ``dm``."""
    dm.setup("fit")
    counts = dm.class_counts()
    present = counts[counts > 0]
    image, _ = dm.pool.get(0)
    if getattr(dm, "normalize", None) == "dataset":
        mean, std = dm.mean, dm.std
    else:
        mean, std = dm.dataset_stats()
    cache = dm.stats_cache_path()
    return {
        "datamodule": type(dm).__name__,
        "classes": dm.class_names,
        "train_counts": counts.tolist(),
        "imbalance_ratio": float(present.max() / present.min()),
        "train": int(len(dm.train_indices)),
        "val": int(len(dm.val_indices)) if dm.val_indices is not None else (len(dm.val_source) if dm.val_source else 0),
        "test": int(len(dm.test_source)) if dm.test_source is not None else 0,
        "image_shape": list(image.shape),
        "mean": list(mean),
        "std": list(std),
        "stats_cache": str(cache) if cache is not None else None,
    }


def stats_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lit-recipes stats", description="Class counts and mean/std of a data set.")
    parser.add_argument("--data", help="an ImageFolder / CIFAR root, or a config YAML")
    parser.add_argument("--config", help="a fit config (its data section is used)")
    parser.add_argument("--batch_size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ns, extra = parser.parse_known_args(argv)
    dm, _ = datamodule_from_args(ns, extra)
    info = dataset_summary(dm)
    if ns.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return 0
    lines = [
        f"{info['datamodule']}: {len(info['classes'])} classes, train {info['train']} / val {info['val']} / "
        f"test {info['test']}, images {'x'.join(map(str, info['image_shape']))}",
        f"mean {_fmt(info['mean'])}",
        f"std  {_fmt(info['std'])}",
        f"class counts (train split; imbalance ratio {info['imbalance_ratio']:.2f}):",
    ]
    width = max(len(c) for c in info["classes"])
    total = max(sum(info["train_counts"]), 1)
    for name, n in zip(info["classes"], info["train_counts"]):
        lines.append(f"  {name:<{width}}  {n:>7}  {100 * n / total:5.1f}%")
    if info["stats_cache"]:
        lines.append(f"statistics cached in {info['stats_cache']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


__all__ = ["datamodule_from_args", "dataset_summary", "stats_main"]
