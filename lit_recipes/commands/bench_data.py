"""``lit-recipes bench-data``: time the training loader beside the training step.

The training loader alone (images/s) is timed beside the training step of the config's model on
batches already in memory, and the slower of the two is named the bottleneck::

    lit-recipes bench-data --config lit_recipes/configs/cifar10_resnet20.yaml --batches 30
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from lit_recipes.commands.stats import datamodule_from_args


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
    dm, module = datamodule_from_args(ns, extra)
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


__all__ = ["bench_data_main", "time_loader", "time_train_step"]
