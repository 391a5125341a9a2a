"""State keys that name a callback's distinguishing arguments, so two instances of one callback keep
separate state in one checkpoint, and a fallback for checkpoints that stored it under the class name.

Lightning stores a callback's ``state_dict()`` under ``checkpoint["callbacks"][callback.state_key]``;
the default key is the class name, so two stateful instances of one class clash (the Trainer refuses
them). :func:`argument_state_key` returns ``"ClassName{'arg': value, ...}"`` (Lightning's own format,
as ``ModelCheckpoint`` uses). Checkpoints written before a callback named its arguments keep its
state under the bare class name; :func:`load_unkeyed_state`, called from ``on_load_checkpoint``,
restores it from there (``load_state_dict`` runs right after and finds nothing under the new key).

Example:
    >>> from lightning.pytorch.callbacks import Callback
    >>> class Counter(Callback):
    ...     def __init__(self, every: int) -> None:
    ...         self.every, self.count = every, 0
    ...     @property
    ...     def state_key(self) -> str:
    ...         return argument_state_key(self, every=self.every)
    ...     def state_dict(self):
    ...         return {"count": self.count}
    ...     def load_state_dict(self, state):
    ...         self.count = state["count"]
    >>> Counter(2).state_key
    "Counter{'every': 2}"
    >>> c = Counter(2)
    >>> load_unkeyed_state(c, {"callbacks": {"Counter": {"count": 5}}})
    >>> c.count
    5
"""

from __future__ import annotations

import copy
from typing import Any


def argument_state_key(callback: Any, **arguments: Any) -> str:
    """``"<ClassName>{'name': value, ...}"``: the class name and the arguments that tell instances apart."""
    return f"{type(callback).__qualname__}{arguments!r}"


def load_unkeyed_state(callback: Any, checkpoint: dict[str, Any]) -> None:
    """Load ``callback``'s state from a checkpoint that stored it under the bare class name (written
    before the state key named the arguments); nothing happens when the checkpoint has the new key
    or no such state."""
    states = checkpoint.get("callbacks") or {}
    old = states.get(type(callback).__qualname__)
    if old and callback.state_key not in states:
        callback.load_state_dict(copy.deepcopy(old))


__all__ = ["argument_state_key", "load_unkeyed_state"]
