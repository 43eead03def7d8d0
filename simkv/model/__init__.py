"""The simulator's model of a serving system: the tiers and the cache over them (a reference
cache and a compiled one), the request engines (SimPy, batching, the clock-free replays) and
their numba kernels. It builds on :mod:`simkv.core` (the scenario, the hardware profiles, the
policies, the tier layout); importing this package imports nothing."""
