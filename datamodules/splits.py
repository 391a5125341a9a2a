"""Seeded, stratified splits of a training pool: the held-out validation/test split
(:func:`stratified_split`) and the k-fold splits (:func:`fold_indices`).

Example:
    >>> import numpy as np
    >>> from lit_recipes.datamodules.splits import fold_indices, stratified_split
    >>> targets = np.array([0, 1] * 10)
    >>> keep, held = stratified_split(targets, 0.2, seed=0)
    >>> len(keep), len(held), np.bincount(targets[held]).tolist()
    (16, 4, [2, 2])
    >>> train, val = fold_indices(targets, fold=0, num_folds=5, stratified=True, seed=0)
    >>> len(train), len(val)
    (16, 4)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stratified_split(
    targets: np.ndarray, fraction: float, seed: int, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(targets)-1`` into (keep, held_out), stratified by class and seeded.

    Raises:
        ValueError: a class would end up with no sample on one side (names the class index, and its
            name when ``class_names`` is given).
    """
    from sklearn.model_selection import train_test_split

    targets = np.asarray(targets)
    counts = np.bincount(targets)
    for cls, n in enumerate(counts):
        if n == 0:
            continue
        held = round(n * fraction)
        if held < 1 or n - held < 1:
            name = f" {class_names[cls]!r}" if class_names is not None and cls < len(class_names) else ""
            raise ValueError(
                f"a held-out fraction of {fraction} leaves class {cls}{name} ({n} samples) with no sample on one side; "
                "lower the fraction or add samples"
            )
    keep, held = train_test_split(
        np.arange(len(targets)), test_size=fraction, stratify=targets, random_state=seed, shuffle=True
    )
    return np.sort(keep), np.sort(held)


def fold_indices(
    targets: np.ndarray, fold: int, num_folds: int, stratified: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) positions of ``fold`` among ``num_folds`` shuffled, seeded (stratified) folds."""
    from sklearn.model_selection import KFold, StratifiedKFold

    targets = np.asarray(targets)
    if num_folds > len(targets):
        raise ValueError(f"num_folds {num_folds} is larger than the {len(targets)} training samples")
    if stratified:
        counts = np.bincount(targets)
        present = np.flatnonzero(counts)
        smallest = present[np.argmin(counts[present])]
        if counts[smallest] < num_folds:
            from lit_recipes.contracts import FoldTooSmallError

            raise FoldTooSmallError(num_folds, int(smallest), int(counts[smallest]))
        splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=num_folds, shuffle=True, random_state=seed)
    for i, (tr, va) in enumerate(splitter.split(np.zeros(len(targets)), targets)):
        if i == fold:
            return np.sort(tr), np.sort(va)
    raise AssertionError("unreachable")


__all__ = ["fold_indices", "stratified_split"]
