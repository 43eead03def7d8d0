"""simkv: which TTL / placement / eviction policy should this KV-cache workload use, and what will it save?"""

from simkv.errors import SimkvError, TraceError

__version__ = "0.1.0"

__all__ = ["SimkvError", "TraceError", "__version__"]
