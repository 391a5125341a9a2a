"""Images/s on CIFAR-10 JPEGs: ImageFolder + albumentations with 0/1/2 workers, the device-resident
path, and the CIFAR ResNet-20 training step, side by side in one process (so the table shows which
one is the bottleneck).

    .venv/bin/python benchmarks/bench_data.py --per-class 200 --repeats 3 [--device cuda]

Uses data/cifar10-jpeg when unpacked there, else the first ``--per-class`` images per class of the CIFAR-10
JPEGs that ``LIT_RECIPES_DATA`` points at (``lit_recipes.localdata``), copied into a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning  # noqa: E402
import torch  # noqa: E402

from lit_recipes.commands.bench_data import time_train_step  # noqa: E402
from lit_recipes.datamodules import ImageFolderDataModule  # noqa: E402
from lit_recipes.localdata import DataNotFound, cifar10_jpeg_subset  # noqa: E402
from lit_recipes.module import ClassifierModule  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def subset(dest: Path, per_class: int) -> Path:
    src = REPO / "data" / "cifar10-jpeg" / "train"
    if src.is_dir():
        for c in sorted(os.listdir(src)):
            (dest / c).mkdir(parents=True)
            for f in sorted(os.listdir(src / c))[:per_class]:
                shutil.copy(src / c / f, dest / c / f)
        return dest
    try:
        src = cifar10_jpeg_subset(per_class_train=per_class, per_class_test=0) / "train"
    except DataNotFound as err:
        raise SystemExit(f"bench_data: no data/cifar10-jpeg and {err}") from None
    shutil.copytree(src, dest, dirs_exist_ok=True)
    return dest


def epoch_rate(loader) -> float:
    """Images/s of one full pass (the first batch, i.e. worker start-up, excluded)."""
    it = iter(loader)
    next(it)
    n, start = 0, time.perf_counter()
    for batch in it:
        n += int(batch[0].shape[0])
    if batch[0].is_cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):10,.0f} ± {sd:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--step-batches", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the main process")
    ns = parser.parse_args()
    torch.set_num_threads(ns.threads)
    device = torch.device(ns.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        root = subset(tmp / "train", ns.per_class)
        n_images = sum(len(os.listdir(root / c)) for c in os.listdir(root))
        rows: list[tuple[str, list[float]]] = []
        kw = dict(batch_size=ns.batch_size, val_fraction=0.0, normalize="dataset", drop_last=True)
        for workers in (0, 1, 2):
            dm = ImageFolderDataModule(str(root), num_workers=workers, **kw)
            dm.setup("fit")
            loader = dm.train_dataloader()
            rates = [epoch_rate(loader) for _ in range(ns.repeats)]
            rows.append((f"ImageFolder + albumentations, {workers} workers", rates))
            del loader
        dm = ImageFolderDataModule(str(root), device_resident=True, **kw)
        dm.setup("fit")
        start = time.perf_counter()
        loader = dm.resident_loader("train", device=device)
        decode_s = time.perf_counter() - start
        rows.append((f"device-resident ({device}), flip+translate", [epoch_rate(loader) for _ in range(ns.repeats)]))
        dm.cutout = 8
        loader = dm.resident_loader("train", device=device)
        rows.append(
            (f"device-resident ({device}), flip+translate+cutout 8", [epoch_rate(loader) for _ in range(ns.repeats)])
        )
        batches = [b for _, b in zip(range(ns.step_batches + 1), iter(loader))]
        module = ClassifierModule("cifar_resnet20", num_classes=10, in_channels=3, lr=0.1)
        rows.append(
            (
                f"ResNet-20 train step ({device}, fwd+bwd+SGD)",
                [time_train_step(module, batches, device) for _ in range(ns.repeats)],
            )
        )
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        print(
            f"# {n_images} CIFAR-10 JPEGs (32x32), batch {ns.batch_size}, {ns.repeats} repeats; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; "
            f"{ns.threads} torch thread(s); torch {torch.__version__}, lightning {lightning.__version__}, commit {sha}"
        )
        if device.type == "cuda":
            print(f"# GPU: {torch.cuda.get_device_name(device)}")
        print(f"# device-resident decode of the split (once): {decode_s:.2f} s")
        step = statistics.mean(rows[-1][1])
        print(f"{'pipeline':52s} {'images/s (mean ± std)':>24s}  vs train step")
        for name, rates in rows:
            print(f"{name:52s} {mean_std(rates):>24s}  {statistics.mean(rates) / step:6.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
