"""The core: what the simulator (``simkv.model``, ``simkv.metrics``, sweeps, reports), the real
engine (``simkv_engine``) and the replay client (``simkv.replay``) all build on: errors, typed
configuration, the scenario and its tier specs, the hardware profiles, the policies and their
registry, the tier layout and the rules shared over it, the per-request output schema, the LMCache
mapping. It imports none of them (the import-linter contracts in pyproject.toml hold it so), and
this module imports nothing, so that importing a piece of the core stays light.
"""
