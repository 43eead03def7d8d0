"""Sweep grids: named axes of scenario overrides, expanded into cells.

A grid is an ordered list of axes ``key → values`` (``--grid key=v1,v2`` on the command line,
or a YAML mapping ``key: [v1, v2]`` in a grid file). Its cells are the Cartesian product in a
fixed order: axes in the order given, the last axis varying fastest. Each cell is a list of
``(key, value)`` overrides for :func:`simkv.core.config.apply_overrides`, identified by a short
hash of its sorted overrides, so a resumed sweep recognises a cell whatever the axis order.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simkv.core.config import parse_assignment, read_yaml_file
from simkv.core.errors import SimkvError

Override = tuple[str, Any]


def _canonical(value: Any) -> str:
    """A JSON spelling of a value, stable across runs (dict keys sorted)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def cell_id(overrides: Iterable[Override]) -> str:
    """A 12-hex-digit id: the SHA-256 of the overrides sorted by key."""
    text = _canonical(sorted([k, v] for k, v in overrides))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Axis:
    """One swept key and the values it takes, in order."""

    key: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.key or self.key.startswith(".") or self.key.endswith("."):
            raise SimkvError(f"--grid: {self.key!r} is not a scenario key (e.g. ttl.params.alpha)")
        if not self.values:
            raise SimkvError(f"--grid {self.key}: no values")
        seen: set[str] = set()
        for v in self.values:
            c = _canonical(v)
            if c in seen:
                raise SimkvError(f"--grid {self.key}: value {v!r} is listed twice")
            seen.add(c)


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its position in grid order, overrides and id."""

    index: int
    overrides: tuple[Override, ...]
    id: str

    def label(self) -> str:
        return ", ".join(f"{k}={_canonical(v)}" for k, v in self.overrides) or "(base scenario)"


@dataclass(frozen=True)
class Grid:
    """An ordered set of axes; :meth:`cells` is their Cartesian product."""

    axes: tuple[Axis, ...] = ()

    def __post_init__(self) -> None:
        keys = [a.key for a in self.axes]
        for k in keys:
            if keys.count(k) > 1:
                raise SimkvError(f"--grid {k}: the key is swept twice; give its values once")

    @property
    def keys(self) -> list[str]:
        return [a.key for a in self.axes]

    def __len__(self) -> int:
        n = 1
        for a in self.axes:
            n *= len(a.values)
        return n

    def cells(self) -> list[Cell]:
        """Every cell, in grid order (the last axis varies fastest)."""
        out = []
        for i, combo in enumerate(itertools.product(*(a.values for a in self.axes))):
            ov = tuple(zip(self.keys, combo, strict=True))
            out.append(Cell(i, ov, cell_id(ov)))
        return out

    def to_dict(self) -> dict[str, list[Any]]:
        return {a.key: list(a.values) for a in self.axes}

    def __add__(self, other: Grid) -> Grid:
        return Grid(self.axes + other.axes)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "grid") -> Grid:
        """``{key: [values]}``; a scalar is a one-value axis."""
        if not isinstance(data, Mapping):
            raise SimkvError(f"{source}: a grid is a mapping of key → list of values, "
                             f"got {type(data).__name__}")
        axes = []
        for k, v in data.items():
            values = tuple(v) if isinstance(v, list | tuple) else (v,)
            axes.append(Axis(str(k), values))
        return cls(tuple(axes))

    @classmethod
    def from_specs(cls, specs: Sequence[str]) -> Grid:
        """From ``key=v1,v2,...`` strings; each value is read as YAML (``key=[1,2]`` also works)."""
        axes = []
        for spec in specs:
            if "=" not in spec:
                raise SimkvError(f"--grid {spec!r}: expected key=v1,v2,...")
            key, raw = (s.strip() for s in spec.split("=", 1))
            if raw.startswith("["):
                values = parse_assignment(f"v={raw}")[1]
                if not isinstance(values, list):
                    raise SimkvError(f"--grid {spec!r}: not a YAML list")
            else:
                values = [parse_assignment(f"v={v}")[1] for v in raw.split(",")]
            if any(v == "" for v in values):
                raise SimkvError(f"--grid {spec!r}: empty value (expected key=v1,v2,...)")
            axes.append(Axis(key, tuple(values)))
        return cls(tuple(axes))

    @classmethod
    def from_file(cls, path: str | Path) -> Grid:
        """A YAML file mapping key → list of values."""
        path = Path(path)
        return cls.from_mapping(read_yaml_file(path, "grid file") or {}, source=str(path))


GridLike = Grid | Mapping[str, Sequence[Any]] | Sequence[str]


def as_grid(grid: GridLike) -> Grid:
    """A :class:`Grid` from a grid, a mapping ``key → values`` or ``key=v1,v2`` strings."""
    if isinstance(grid, Grid):
        return grid
    if isinstance(grid, Mapping):
        return Grid.from_mapping(grid)
    if isinstance(grid, str):
        return Grid.from_specs([grid])
    return Grid.from_specs(list(grid))
