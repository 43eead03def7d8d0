"""Named workload presets of the trace generator: parameter sets over ``GeneratorConfig``.

A preset is a mapping of :class:`~simkv.traces.generator.GeneratorConfig` fields to values,
applied over the defaults; ``--set key=value`` applies on top of it, and the result is
validated like any configuration (:func:`simkv.core.config.from_dict`). ``simkv trace gen
--preset NAME`` picks one by name; a user's own is named by import path (``mymod:MY_PRESET``)
or added with ``PRESETS.add("mine", Preset(...))``.

What each preset models, and which published workload statistics it follows, is in
traces/README.md ("Presets").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from simkv.core.errors import ScenarioError
from simkv.core.registry import Registry

DEFAULT_PRESET = "agents"


@dataclass(frozen=True)
class Preset:
    """A named workload: a one-line description and the parameters it changes."""

    description: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))


PRESETS: Registry[Preset] = Registry("preset")


def get_preset(name: str) -> Preset:
    """The preset ``name`` (or ``module:attr``); an unknown name lists the known ones."""
    if name not in PRESETS and ":" not in name:
        raise ScenarioError(f"--preset: unknown preset {name!r} (known: {', '.join(PRESETS.names())}; "
                            "or give an import path 'module:PRESET')")
    preset = PRESETS.get(name, key="--preset")
    if not isinstance(preset, Preset):
        raise ScenarioError(f"--preset: {name!r} is not a simkv.traces.presets.Preset")
    return preset


PRESETS.add(DEFAULT_PRESET, Preset(
    "Concurrent agent sessions a minute apart (the canned traces): reuse gaps of seconds to "
    "minutes, all within a disk tier.",
))

# Sized for one H100 serving an 8B model (docs/system.md): with the default scenario's analytic
# prefill profile, computing every prompt from scratch keeps the GPU ~2/3 busy on average.
PRESETS.add("long-horizon", Preset(
    "Agents over days: long shared prompts, hot and cold tenants, sessions that pause for "
    "minutes to a day and scheduled agents that resume daily; reuse gaps of seconds to days.",
    {
        "n_requests": 20000,
        "session_rate_per_s": 0.009,
        "diurnal_amplitude": 0.4,
        "batch_prob": 0.15,
        "batch_doc_tokens": 8000,
        "n_agent_types": 24,
        "agent_zipf_s": 1.1,
        "system_prompt_tokens": 6000,
        "tool_schema_tokens": 3000,
        "n_tenants": 32,
        "tenant_zipf_s": 1.2,
        "tenant_context_tokens": 2000,
        "session_context_tokens": 8000,
        "turns_mean": 14.0,
        "think_time_s": 30.0,
        "think_time_sigma": 1.2,
        "pause_prob": 0.3,
        "pause_min_s": 900.0,
        "pause_alpha": 0.5,
        "pause_max_s": 172800.0,
        "scheduled_prob": 0.2,
        "schedule_period_s": 86400.0,
        "schedule_jitter_s": 900.0,
        "rag_prob": 0.25,
        "rag_tokens": 8000,
        "tool_turn_prob": 0.7,
        "tool_burst_mean": 4.0,
        "tool_result_tokens": 3000,
        "max_context_tokens": 131072,
    },
))
