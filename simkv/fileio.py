"""Atomic file writes: every output simkv writes (traces, results, sweep cells, reports,
golden files) is written to a temp file beside it and renamed over it, so an interrupted
write never leaves a half file behind."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temp file in ``path``'s directory, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
