"""Policies: TTL heuristics and eviction policies, each looked up by name in a registry."""

from simkv.policies.eviction import EVICTION_POLICIES, EvictionPolicy, NextUse
from simkv.policies.registry import Registry
from simkv.policies.ttl import TTL_HEURISTICS, ClassReuse, TTLContext, TTLHeuristic, make_heuristic

__all__ = [
    "EVICTION_POLICIES",
    "TTL_HEURISTICS",
    "ClassReuse",
    "EvictionPolicy",
    "NextUse",
    "Registry",
    "TTLContext",
    "TTLHeuristic",
    "make_heuristic",
]
