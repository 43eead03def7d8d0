"""Named plug-ins: one small registry type for TTL heuristics and eviction policies.

A scenario names a plug-in either by its registered name (``adaptive``) or by an import
path (``mypkg.heuristics:my_ttl``), so users add one without touching simkv.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from simkv.errors import ScenarioError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → plug-in mapping with helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def get(self, name: str, key: str = "") -> T:
        """Look up ``name`` (or import ``module:attr``); ``key`` names the scenario key for errors."""
        if name in self._items:
            return self._items[name]
        if ":" in name:
            module, _, attr = name.partition(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ScenarioError(f"{key or self.kind}: cannot import {name!r}: {exc}") from None
        raise ScenarioError(
            f"{key or self.kind}: unknown {self.kind} {name!r} (known: {', '.join(sorted(self._items))}; "
            "or give an import path 'module:function')"
        )

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
