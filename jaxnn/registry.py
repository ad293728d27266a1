"""One registry type for every table of names: activations, losses, initializers, optimizers,
schedules and preprocessing steps.

A :class:`Registry` maps a name to an :class:`Entry`: the object, whether :meth:`Registry.get`
calls it with the caller's options (a *factory*, e.g. ``he_normal`` or ``adam``) or returns it
as is (``relu``), and the name's metadata -- what other modules would otherwise infer from the
name (an activation's learnable parameters, a loss's kind of target, ...). A module picks the
metadata its names carry by giving the registry an entry type, a frozen dataclass subclassing
:class:`Entry` with defaults for every field (``jaxnn.activations.ActivationEntry``,
``jaxnn.losses.LossEntry``); :meth:`Registry.register` fills it from keywords.

Every registry speaks the same way: ``get(name, *args, **options)``, ``names()`` (registration
order, aliases included), ``entry(name)``, ``name in registry``; and every unknown name is the
same one-line ``ValueError``::

    unknown activation 'rleu'; valid: linear, identity, step, ...

Example:

>>> colors = Registry("color")
>>> colors.register("red", (255, 0, 0))
>>> colors.get("red")
(255, 0, 0)
>>> colors.get("blue")
Traceback (most recent call last):
ValueError: unknown color 'blue'; valid: red

This module is the bottom of the package: it imports only the standard library.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Entry", "Registry"]

T = TypeVar("T")
E = TypeVar("E", bound="Entry")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Entry(Generic[T]):
    """One registered name.

    Attributes:
      name: the name looked up.
      obj: what it names.
      factory: :meth:`Registry.get` calls ``obj(*args, **options)`` (else returns ``obj`` and
        refuses options).
      alias_of: for an alias, the name it stands for (its entry has the same ``obj`` and
        metadata); ``None`` for a primary name.

    Subclasses add metadata fields, each with a default.
    """

    name: str
    obj: T
    factory: bool = False
    alias_of: str | None = None

    @property
    def canonical(self) -> str:
        """The primary name (``name`` itself unless this is an alias)."""
        return self.alias_of or self.name

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options ``obj`` takes (parameters that can be passed by keyword)."""
        params = _parameters(self.obj)
        return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    @property
    def required(self) -> tuple[str, ...]:
        """The options a factory cannot do without (parameters without a default)."""
        params = _parameters(self.obj)
        return tuple(p.name for p in params if p.default is p.empty
                     and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _parameters(obj) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return []


class Registry(Generic[E]):
    """Names of one kind (``"activation"``, ``"loss"``, ...) and their :class:`Entry`.

    Args:
      kind: what a name names, as it reads in error messages (``"unknown {kind} 'x'"``).
      entry_type: the :class:`Entry` subclass holding this kind's metadata.
      factory: the default of :meth:`register`'s ``factory``.
    """

    def __init__(self, kind: str, *, entry_type: type[E] = Entry, factory: bool = False):
        self.kind = kind
        self.entry_type = entry_type
        self.factory = factory
        self._entries: dict[str, E] = {}

    # -------------------------------------------------------------------- building
    def register(self, name: str, obj: Any = None, /, *, factory: bool | None = None,
                 **metadata: Any):
        """Register ``obj`` under ``name`` with its metadata (the entry type's fields).

        Without ``obj``, a decorator: ``@registry.register("relu")``. A name can be registered
        once (``ValueError`` otherwise); an unknown metadata field is a ``TypeError``.
        """
        if obj is None:
            def decorate(fn):
                self.register(name, fn, factory=factory, **metadata)
                return fn
            return decorate
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names are non-empty strings, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = self.entry_type(
            name=name, obj=obj, factory=self.factory if factory is None else factory,
            **metadata)
        return None

    def alias(self, name: str, target: str) -> None:
        """Register ``name`` as another name of ``target`` (same object, same metadata)."""
        entry = self.entry(target)
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = dataclasses.replace(entry, name=name, alias_of=entry.canonical)

    def unregister(self, name: str) -> None:
        """Remove ``name`` and its aliases (for tests and plug-ins)."""
        canonical = self.entry(name).canonical
        for n in [n for n, e in self._entries.items() if e.canonical == canonical or n == name]:
            del self._entries[n]

    def copy(self) -> Registry[E]:
        """An independent registry with the same entries (a scratch registry for tests)."""
        new = Registry(self.kind, entry_type=self.entry_type, factory=self.factory)
        new._entries = dict(self._entries)
        return new

    # -------------------------------------------------------------------- looking up
    def unknown(self, name: Any) -> ValueError:
        """The one error for a name this registry does not hold."""
        return ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(self._entries)}")

    def entry(self, name: str) -> E:
        """The :class:`Entry` of ``name``; ``ValueError`` (:meth:`unknown`) if there is none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name"
            raise self.unknown(name) from None

    def check(self, name: str) -> str:
        """``name`` itself if registered, else the :meth:`unknown` ``ValueError``."""
        self.entry(name)
        return name

    def names(self) -> tuple[str, ...]:
        """Every registered name (aliases included), in registration order."""
        return tuple(self._entries)

    def entries(self) -> tuple[E, ...]:
        """Every :class:`Entry`, in registration order (aliases included)."""
        return tuple(self._entries.values())

    def get(self, name: str | Callable, /, *args: Any, **options: Any):
        """What ``name`` names: a factory's ``obj(*args, **options)``, else ``obj`` itself.

        A callable given in place of a name is returned unchanged (it is the thing already).

        Raises:
          ValueError: an unknown name (:meth:`unknown`); options for a name that takes none;
            options a factory does not accept, or a required one missing (the message names
            them). Errors raised by the factory itself (bad option *values*) pass through.
        """
        if callable(name) and not isinstance(name, str):
            if args or options:
                raise ValueError(f"{self.kind}: options {sorted(options)} given with a "
                                 f"{self.kind} object instead of a name")
            return name
        entry = self.entry(name)
        if not entry.factory:
            if args or options:
                raise ValueError(f"{self.kind} {name!r} takes no options; got "
                                 f"{sorted(options) or list(args)}")
            return entry.obj
        try:
            inspect.signature(entry.obj).bind(*args, **options)
        except TypeError as e:
            raise ValueError(f"{self.kind} {name!r}: bad options {options}: {e}") from None
        except ValueError:  # no signature (a builtin): let the call decide
            pass
        return entry.obj(*args, **options)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} names)"
