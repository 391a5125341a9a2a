"""The overfit-a-tiny-subset check's verdict: its result, the probes run on the inputs before
training, and the likely causes read from the shape of the loss curve.

Pure functions over a dataset and numbers (no training, no ``Trainer``);
:func:`~lit_recipes.callbacks.sanity.overfit_tiny_subset` runs the tiny training and calls them.

Example:
    >>> curve_causes([2.3, 2.29, 2.3], initial=2.3, final=2.29, acc=0.1, lr=1e-7, threshold=0.05, max_steps=3)[0][:36]
    'the loss barely moved (2.300 -> 2.29'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch


class SanityCheckError(ValueError):
    """The tiny-subset overfitting check failed (raised by :class:`OverfitSanityCheck`)."""


@dataclass
class SanityResult:
    """Outcome of :func:`overfit_tiny_subset`."""

    passed: bool
    n: int
    steps: int
    lr: float
    initial_loss: float
    final_loss: float
    final_acc: float
    loss_threshold: float
    losses: list[float] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    probes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: PASS/FAIL with the numbers."""
        word = "PASS" if self.passed else "FAIL"
        return (
            f"sanity {word}: {self.n} samples, {self.steps} steps at lr {self.lr:g}: loss {self.initial_loss:.4f} -> "
            f"{self.final_loss:.4f} (threshold {self.loss_threshold:g}), accuracy {self.final_acc:.1%}"
        )

    def report(self) -> str:
        """The summary line, then one line per likely cause on FAIL."""
        lines = [self.summary()]
        if not self.passed:
            lines.append("likely causes:")
            lines += [f"  - {c}" for c in self.causes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_inputs(dataset, expected: np.ndarray) -> tuple[dict[str, Any], list[str], torch.Tensor, torch.Tensor]:
    """Read the subset twice; compare labels between reads and with ``expected``; check images."""
    first = [dataset[i] for i in range(len(dataset))]
    second_labels = np.asarray([int(dataset[i][1]) for i in range(len(dataset))])
    images = torch.stack([torch.as_tensor(x[0]).float() for x in first])
    labels = np.asarray([int(x[1]) for x in first])
    causes = []
    redrawn = int((labels != second_labels).sum())
    misaligned = int((labels != expected).sum())
    if redrawn:
        causes.append(
            f"labels are not tied to their images: {redrawn} of {len(labels)} labels changed between two reads of "
            "the same samples (re-drawn or shuffled by the data pipeline)"
        )
    elif misaligned:
        causes.append(
            f"labels are misaligned: {misaligned} of {len(labels)} labels differ from the datamodule's train_targets "
            "(the pipeline pairs images with the wrong labels)"
        )
    flat = images.flatten(1)
    spread = float((flat - flat[0]).abs().max()) if len(flat) else 0.0
    per_image_std = flat.std(dim=1) if flat.shape[1] > 1 else torch.zeros(len(flat))
    if spread < 1e-6:
        causes.append(f"the inputs carry no signal: all {len(flat)} images are identical")
    elif float(per_image_std.max()) < 1e-6:
        causes.append("the inputs carry little signal: every image is constant (one value per image)")
    mean, std = float(flat.mean()), float(flat.std())
    if abs(mean) > 3 or std > 10 or (spread >= 1e-6 and std < 0.02):
        causes.append(f"the data is not normalised: inputs have mean {mean:.3g} and std {std:.3g} (expected ~0 and ~1)")
    probes = {
        "labels_changed_between_reads": redrawn,
        "labels_differing_from_targets": misaligned,
        "max_abs_difference_between_images": spread,
        "input_mean": mean,
        "input_std": std,
    }
    return probes, causes, images, torch.as_tensor(labels)


def curve_causes(
    losses: list[float],
    initial: float,
    final: float,
    acc: float,
    lr: float,
    threshold: float,
    max_steps: int,
    data_problem: bool = False,
) -> list[str]:
    """The likely causes of a FAIL from the loss curve: diverged, barely moved (LR far too low, or the
    data problem found by :func:`probe_inputs` when ``data_problem``), or fell but not far enough."""
    if not losses or not math.isfinite(losses[-1]) or not math.isfinite(final) or final > 1.5 * initial:
        where = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        at = f" (non-finite at step {where + 1})" if where is not None else f" ({initial:.3f} -> {final:.3f})"
        return [f"the loss diverged{at}: LR far too high (lr={lr:g}; run `lit-recipes lr-find`)"]
    if final > 0.8 * initial and data_problem:
        return [f"the loss barely moved ({initial:.3f} -> {final:.3f}), as expected with the data problem above"]
    if final > 0.8 * initial:
        return [
            f"the loss barely moved ({initial:.3f} -> {final:.3f}): LR far too low (lr={lr:g}) or gradients not "
            "flowing (frozen layers, a detached graph)"
        ]
    return [
        f"the loss fell ({initial:.3f} -> {final:.3f}) but not below {threshold:g} with {acc:.1%} accuracy in "
        f"{max_steps} steps: a model that cannot fit (too little capacity) or an LR off by 10x; "
        "try more --max_steps, a bigger model, or `lit-recipes lr-find`"
    ]


__all__ = ["SanityCheckError", "SanityResult", "curve_causes", "probe_inputs"]
