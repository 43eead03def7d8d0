"""The real engine beside simkv: a transformers model, LMCache's standalone engine (CPU and
disk backends) behind a connector of our own, and a GPU prefix cache, all configured by the
same scenario file the simulator reads.

LMCache sends anonymous usage telemetry unless told not to; the engine is a measurement tool
that also runs in CI without a network, so it opts out unless the user set
``LMCACHE_TRACK_USAGE`` themselves."""

import os

os.environ.setdefault("LMCACHE_TRACK_USAGE", "false")
