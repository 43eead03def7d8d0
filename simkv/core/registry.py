"""Named plug-ins: one small registry type for TTL heuristics and eviction policies.

A scenario names a plug-in either by its registered name (``adaptive``) or by an import
path (``mypkg.heuristics:my_ttl``), so users add one without touching simkv.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from simkv.core.errors import ScenarioError

T = TypeVar("T")


def import_plugin(name: str, key: str) -> Any:
    """``module:attr`` imported, with the working directory on the import path (after
    everything else), so a plug-in file beside the scenario the user runs from is found.
    Any failure (no module, an exception while importing it, no such attribute) is a
    :class:`ScenarioError` naming ``key``."""
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise ScenarioError(f"{key}: {name!r} is not an import path 'module:function'")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        raise ScenarioError(f"{key}: cannot import {name!r}: {describe(exc)}") from exc
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise ScenarioError(f"{key}: cannot import {name!r}: module {module!r} has no "
                            f"attribute {attr!r}") from None


def describe(exc: BaseException) -> str:
    """``Type: message (file:line)``, the line being the innermost frame outside simkv: where
    a user's plug-in went wrong."""
    text = f"{type(exc).__name__}: {exc}"
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith(here + os.sep)
              and "importlib" not in f.filename]
    if isinstance(exc, SyntaxError) and exc.filename:
        return text
    if frames:
        text += f" ({frames[-1].filename}:{frames[-1].lineno})"
    return text


def check_signature(obj: Any, name: str, key: str, expected: str, n_args: int) -> None:
    """A plug-in must be callable with ``n_args`` positional arguments (``expected``)."""
    if not callable(obj):
        raise ScenarioError(f"{key}: {name!r} is a {type(obj).__name__}, not callable "
                            f"as {expected}")
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # no signature to check (a builtin): trust it
        return
    try:
        sig.bind(*range(n_args))
    except TypeError as exc:
        raise ScenarioError(f"{key}: {name!r} must be callable as {expected}: {exc}") from None


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
            return import_plugin(name, key or self.kind)
        raise ScenarioError(
            f"{key or self.kind}: unknown {self.kind} {name!r} (known: {', '.join(sorted(self._items))}; "
            "or give an import path 'module:function')"
        )

    def is_plugin(self, name: str) -> bool:
        """Whether ``name`` is an import path rather than a registered name."""
        return name not in self._items and ":" in name

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
