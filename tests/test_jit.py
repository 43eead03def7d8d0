"""numba's cache is keyed by every kernel module's source, so a change to a callee in another
module (which numba's own cache check misses) cannot leave stale compiled code in use."""

from __future__ import annotations

from pathlib import Path

import simkv.curves
import simkv.model.fast
import simkv.model.kernels
from simkv import jit


def test_every_kernel_module_is_in_the_digest() -> None:
    names = {p.relative_to(jit.ROOT).as_posix() for p in jit.kernel_sources()}
    assert {"model/kernels.py", "model/tier_kernels.py", "model/archive_kernels.py",
            "model/access_kernel.py", "model/fast.py", "curves.py",
            "core/scenario/tiers.py"} <= names   # the tier layout the kernels' offsets follow


def test_kernels_cache_under_the_digest_directory() -> None:
    for fn in (simkv.model.kernels.begin, simkv.model.kernels.finish,
               simkv.model.fast._lru_prefix_hits, simkv.curves._runmax_ranks):
        assert Path(fn._cache._cache_path).is_relative_to(jit.CACHE_DIR)
    assert Path(jit.CACHE_DIR).name == jit._kernel_digest()
