"""``njit`` for simkv's kernels, with numba's on-disk cache kept per version of those kernels.

numba recompiles a cached function when its own source file changes, but not when a function it
calls from another module changes (``kernels.begin`` calling ``tier_kernels.insert``): after an
edit or an upgrade it would keep running stale machine code, silently. Every kernel module takes
``njit`` from here, which points numba's cache at a directory named by a digest of the source of
every simkv module that compiles code, so any change to any of them starts a fresh cache. The
directory is ``$NUMBA_CACHE_DIR`` (or ``~/.cache/simkv/numba``) ``/<digest>``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba
from numba import njit

__all__ = ["CACHE_DIR", "njit"]


ROOT = Path(__file__).resolve().parent


#: Modules the kernels' constants come from without compiling code: the tier layout (the
#: kernels' array offsets follow TIER_NAMES).
LAYOUT_SOURCES = ("core/scenario/tiers.py",)


def kernel_sources() -> list[Path]:
    """Every simkv module that compiles code (its source mentions ``njit``) and the layout
    modules (:data:`LAYOUT_SOURCES`), in path order."""
    return [p for p in sorted(ROOT.rglob("*.py"))
            if (b"njit" in p.read_bytes() and p.name != "jit.py")
            or p.relative_to(ROOT).as_posix() in LAYOUT_SOURCES]


def _kernel_digest() -> str:
    h = hashlib.sha256()
    for path in kernel_sources():
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


_base = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "simkv", "numba")
#: Where the compiled kernels are cached; set before any kernel module defines a function.
CACHE_DIR = os.path.join(_base, _kernel_digest())
numba.config.CACHE_DIR = CACHE_DIR
