"""The generator's parameters: :class:`GeneratorConfig` (defaults, ranges) and
:func:`generator_config` (preset, then overrides)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from simkv.core.config import apply_overrides, from_dict, to_dict
from simkv.core.errors import ScenarioError
from simkv.traces.presets import DEFAULT_PRESET, get_preset


@dataclass(frozen=True)
class GeneratorConfig:
    """Parameters of the synthetic agent workload (token lengths are lognormal medians).

    | field | default | meaning |
    |---|---|---|
    | seed | 0 | seed of the one ``numpy.random.default_rng`` |
    | n_requests | 3000 | requests in the trace (the first ones by arrival) |
    | block_size | 256 | tokens per KV block |
    | model | llama-3.1-8b-instruct | value of the ``model`` column |
    | session_rate_per_s | 0.3 | Poisson rate of session starts (one-off calls included) |
    | batch_prob | 0.3 | share of starts that are one-off ``system`` calls |
    | batch_doc_tokens | 6000 | unique document of a one-off call |
    | n_agent_types | 8 | agent types in use (catalogue first, then ``agent<i>``) |
    | agent_zipf_s | 1.0 | Zipf exponent of agent-type popularity |
    | system_prompt_tokens | 3000 | system prompt of an agent type (drawn once per type) |
    | tool_schema_tokens | 1500 | tool schema of an agent type (drawn once per version) |
    | tool_schema_versions | 3 | versions of each tool schema; the last is current |
    | old_version_prob | 0.1 | probability a session uses an older tool-schema version |
    | session_context_tokens | 4000 | per-session context (profile, repo map), unique |
    | turns_mean | 4.0 | mean turns per session (geometric, >= 1) |
    | user_tokens | 150 | user message of a turn |
    | answer_tokens | 350 | output of a turn's last call |
    | think_time_s | 60.0 | user think time between turns (lognormal median) |
    | think_time_sigma | 1.0 | lognormal σ of the think time |
    | pause_prob | 0.0 | probability a turn is followed by a long pause instead of think time |
    | pause_min_s | 600.0 | shortest long pause (Pareto scale x_m) |
    | pause_alpha | 1.0 | Pareto shape α of a long pause: P(pause > x) = (x_m / x)^α |
    | pause_max_s | 172800.0 | longest long pause (the Pareto draw is capped here) |
    | scheduled_prob | 0.0 | share of sessions that are scheduled agents (one run per period) |
    | schedule_period_s | 86400.0 | period between a scheduled agent's runs |
    | schedule_jitter_s | 900.0 | σ of the normal jitter added to each period (>= 60 s gap) |
    | n_tenants | 0 | tenants (0: none); a tenant's context follows the tool schema |
    | tenant_zipf_s | 1.0 | Zipf exponent of tenant popularity (hot to cold tenants) |
    | tenant_context_tokens | 2000 | tenant context (instructions, knowledge), drawn once per tenant |
    | diurnal_amplitude | 0.0 | A in rate(t) = rate · (1 + A·cos(2π (t − peak) / 1 day)) |
    | diurnal_peak_s | 50400.0 | time of day (seconds after the trace's midnight start) of the peak |
    | rag_prob | 0.35 | probability a turn retrieves a document |
    | rag_tokens | 6000 | retrieved document, unique to the turn |
    | tool_turn_prob | 0.5 | probability a turn runs a tool-call burst |
    | tool_burst_mean | 3.0 | mean tool rounds of a burst (geometric, >= 1) |
    | tool_call_tokens | 60 | output of a call that requests a tool |
    | tool_result_tokens | 1500 | tool result appended before the follow-up call |
    | tool_latency_s | 1.5 | tool execution time (lognormal median, σ=1) |
    | decode_tokens_per_s | 50.0 | output speed, spacing a call from the next one |
    | max_context_tokens | 32768 | a session ends before a prompt would exceed this |
    | length_sigma | 0.8 | lognormal σ of the per-message token lengths |
    """

    seed: int = 0
    n_requests: int = 3000
    block_size: int = 256
    model: str = "llama-3.1-8b-instruct"
    session_rate_per_s: float = 0.3
    batch_prob: float = 0.3
    batch_doc_tokens: int = 6000
    n_agent_types: int = 8
    agent_zipf_s: float = 1.0
    system_prompt_tokens: int = 3000
    tool_schema_tokens: int = 1500
    tool_schema_versions: int = 3
    old_version_prob: float = 0.1
    session_context_tokens: int = 4000
    turns_mean: float = 4.0
    user_tokens: int = 150
    answer_tokens: int = 350
    think_time_s: float = 60.0
    think_time_sigma: float = 1.0
    pause_prob: float = 0.0
    pause_min_s: float = 600.0
    pause_alpha: float = 1.0
    pause_max_s: float = 172800.0
    scheduled_prob: float = 0.0
    schedule_period_s: float = 86400.0
    schedule_jitter_s: float = 900.0
    n_tenants: int = 0
    tenant_zipf_s: float = 1.0
    tenant_context_tokens: int = 2000
    diurnal_amplitude: float = 0.0
    diurnal_peak_s: float = 50400.0
    rag_prob: float = 0.35
    rag_tokens: int = 6000
    tool_turn_prob: float = 0.5
    tool_burst_mean: float = 3.0
    tool_call_tokens: int = 60
    tool_result_tokens: int = 1500
    tool_latency_s: float = 1.5
    decode_tokens_per_s: float = 50.0
    max_context_tokens: int = 32768
    length_sigma: float = 0.8

    def check(self, prefix: str = "") -> None:
        """Raise :class:`ScenarioError` naming the first parameter out of its range."""

        def bad(name: str, why: str) -> ScenarioError:
            key = f"{prefix}.{name}" if prefix else name
            return ScenarioError(f"{key}: {getattr(self, name)!r} {why}")

        if self.seed < 0:
            raise bad("seed", "must be >= 0")
        for name in ("n_requests", "block_size", "n_agent_types", "tool_schema_versions",
                     "system_prompt_tokens", "max_context_tokens"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        for name in ("batch_doc_tokens", "tool_schema_tokens", "session_context_tokens",
                     "user_tokens", "answer_tokens", "rag_tokens", "tool_call_tokens",
                     "tool_result_tokens", "n_tenants", "tenant_context_tokens"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        for name in ("batch_prob", "old_version_prob", "rag_prob", "tool_turn_prob", "pause_prob",
                     "scheduled_prob", "diurnal_amplitude"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "must be a probability in [0, 1]")
        for name in ("session_rate_per_s", "decode_tokens_per_s", "pause_min_s", "pause_alpha",
                     "schedule_period_s"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be > 0")
        for name in ("turns_mean", "tool_burst_mean"):
            if not getattr(self, name) >= 1:
                raise bad(name, "must be >= 1 (a geometric count is at least 1)")
        for name in ("agent_zipf_s", "think_time_s", "tool_latency_s", "length_sigma",
                     "think_time_sigma", "schedule_jitter_s", "tenant_zipf_s", "diurnal_peak_s"):
            if not getattr(self, name) >= 0:
                raise bad(name, "must be >= 0")
        if not self.model:
            raise bad("model", "must not be empty")
        if self.pause_max_s < self.pause_min_s:
            raise bad("pause_max_s", f"must be >= pause_min_s ({self.pause_min_s!r})")


def generator_config(
    *, seed: int = 0, n_requests: int | None = None, overrides: Sequence[str] = (),
    preset: str = DEFAULT_PRESET,
) -> GeneratorConfig:
    """Defaults, then the ``preset``'s parameters (:mod:`simkv.traces.presets`), then
    ``seed`` / ``n_requests``, then ``key=value`` overrides, validated.

    A bad key or value raises :class:`ScenarioError` naming it (via :func:`simkv.core.config.from_dict`),
    an unknown preset one naming the known ones.
    """
    data: dict[str, Any] = to_dict(GeneratorConfig())
    data.update(get_preset(preset).params)
    data["seed"] = seed
    if n_requests is not None:
        data["n_requests"] = n_requests
    apply_overrides(data, overrides)
    return from_dict(GeneratorConfig, data)
