"""Seeded synthetic agent traces: many concurrent agent sessions sharing long prompts.

The generative model, in the order the process unfolds:

* **Agent types.** A small catalogue (``coder``, ``researcher``, ``support``, ...). Each type
  has a long system prompt and a tool-schema segment shared by every session of that type.
  The tool schema is versioned: a session uses the current version, or with probability
  ``old_version_prob`` an older one (a client not yet upgraded), so its prefix diverges
  after the system prompt. Popularity is Zipf-like: P(type of rank r) ∝ (r + 1)^-agent_zipf_s.
* **Arrivals.** Sessions start as a Poisson process of rate ``session_rate_per_s``, or with
  ``diurnal_amplitude`` A > 0 a daily cycle ``rate · (1 + A·cos(2π (t − diurnal_peak_s) / 1 day))``
  (the trace starts at midnight). A share ``batch_prob`` of them are one-off calls (class
  ``system``): the system prompt followed by a document unique to the call, and nothing else.
* **Tenants** (``n_tenants`` > 0). A session belongs to a tenant drawn Zipf-like
  (``tenant_zipf_s``: a few hot tenants, a long tail of cold ones); the tenant's context
  (instructions, knowledge; drawn once per tenant) follows the tool schema, so the prefix
  shared by a tenant's sessions of one agent type is system + tools + tenant.
* **Sessions.** A session opens with a per-session context (user profile, repository map)
  and runs a geometric number of turns (mean ``turns_mean``). In each turn the user writes a
  message (class ``chat``); with probability ``rag_prob`` a retrieved document unique to the
  turn is appended (class ``rag``). With probability ``tool_turn_prob`` the model answers with
  a tool call: a burst of a geometric number of rounds (mean ``tool_burst_mean``), each round
  a quick follow-up call (class ``tool``) that carries the tool's result, issued after the
  call's decode time plus the tool's latency. The turn's last call writes the answer; the
  user then reads and thinks (lognormal, median ``think_time_s``, σ ``think_time_sigma``)
  before the next turn, or with probability ``pause_prob`` goes away for a long pause
  (Pareto from ``pause_min_s``, shape ``pause_alpha``, capped at ``pause_max_s``). A share
  ``scheduled_prob`` of sessions are scheduled agents: each turn is a run, and the next run
  comes a ``schedule_period_s`` (± normal ``schedule_jitter_s``) later, resuming the context.
* **Context growth.** Every call's prompt is the whole conversation so far::

      prompt_k = system + tools + session context + Σ_{earlier} (user + doc + outputs + results)

  so each call's prompt is a prefix of the next one's, and all calls of a session are
  prefixes of the session's final context. The session ends when the next prompt would
  exceed ``max_context_tokens``.

Token lengths are lognormal with the stated *median* and ``length_sigma``:
``n = max(1, round(median · exp(σ·Z)))``, Z ~ N(0, 1).

Prompts are lists of segments ``(segment_id, n_tokens)`` hashed by
:func:`simkv.traces.hashing.chain_block_hashes`. Because a full block's hash depends only
on the segments covering it and on the blocks before it, the full blocks of any prefix of a
segment list are the leading hashes of the whole list: ``chain(S[:m])[:L//B] ==
chain(S)[:L//B]`` where ``L`` is the prefix's token count. The generator therefore hashes each
session's context once (up to its last call in the trace) and slices it per call: the hashing
cost follows the distinct context, not Σ prompt blocks (about 5x fewer hashes on the defaults).

The trace is made in parts of ``PART_ROWS`` requests, in arrival order: sessions start in
time order, so a generated call is final once the next session starts after it. A session's
prompt is kept only until its last call is in a part, and a session whose calls span parts is
hashed again for the later part, so memory follows the sessions in flight, not the trace.

One ``numpy.random.default_rng(seed)`` drives everything, consumed in a fixed order, so a
configuration maps to one byte-identical Parquet file, on any CPU: ``exp``, powers and ``cos``
are the C library's scalar functions, never numpy's ufuncs, whose kernels numpy picks by CPU
(its AVX-512 ``exp`` and ``power`` differ from the others in the last bit). A feature that
is off (no tenants, no pauses, no scheduled agents, no daily cycle) draws nothing, so the
``agents`` preset (the defaults) still makes the canned traces byte for byte. Named
parameter sets (``agents``, ``long-horizon``) are in :mod:`simkv.traces.presets`.
"""

from simkv.traces.generator.config import GeneratorConfig, generator_config
from simkv.traces.generator.process import AGENT_CATALOGUE, CHAT, PROMPT_CLASSES, RAG, SYSTEM, TOOL
from simkv.traces.generator.workload import generate, generate_with_segments

__all__ = [
    "AGENT_CATALOGUE",
    "CHAT",
    "PROMPT_CLASSES",
    "RAG",
    "SYSTEM",
    "TOOL",
    "GeneratorConfig",
    "generate",
    "generate_with_segments",
    "generator_config",
]
