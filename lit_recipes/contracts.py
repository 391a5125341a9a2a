"""The contracts between layers, written once: what a callback or a command may rely on from the
datamodule and from the LightningModule, and one function that checks them.

:class:`IndexedDataModule` is what every ``ClassificationDataModule`` provides (the batch and index
contract of ``docs/architecture.md``); :class:`RecipeModule` is what ``ClassifierModule`` provides.
A callback states which members it needs; :func:`check_contract` names every one that is missing in
a single :class:`ContractError` (a ``TypeError``), instead of each callback probing with ``hasattr``.

Example:
    >>> class Half:
    ...     num_classes = 2
    >>> try:
    ...     check_contract(Half(), IndexedDataModule, ("num_classes", "eval_dataloader"), user="MyCallback")
    ... except ContractError as err:
    ...     print(err)
    MyCallback needs data.eval_dataloader, which Half lacks (build the datamodule on lit_recipes.datamodules.ClassificationDataModule)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable


class ContractError(TypeError):
    """An object lacks members a layer above relies on. ``missing`` lists them."""

    def __init__(self, message: str, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


class FoldTooSmallError(ValueError):
    """Stratified k-fold asked for more folds than a class has samples.

    Attributes:
        num_folds: the requested number of folds.
        class_index: the smallest class (index into ``class_names``).
        count: its number of training samples.
    """

    def __init__(self, num_folds: int, class_index: int, count: int) -> None:
        self.num_folds, self.class_index, self.count = int(num_folds), int(class_index), int(count)
        super().__init__(
            f"num_folds {num_folds} is larger than class {class_index}'s {count} samples; "
            "use fewer folds or stratified: false"
        )


@runtime_checkable
class IndexedDataModule(Protocol):
    """The data side: batches are ``(images, targets, indices)``; indices are pool positions."""

    num_classes: int
    in_channels: int
    class_names: list[str]
    train_indices: Any  # pool positions of the current training split (after setup("fit"))
    train_targets: Any  # labels of the whole training pool

    def setup(self, stage: str) -> None: ...

    def set_fold(self, fold: int, num_folds: int, stratified: bool = True) -> None: ...

    def set_sample_weights(self, weights: Any, num_samples: int | None = None) -> None: ...

    def eval_dataloader(
        self,
        split: str = "train",
        indices: Any = None,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int | None = None,
    ) -> Any: ...

    def class_counts(self) -> Any: ...


@runtime_checkable
class RecipeModule(Protocol):
    """The model side: an LR the range test may set, per-sample losses, logits."""

    lr: float
    num_classes: int

    def per_sample_loss(self, batch: Any, logits: Any = None) -> Any: ...

    def predict_logits(self, images: Any) -> Any: ...


def contract_members(protocol: type) -> tuple[str, ...]:
    """Every member a Protocol declares (annotated attributes and methods), in declaration order."""
    names = list(getattr(protocol, "__annotations__", {}))
    names += [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]
    return tuple(dict.fromkeys(names))


def missing_members(obj: Any, protocol: type, needs: Iterable[str] | None = None) -> list[str]:
    """The members of ``protocol`` (or the subset ``needs``) that ``obj`` lacks; ``None`` lacks all.

    Raises:
        ValueError: ``needs`` names something the protocol does not declare (a typo in a caller).
    """
    declared = contract_members(protocol)
    wanted = declared if needs is None else tuple(needs)
    unknown = [n for n in wanted if n not in declared]
    if unknown:
        raise ValueError(f"{protocol.__name__} declares no {', '.join(unknown)}")
    if obj is None:
        return list(wanted)
    return [n for n in wanted if not hasattr(obj, n)]


def check_contract(
    obj: Any, protocol: type, needs: Iterable[str] | None = None, *, role: str = "data", user: str = "this command"
) -> None:
    """Raise :class:`ContractError` naming every member of ``protocol`` (or of ``needs``) that ``obj``
    lacks, in one line: ``"<user> needs <role>.a, <role>.b, which <Type> lacks (<hint>)"``."""
    missing = missing_members(obj, protocol, needs)
    if not missing:
        return
    what = "no object" if obj is None else type(obj).__name__
    if protocol is IndexedDataModule:
        hint = "build the datamodule on lit_recipes.datamodules.ClassificationDataModule"
    else:
        hint = "build the module on lit_recipes.module.ClassifierModule"
    names = ", ".join(f"{role}.{n}" for n in missing)
    lacks = f"but there is {what}" if obj is None else f"which {what} lacks"
    raise ContractError(f"{user} needs {names}, {lacks} ({hint})", missing)


__all__ = [
    "ContractError",
    "FoldTooSmallError",
    "IndexedDataModule",
    "RecipeModule",
    "check_contract",
    "contract_members",
    "missing_members",
]
