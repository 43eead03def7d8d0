"""simkv: which TTL / placement / eviction policy should this KV-cache workload use, and what will it save?

``simkv.run(scenario, trace)`` simulates and returns a :class:`simkv.api.Result`; it is
imported on first use, so ``import simkv`` (and the CLI) stays light.
"""

from typing import Any

from simkv.core.errors import SimkvError, TraceError
from simkv.version import __version__

__all__ = ["Result", "SimkvError", "TraceError", "__version__", "run"]


def __getattr__(name: str) -> Any:
    if name in ("run", "Result"):
        from simkv import api

        return getattr(api, name)
    raise AttributeError(f"module 'simkv' has no attribute {name!r}")
