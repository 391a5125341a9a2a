"""``lit-recipes stats`` and ``lit-recipes bench-data``: look at a data set, and time its loader.

``stats`` prints the classes, the class counts (imbalance), the image size and the exact
per-channel mean/std of the training split (computed once, cached beside the data)::

    lit-recipes stats --data data/cifar10-jpeg            # an ImageFolder tree
    lit-recipes stats --config lit_recipes/configs/cifar10_resnet20.yaml --json

``bench-data`` times the training loader alone (images/s) beside the training step of the
config's model on batches already in memory, and says which one is the bottleneck::

    lit-recipes bench-data --config lit_recipes/configs/cifar10_resnet20.yaml --batches 30
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch


def _datamodule_from_args(ns: argparse.Namespace, extra: list[str]):
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
    dm, _ = _datamodule_from_args(ns, extra)
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


def time_loader(loader, batches: int, warmup: int = 2) -> tuple[float, list]:
    """Images/s of iterating ``loader`` for ``batches`` batches after ``warmup`` ones; returns the
    rate and the timed batches (kept to time the training step on them)."""
    it = iter(loader)
    kept = []
    for _ in range(warmup):
        kept.append(next(it))
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += int(batch[0].shape[0])
        kept.append(batch)
    return n / (time.perf_counter() - start), kept


def time_train_step(module, batches: list, device: torch.device, steps: int | None = None) -> float:
    """Images/s of forward + backward + SGD step of ``module`` on in-memory ``batches``."""
    module = module.to(device).train()
    opt = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
    batches = [(b[0].to(device), b[1].to(device), b[2]) for b in batches]

    def step(batch):
        opt.zero_grad(set_to_none=True)
        loss, _, _ = module.training_loss(batch) if hasattr(module, "training_loss") else (None, None, None)
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    n, start = 0, time.perf_counter()
    for batch in batches[1 : (steps or len(batches)) + 1]:
        step(batch)
        n += int(batch[0].shape[0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - start)


def bench_data_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lit-recipes bench-data", description="Images/s of the training loader vs the training step."
    )
    parser.add_argument("--config", required=True, help="a fit config")
    parser.add_argument("--batches", type=int, default=20, help="batches to time (default 20)")
    parser.add_argument("--batch_size", type=int, default=None, help="override data.batch_size")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    ns, extra = parser.parse_known_args(argv)
    if ns.batches < 1:
        raise ValueError(f"--batches must be >= 1, got {ns.batches}")
    ns.data = None
    dm, module = _datamodule_from_args(ns, extra)
    device = torch.device(ns.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dm.setup("fit")
    if getattr(dm, "device_resident", False):
        start = time.perf_counter()
        loader = dm.resident_loader("train", device=device)
        decode_s = time.perf_counter() - start
    else:
        loader, decode_s = dm.train_dataloader(), 0.0
    load_rate, kept = time_loader(loader, ns.batches)
    step_rate = time_train_step(module, kept, device)
    result = {
        "config": ns.config,
        "device": str(device),
        "loader": type(loader).__name__,
        "num_workers": getattr(dm, "num_workers", None),
        "device_resident": bool(getattr(dm, "device_resident", False)),
        "resident_decode_s": round(decode_s, 3),
        "batch_size": dm.batch_size,
        "loader_images_per_s": round(load_rate, 1),
        "train_step_images_per_s": round(step_rate, 1),
        "bottleneck": "data loading" if load_rate < step_rate else "training step",
        "ratio_loader_over_step": round(load_rate / step_rate, 2),
    }
    if ns.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return 0
    sys.stdout.write(
        f"loader ({result['loader']}, workers={result['num_workers']}, resident={result['device_resident']}): "
        f"{load_rate:,.0f} images/s\n"
        f"training step ({type(module.model).__name__ if module is not None else '?'}, {device}): "
        f"{step_rate:,.0f} images/s\n"
        f"bottleneck: {result['bottleneck']} (loader / step = {result['ratio_loader_over_step']:.2f})\n"
    )
    return 0


__all__ = ["bench_data_main", "dataset_summary", "stats_main", "time_loader", "time_train_step"]
