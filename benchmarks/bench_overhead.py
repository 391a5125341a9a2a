"""Framework overhead: a hand-written PyTorch loop vs ClassifierModule + Trainer, side by side.

Same model (same initial weights), same batches in the same order, same optimizer and number of
steps; the Lightning run has the progress bar and the W&B logger (offline) on, as a user runs it.
Prints the final losses of both (they must agree to 5 decimals), wall time per epoch, the ratio
and the overhead in ms per step. Mean ± std over ``--repeats`` alternating runs.

    python benchmarks/bench_overhead.py                     # LeNet-5 on digits (overhead-dominated)
    python benchmarks/bench_overhead.py --cifar 2000        # CIFAR ResNet-20 on 2,000 CIFAR-10 JPEGs
    python benchmarks/bench_overhead.py --cifar 10000 --device cuda --batch-size 512   # on a GPU

On a GPU both runs take the same CPU batches and copy them to the device (the Lightning run through
its batch transfer, the plain loop with ``.to(device)``); the epoch clocks synchronise CUDA.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, Dataset

from lit_recipes.datamodules import ClassificationDataModule, array_source
from lit_recipes.module import ClassifierModule
from lit_recipes.tracking import WandbLogger

REPO = Path(__file__).resolve().parents[1]


class Indexed(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


class TensorDM(ClassificationDataModule):
    """The benchmark's data as a datamodule: pre-normalised tensors, no shuffling (same order as the loop)."""

    def __init__(self, x, y, batch_size):
        super().__init__(batch_size=batch_size, val_fraction=0.0, normalize="none")
        self.x, self.y = x, y

    @property
    def in_channels(self):
        return self.x.shape[1]

    def load_sources(self):
        imgs = np.zeros((len(self.y), 1, 1, self.in_channels), dtype=np.uint8)  # metadata only
        return array_source(imgs, self.y.numpy()), None, None, [str(i) for i in range(int(self.y.max()) + 1)]

    def train_dataloader(self):
        return DataLoader(Indexed(self.x, self.y), batch_size=self.batch_size, shuffle=False)


def digits_tensors():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return (x - x.mean()) / x.std(), torch.tensor(d.target)


def cifar_tensors(n):
    from PIL import Image

    from lit_recipes.localdata import DataNotFound, cifar10_jpeg_subset

    try:
        root = cifar10_jpeg_subset(per_class_train=n // 10, per_class_test=0) / "train"
    except DataNotFound as err:
        raise SystemExit(f"bench_overhead --cifar: {err}") from None
    xs, ys = [], []
    for label, class_dir in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for f in sorted(class_dir.glob("*.jpg"))[: n // 10]:
            xs.append((np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0).transpose(2, 0, 1))
            ys.append(label)
    x = torch.tensor(np.stack(xs))
    return (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True), torch.tensor(ys)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(L.Callback):
    def __init__(self):
        self.times = []

    def on_train_epoch_start(self, trainer, pl_module):
        _sync(pl_module.device)
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        _sync(pl_module.device)
        self.times.append(time.perf_counter() - self.t0)


def run_plain(module, x, y, batch_size, epochs, device="cpu"):
    module.to(device)
    module.train()
    opt = torch.optim.SGD(module.parameter_groups(), lr=module.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for g in opt.param_groups:
        g["lr"] = module.lr * g["lr_mult"]
    loader = DataLoader(Indexed(x, y), batch_size=batch_size, shuffle=False)
    steps, t0, epoch_times = 0, time.perf_counter(), []
    for _ in range(epochs):
        _sync(device)
        te = time.perf_counter()
        for batch in loader:
            batch = [t.to(device, non_blocking=True) if torch.is_tensor(t) else t for t in batch]
            opt.zero_grad(set_to_none=True)
            loss, _, _ = module.training_loss(batch)
            loss.backward()
            opt.step()
            steps += 1
        _sync(device)
        epoch_times.append(time.perf_counter() - te)
    return time.perf_counter() - t0, float(loss), steps, epoch_times


def run_lightning(module, x, y, batch_size, epochs, save_dir, device="cpu", refresh_rate=1):
    logger = WandbLogger(project="bench-overhead", save_dir=save_dir)
    timer = EpochTimer()
    trainer = L.Trainer(
        callbacks=[timer, *([TQDMProgressBar(refresh_rate=refresh_rate)] if refresh_rate else [])],
        accelerator=torch.device(device).type,
        devices=1,
        max_epochs=epochs,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=refresh_rate > 0,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=TensorDM(x, y, batch_size))
    elapsed = time.perf_counter() - t0
    logger.experiment.finish()
    return elapsed, float(trainer.callback_metrics["train/loss_step"]), trainer.global_step, timer.times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cifar", type=int, default=0, help="use N CIFAR-10 JPEGs and ResNet-20 instead of digits")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--refresh-rate", type=int, default=1, help="progress-bar refresh every N steps (0: no bar)")
    a = ap.parse_args()
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if a.cifar:
        x, y = cifar_tensors(a.cifar)
        name, in_ch, nc = "cifar_resnet20", 3, 10
    else:
        x, y = digits_tensors()
        name, in_ch, nc = "lenet5_bn", 1, 10
    L.seed_everything(0, verbose=False)
    init = ClassifierModule(name, num_classes=nc, in_channels=in_ch, lr=0.05).model.state_dict()
    plain_t, light_t, rows, plain_e, light_e = [], [], [], [], []
    tmp = tempfile.mkdtemp()
    for r in range(a.repeats):
        for kind in ("plain", "lightning") if r % 2 == 0 else ("lightning", "plain"):
            torch.manual_seed(r)
            m = ClassifierModule(name, num_classes=nc, in_channels=in_ch, lr=0.05)
            m.model.load_state_dict(init)
            if kind == "plain":
                t, loss, steps, ep = run_plain(m, x, y, a.batch_size, a.epochs, a.device)
                plain_t.append(t)
                plain_e.extend(ep[1:])
            else:
                t, loss, steps, ep = run_lightning(m, x, y, a.batch_size, a.epochs, tmp, a.device, a.refresh_rate)
                light_t.append(t)
                light_e.extend(ep[1:])
            rows.append((kind, loss, steps))
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    print(
        f"model {name}, {len(y)} images, batch {a.batch_size}, {a.epochs} epochs x {a.repeats} repeats, "
        f"progress bar refresh {a.refresh_rate or 'off'}"
    )
    where = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else f"{os.cpu_count()} CPUs"
    print(f"torch {torch.__version__}, lightning {L.__version__}, commit {sha}, {where}")
    for kind, loss, steps in rows[:2]:
        print(f"  {kind:9s} final loss {loss:.5f} after {steps} steps")
    steps = rows[0][2]
    steps_per_epoch = steps // a.epochs

    def ms(v):
        return f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f} s"

    print(f"  whole fit  plain {ms(plain_t)}, lightning {ms(light_t)} (start-up, W&B init and teardown included)")
    print(f"  fit ratio {statistics.mean(light_t) / statistics.mean(plain_t):.3f}")
    if plain_e and light_e:
        print(f"  per epoch (after the first) plain {ms(plain_e)}, lightning {ms(light_e)}")
        ratio = statistics.mean(light_e) / statistics.mean(plain_e)
        overhead_ms = (statistics.mean(light_e) - statistics.mean(plain_e)) / steps_per_epoch * 1000
        print(f"  epoch ratio {ratio:.3f}, overhead {overhead_ms:.2f} ms/step")
    tol = 5e-6 if a.device == "cpu" else 1e-3  # cuDNN picks kernels per run: not bit-exact on a GPU
    losses_equal = abs(rows[0][1] - rows[1][1]) < tol
    print(f"  losses equal within {tol:g}: {losses_equal}")
    sys.exit(0 if losses_equal else 1)


if __name__ == "__main__":
    main()
