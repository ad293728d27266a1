"""Name look-ups shared by the registries (activations, losses, initializers, optimizers...)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name, kind: str) -> T:
    """``registry[name]``, or a ``ValueError`` naming the ``kind`` and listing the valid names."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown {kind} {name!r}; valid names: {', '.join(registry)}.") from None
