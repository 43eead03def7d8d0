"""Policies: TTL heuristics and eviction policies, each looked up by name in a registry, and the
policy state they decide from (:class:`PolicyState`, keyed by block hash). NumPy and PyYAML only:
a real engine's archive worker imports this without the simulator."""

from simkv.policies.eviction import EVICTION_POLICIES, EvictionPolicy, NextUse
from simkv.policies.registry import Registry
from simkv.policies.state import PassDecision, PolicyState
from simkv.policies.ttl import TTL_HEURISTICS, ClassReuse, TTLContext, TTLHeuristic, make_heuristic

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
