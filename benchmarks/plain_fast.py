"""The fast CIFAR-10 recipe as a plain PyTorch script: no Lightning, no callbacks, no logger.

It is the baseline of ``bench_fast.py`` (the framework's overhead ratio), and it trains *the same*
thing as ``lit_recipes/configs/cifar10_fast.yaml``:

* the same network (``create_model("resnet9")``, channels-last), the same optimizer (SGD, Nesterov,
  momentum 0.9, weight decay 5e-4 except on norm weights and biases), the same schedule
  (:class:`lit_recipes.schedules.OneCycle`: div 10, 25 % warm-up, 10 % annihilation, momentum
  0.95 -> 0.85 -> 0.95, stepped every batch), label smoothing 0.2, bf16 autocast;
* the same data: the JPEG tree decoded once into a uint8 tensor on the device, the same stratified
  10 % validation split (``stratified_split``, seed 42 as the datamodule's default), normalised with
  the training split's mean/std, augmented on the device with the same ``DeviceAugment`` (flip,
  translate 4, cutout 8), batch 512, reshuffled every epoch;
* the same evaluation: validation every epoch and the test split at the end, both with flip TTA.

What it leaves out is what the framework adds: the Lightning loop, torchmetrics, W&B logging, the
progress bar, checkpointing, the callbacks (and so the LR range test: pass the LR it found with
``--lr``). The test is of the final weights (the recipe tests the best checkpoint by val accuracy;
under 1cycle that is nearly always the last epoch).

    python benchmarks/plain_fast.py --root data/cifar10-jpeg --epochs 12 --lr 0.4 [--precision 32] [--compile]

Prints one JSON object (phase times, per-epoch validation accuracy, test accuracy) on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lit_recipes.datamodules.device_resident import DeviceAugment
from lit_recipes.datamodules.splits import stratified_split
from lit_recipes.models import create_model
from lit_recipes.schedules import OneCycle


def list_split(folder: Path) -> tuple[list[Path], np.ndarray]:
    """Files and targets of a folder-per-class tree (sorted classes, sorted files)."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, targets = [], []
    for c, name in enumerate(classes):
        for f in sorted((folder / name).iterdir()):
            files.append(f)
            targets.append(c)
    return files, np.asarray(targets, dtype=np.int64)


def decode(files: list[Path], threads: int = 8) -> torch.Tensor:
    """All images as one (N, 3, H, W) uint8 CPU tensor."""
    from PIL import Image

    def read(f: Path) -> np.ndarray:
        with Image.open(f) as im:
            return np.asarray(im.convert("RGB"))

    with ThreadPoolExecutor(threads) as pool:
        images = list(pool.map(read, files))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-channel mean and (sample) std in [0, 1] units of uint8 (N, C, H, W) images, in chunks."""
    s = torch.zeros(images.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].double().div_(255.0)
        s += x.sum((0, 2, 3))
        s2 += x.square().sum((0, 2, 3))
    n = images.numel() // images.shape[1]
    mean = s / n
    return mean.float(), ((s2 - n * mean**2) / (n - 1)).sqrt().float()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only (as ClassifierModule's ``no_decay_norm_bias``)."""
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    decay, no_decay = [], []
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            (no_decay if isinstance(m, norm_types) or name == "bias" or p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model, images, targets, mean, std, batch_size, autocast, tta: bool = True) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].float().div_(255.0).sub_(mean).div_(std)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x).float()
            if tta:
                logits = (logits + model(x.flip(-1)).float()) / 2
        correct += (logits.argmax(-1) == targets[i : i + batch_size]).sum()
    model.train()
    return correct.item() / len(images)


def train(
    root: str | Path,
    epochs: int = 12,
    lr: float = 0.4,
    batch_size: int = 512,
    precision: str = "bf16-mixed",
    compile: bool = False,
    seed: int = 0,
    split_seed: int = 42,
    val_fraction: float = 0.1,
    device: str | None = None,
) -> dict:
    """Train the fast recipe on the JPEG tree at ``root``; returns times and accuracies."""
    t_start = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    root = Path(root)
    train_files, train_targets = list_split(root / "train")
    test_files, test_targets = list_split(root / "test")
    keep, held = stratified_split(train_targets, val_fraction, split_seed)
    pool = decode(train_files)
    test_x = decode(test_files).to(dev)
    train_x, val_x = pool[keep].to(dev), pool[held].to(dev)
    train_y = torch.as_tensor(train_targets[keep], device=dev)
    val_y = torch.as_tensor(train_targets[held], device=dev)
    test_y = torch.as_tensor(test_targets, device=dev)
    mean, std = channel_stats(pool[keep])
    mean, std = mean.view(1, 3, 1, 1).to(dev), std.view(1, 3, 1, 1).to(dev)
    sync(dev)
    t_data = time.perf_counter()

    model = create_model("resnet9", num_classes=10, in_channels=3).to(dev).to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile else model
    opt = torch.optim.SGD(param_groups(model, 5e-4), lr=lr, momentum=0.9, nesterov=True)
    steps_per_epoch = math.ceil(len(train_x) / batch_size)
    sched = OneCycle(opt, total_steps=epochs * steps_per_epoch, div=10, pct_start=0.25, annihilation_pct=0.1)
    augment = DeviceAugment(flip=True, translate=4, cutout=8)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)

    def autocast():
        return torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None)

    scaler = torch.amp.GradScaler(dev.type, enabled=dtype is torch.float16)
    history = []
    for epoch in range(epochs):
        t_epoch = time.perf_counter()
        g = torch.Generator(device=dev)
        g.manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(train_x), device=dev, generator=g)
        loss_sum = torch.zeros((), device=dev)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = augment(train_x[idx].float().div_(255.0).sub_(mean).div_(std), g)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = net(x)
            loss = F.cross_entropy(logits.float(), train_y[idx], label_smoothing=0.2)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += loss.detach()
        val_acc = evaluate(net, val_x, val_y, mean, std, 1024, autocast)
        sync(dev)
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum.item() / steps_per_epoch,
                "val_acc": val_acc,
                "seconds": time.perf_counter() - t_epoch,
            }
        )
    t_train = time.perf_counter()
    test_acc = evaluate(net, test_x, test_y, mean, std, 1024, autocast)
    t_end = time.perf_counter()
    return {
        "kind": "plain",
        "device": str(dev),
        "lr": lr,
        "epochs": epochs,
        "steps": epochs * steps_per_epoch,
        "train_images": len(train_x),
        "data_s": t_data - t_start,
        "train_s": t_train - t_data,
        "test_s": t_end - t_train,
        "total_s": t_end - t_start,
        "epoch_s": [h["seconds"] for h in history],
        "val_acc": [h["val_acc"] for h in history],
        "train_loss": [h["train_loss"] for h in history],
        "test_acc": test_acc,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="data/cifar10-jpeg")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=0.4, help="peak LR of the 1cycle (the range test's suggestion)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "16-mixed", "32"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    if not (Path(a.root) / "train").is_dir() or not (Path(a.root) / "test").is_dir():
        from lit_recipes.localdata import DataNotFound, cifar10_jpeg_subset

        try:  # no --root tree: the CIFAR-10 JPEGs LIT_RECIPES_DATA points at, unpacked once into the cache
            a.root = str(cifar10_jpeg_subset(per_class_train=5000, per_class_test=1000))
        except DataNotFound as err:
            raise SystemExit(
                f"plain_fast: {a.root} needs train/<class>/ and test/<class>/ folders, and {err}"
            ) from None
    out = train(a.root, a.epochs, a.lr, a.batch_size, a.precision, a.compile, a.seed, device=a.device)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
