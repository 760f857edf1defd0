"""A name -> implementation table for the project's extension points.

Why one class: weighting methods, filter rules, stage-1 sources, output scores and commands are each
chosen by name in a config or on the command line. Each is registered once, next to its code, and a wrong
name fails with the list of names that exist, before any work starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries in registration order; ``get`` of an unknown name raises a ``ValueError`` naming the choices."""

    def __init__(self, kind: str) -> None:
        """``kind``: what an entry is, for error messages ("weighting method", "filter rule")."""
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` above a class or function adds it under ``name``."""
        def add(entry: T) -> T:
            self.add(name, entry)
            return entry
        return add

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._entries)}") from None

    def check(self, names: str | list[str], key: str) -> None:
        """Refuse unknown names with the config ``key`` in the message (config dataclasses call this)."""
        for name in [names] if isinstance(names, str) else names:
            if name not in self._entries:
                raise ValueError(f"{key}: unknown {self.kind} {name!r}; choose from {', '.join(self._entries)}")

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
