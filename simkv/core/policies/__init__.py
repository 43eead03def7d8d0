"""Policies: TTL heuristics and eviction policies, each looked up by name in a registry, and the
policy state they decide from (:class:`PolicyState`, keyed by block hash). NumPy and PyYAML only:
a real engine's archive worker imports this without the simulator."""

from simkv.core.policies.eviction import EVICTION_POLICIES, EvictionPolicy, NextUse
from simkv.core.policies.state import PassDecision, PolicyState
from simkv.core.policies.ttl import TTL_HEURISTICS, ClassReuse, TTLContext, TTLHeuristic, make_heuristic
from simkv.core.registry import Registry

__all__ = [
    "EVICTION_POLICIES",
    "TTL_HEURISTICS",
    "ClassReuse",
    "EvictionPolicy",
    "NextUse",
    "PassDecision",
    "PolicyState",
    "Registry",
    "TTLContext",
    "TTLHeuristic",
    "make_heuristic",
]
