"""simkv's version, in a module of its own so that what records it (run summaries, sweep
manifests, replays) imports it without importing the package's façade (``simkv.run``)."""

__version__ = "0.1.0"
