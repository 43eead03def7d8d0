"""Atomic file writes: every output simkv writes (traces, results, sweep cells, reports,
golden files) is written to a temp file beside it and renamed over it, so an interrupted
write never leaves a half file behind. A path that cannot be written (a directory that is a
file, no permission, a full disk) is a :class:`SimkvError` naming it, not a traceback."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simkv.core.errors import SimkvError


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temp file in ``path``'s directory, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise SimkvError(f"{path}: cannot write: {_reason(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def is_temp_file(path: Path) -> bool:
    """A temp file :func:`atomic_write` left behind (its process was killed mid-write)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def make_dir(path: Path, what: str = "output directory") -> Path:
    """``mkdir -p path``; a :class:`SimkvError` naming it if it is a file or cannot be created."""
    if path.exists() and not path.is_dir():
        raise SimkvError(f"{path}: exists and is not a directory (the {what})")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimkvError(f"{path}: cannot create the {what}: {_reason(exc)}") from None
    return path
