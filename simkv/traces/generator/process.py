"""The generative process of :mod:`simkv.traces.generator`: agent types, sessions, turns and
calls drawn from one seeded rng in a fixed order, and released in arrival order
(:meth:`_Workload.calls`); :mod:`simkv.traces.generator.workload` hashes them and assembles
the trace."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from simkv.core.errors import ScenarioError
from simkv.traces.generator.config import GeneratorConfig

CHAT = "chat"
TOOL = "tool"
RAG = "rag"
SYSTEM = "system"
PROMPT_CLASSES: tuple[str, ...] = (CHAT, TOOL, RAG, SYSTEM)

#: The agent catalogue, most popular first: name and the tools its schema declares.
AGENT_CATALOGUE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("coder", ("read_file", "edit_file", "run_tests", "grep", "shell")),
    ("researcher", ("web_search", "fetch_url", "read_pdf", "take_notes")),
    ("support", ("lookup_order", "search_kb", "issue_refund", "create_ticket")),
    ("planner", ("calendar_lookup", "create_task", "send_email")),
    ("analyst", ("sql_query", "run_python", "plot_chart")),
    ("writer", ("search_docs", "style_check", "translate")),
    ("reviewer", ("fetch_diff", "run_linter", "post_comment")),
    ("ops", ("query_metrics", "read_logs", "restart_service", "page_oncall")),
)

# Sessions that end before their first call (first prompt over max_context_tokens) in a row
# before the generator gives up rather than looping forever.
_MAX_EMPTY_SESSIONS = 1000


def _exp(values: np.ndarray) -> np.ndarray:
    """``exp`` of each value through the C library's scalar ``exp`` (``math.exp``).

    Not ``np.exp``: numpy picks its kernel by CPU (AVX-512 has its own), and those kernels
    differ from each other in the last bit, so one seed gave different traces on different
    machines. The scalar C ``exp`` is what numpy's non-AVX-512 kernels call for float64.
    """
    return np.fromiter((math.exp(v) for v in values.tolist()), dtype=np.float64, count=len(values))


def _zipf_cdf(n: int, s: float) -> np.ndarray:
    """CDF of P(rank r) ∝ (r + 1)^-s over ranks 0..n-1 (empty for n = 0).

    The powers are scalar C ``pow`` (``1 / r`` for s = 1), not ``np.power``, whose AVX-512
    kernel differs in the last bit (see :func:`_exp`).
    """
    weights = np.fromiter((1.0 / r if s == 1 else float(r) ** -s for r in range(1, n + 1)),
                          dtype=np.float64, count=n)
    return np.cumsum(weights / weights.sum()) if n else weights


@dataclass(frozen=True)
class _AgentType:
    name: str
    tools: tuple[str, ...]
    system_tokens: int
    schema_tokens: tuple[int, ...]  # per version, oldest first


@dataclass(eq=False)
class _Session:
    """A session's prompt segments, kept while calls of it are still to be written.

    ``hashes`` are the block hashes of ``segments[:hashed]`` (each call's blocks are their
    leading ``input_tokens // block_size``: the prefix property of the module docstring).
    """

    segments: list[tuple[str, int]]
    unwritten: int = 0  # calls generated and not yet in a part of the trace
    hashed: int = 0
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))


@dataclass(eq=False, slots=True)
class _Call:
    """One generated call: a row of the trace, and its prompt as ``segments[:n_segments]``."""

    arrival_s: float
    request_id: str
    session_id: str
    prompt_class: str
    input_tokens: int
    output_tokens: int
    tool_name: str | None
    parent_request_id: str | None
    prompt_key: str
    n_segments: int
    session: _Session


class _Workload:
    """The generative process; one instance per :func:`generate` call."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.agents = self._agent_types()
        self.popularity_cdf = _zipf_cdf(cfg.n_agent_types, cfg.agent_zipf_s)
        # Drawn only when there are tenants, so the rng stream (and the trace) of a
        # configuration without tenants is what it was before tenants existed.
        self.tenant_tokens = self._lengths(cfg.tenant_context_tokens, cfg.n_tenants, sigma=0.5)
        self.tenant_cdf = _zipf_cdf(cfg.n_tenants, cfg.tenant_zipf_s)
        # Generated calls not yet released, a heap by (arrival, generation order): sessions
        # start in time order, so a call is final once the next session starts after it.
        self.pending: list[tuple[float, int, _Call]] = []
        self.generated = 0

    def _agent_types(self) -> list[_AgentType]:
        cfg = self.cfg
        agents = []
        for i in range(cfg.n_agent_types):
            if i < len(AGENT_CATALOGUE):
                name, tools = AGENT_CATALOGUE[i]
            else:
                name, tools = f"agent{i}", tuple(f"tool{i}_{k}" for k in range(3))
            # Per-type sizes vary less than messages do: σ 0.5 across types, 0.3 across versions.
            (system,) = self._lengths(cfg.system_prompt_tokens, 1, sigma=0.5)
            schema = tuple(self._lengths(cfg.tool_schema_tokens, cfg.tool_schema_versions, 0.3))
            agents.append(_AgentType(name, tools, system, schema))
        return agents

    def _lengths(self, median: float, n: int, sigma: float | None = None) -> list[int]:
        """Lognormal token counts: max(1, round(median · exp(σ·Z))); a median of 0 gives 0s."""
        if n == 0:
            return []
        z = self.rng.standard_normal(n)
        if median <= 0:
            return [0] * n
        sigma = self.cfg.length_sigma if sigma is None else sigma
        return np.maximum(1, np.rint(median * _exp(sigma * z))).astype(np.int64).tolist()

    def _seconds(self, median: float, n: int, sigma: float = 1.0) -> np.ndarray:
        """Lognormal durations with the given median: ``median · exp(σ·Z)``."""
        return median * _exp(sigma * self.rng.standard_normal(n))

    def _gaps_after_turns(self, n_turns: int, scheduled: bool) -> np.ndarray:
        """Seconds from a turn's answer to the next turn.

        A user's think time is lognormal; with probability ``pause_prob`` it is replaced by a
        long pause, classic Pareto ``x_m · U^(-1/α)`` capped at ``pause_max_s`` (a human away,
        a long-running tool or job). A scheduled agent instead waits for its next run,
        ``max(60, period + jitter · Z)``. Each feature draws only when enabled, so configs
        without it keep their rng stream.
        """
        cfg, rng = self.cfg, self.rng
        think = self._seconds(cfg.think_time_s, n_turns, cfg.think_time_sigma)
        if scheduled:
            jitter = cfg.schedule_jitter_s * rng.standard_normal(n_turns)
            return np.maximum(60.0, cfg.schedule_period_s + jitter)
        if cfg.pause_prob > 0:
            paused = rng.random(n_turns) < cfg.pause_prob
            pause = cfg.pause_min_s * (1.0 + rng.pareto(cfg.pause_alpha, n_turns))
            think = np.where(paused, np.minimum(pause, cfg.pause_max_s), think)
        return think

    # -- one session ---------------------------------------------------------------------

    def session(self, index: int, start_s: float) -> int:
        """Run session ``index`` starting at ``start_s``; return the number of calls it made."""
        cfg, rng = self.cfg, self.rng
        rank = int(np.searchsorted(self.popularity_cdf, rng.random(), side="right"))
        agent = self.agents[min(rank, cfg.n_agent_types - 1)]
        sid = f"s{index}"
        tag = f"seed{cfg.seed}/{sid}"  # session-unique content is unique to this trace too
        segments: list[tuple[str, int]] = [(f"system/{agent.name}", agent.system_tokens)]
        owner = _Session(segments)
        if rng.random() < cfg.batch_prob:
            return self._one_off(sid, tag, start_s, agent, segments, owner)

        current = cfg.tool_schema_versions - 1
        version = current
        if current > 0 and rng.random() < cfg.old_version_prob:
            version = int(rng.integers(0, current))
        prompt_key = f"{agent.name}@v{version}"
        segments.append((f"tools/{agent.name}/v{version}", agent.schema_tokens[version]))
        if cfg.n_tenants:
            tenant = int(np.searchsorted(self.tenant_cdf, rng.random(), side="right"))
            tenant = min(tenant, cfg.n_tenants - 1)
            segments.append((f"tenant/{tenant}", self.tenant_tokens[tenant]))
        scheduled = cfg.scheduled_prob > 0 and rng.random() < cfg.scheduled_prob
        (own,) = self._lengths(cfg.session_context_tokens, 1)
        segments.append((f"{tag}/context", own))
        context = sum(n for _, n in segments)

        n_turns = int(rng.geometric(1.0 / cfg.turns_mean))
        user = self._lengths(cfg.user_tokens, n_turns)
        answers = self._lengths(cfg.answer_tokens, n_turns)
        rag = rng.random(n_turns) < cfg.rag_prob
        docs = self._lengths(cfg.rag_tokens, n_turns)
        uses_tools = rng.random(n_turns) < cfg.tool_turn_prob
        rounds = np.where(uses_tools, rng.geometric(1.0 / cfg.tool_burst_mean, n_turns), 0)
        think = self._gaps_after_turns(n_turns, scheduled)

        t = start_s
        made: list[str] = []
        for k in range(n_turns):
            segments.append((f"{tag}/t{k}/user", user[k]))
            context += user[k]
            if rag[k]:
                segments.append((f"{tag}/t{k}/doc", docs[k]))
                context += docs[k]
            n_rounds = int(rounds[k])
            tool_out = self._lengths(cfg.tool_call_tokens, n_rounds)
            results = self._lengths(cfg.tool_result_tokens, n_rounds)
            latency = self._seconds(cfg.tool_latency_s, n_rounds)
            tools = rng.integers(0, len(agent.tools), n_rounds)
            for c in range(n_rounds + 1):
                if c > 0:  # the previous call asked for a tool; its result comes back
                    segments.append((f"{tag}/t{k}/c{c}/result", results[c - 1]))
                    context += results[c - 1]
                if context > cfg.max_context_tokens:
                    return len(made)
                output = answers[k] if c == n_rounds else tool_out[c]
                rid = f"{sid}-t{k}-c{c}"
                self._emit(
                    arrival_s=t, request_id=rid, session_id=sid,
                    prompt_class=TOOL if c > 0 else (RAG if rag[k] else CHAT),
                    input_tokens=context, output_tokens=output,
                    tool_name=agent.tools[int(tools[c - 1])] if c > 0 else None,
                    parent=made[-1] if made else None, prompt_key=prompt_key,
                    n_segments=len(segments), owner=owner,
                )
                made.append(rid)
                segments.append((f"{tag}/t{k}/c{c}/out", output))
                context += output
                t += output / cfg.decode_tokens_per_s
                t += float(latency[c]) if c < n_rounds else float(think[k])
        return len(made)

    def _one_off(self, sid: str, tag: str, start_s: float, agent: _AgentType,
                 segments: list[tuple[str, int]], owner: _Session) -> int:
        """A one-off call: the agent's system prompt and a document nobody else sends.

        Its ``prompt_key`` is ``<agent>@system``: it shares the system prompt only.
        """
        (doc,) = self._lengths(self.cfg.batch_doc_tokens, 1)
        (output,) = self._lengths(self.cfg.answer_tokens, 1)
        segments.append((f"{tag}/doc", doc))
        tokens = sum(n for _, n in segments)
        if tokens > self.cfg.max_context_tokens:
            return 0
        rid = f"{sid}-t0-c0"
        self._emit(arrival_s=start_s, request_id=rid, session_id=sid, prompt_class=SYSTEM,
                   input_tokens=tokens, output_tokens=output, tool_name=None, parent=None,
                   prompt_key=f"{agent.name}@system", n_segments=len(segments), owner=owner)
        return 1

    def _emit(self, *, arrival_s: float, request_id: str, session_id: str, prompt_class: str,
              input_tokens: int, output_tokens: int, tool_name: str | None, parent: str | None,
              prompt_key: str, n_segments: int, owner: _Session) -> None:
        call = _Call(arrival_s, request_id, session_id, prompt_class, input_tokens, output_tokens,
                     tool_name, parent, prompt_key, n_segments, owner)
        owner.unwritten += 1
        heapq.heappush(self.pending, (arrival_s, self.generated, call))
        self.generated += 1

    # -- the whole trace -----------------------------------------------------------------

    def calls(self) -> Iterator[_Call]:
        """The trace's ``n_requests`` calls by arrival (ties in generation order: session, then
        turn, then call): the first ones of all the sessions that can contribute.

        Sessions start in time order and a session's calls come at or after its start, so a
        generated call that arrives before the next session's start is final: it is released
        then, and the generator starts sessions until ``n_requests`` calls are released.
        """
        cfg = self.cfg
        n = cfg.n_requests
        start, index, empty, released = 0.0, 0, 0, 0
        while released < n:
            made = self.session(index, start)
            empty = 0 if made else empty + 1
            if empty >= _MAX_EMPTY_SESSIONS:
                raise ScenarioError(
                    f"max_context_tokens: {cfg.max_context_tokens} is smaller than the first "
                    f"prompt of {_MAX_EMPTY_SESSIONS} sessions in a row; raise it")
            index += 1
            start = self._next_start(start)
            while self.pending and self.pending[0][0] < start and released < n:
                yield heapq.heappop(self.pending)[2]
                released += 1
        self.pending.clear()

    def _next_start(self, t: float) -> float:
        """The next session start after ``t``: Poisson, or with a daily cycle by thinning.

        ``rate(t) = session_rate_per_s · (1 + A · cos(2π (t − diurnal_peak_s) / 86400))``
        averages ``session_rate_per_s`` over a day: candidates come at the peak rate
        ``rate · (1 + A)`` and each is kept with probability ``rate(t) / (rate · (1 + A))``.
        """
        cfg, rng = self.cfg, self.rng
        amp = cfg.diurnal_amplitude
        if amp == 0:
            return t + float(rng.exponential(1.0 / cfg.session_rate_per_s))
        peak_rate = cfg.session_rate_per_s * (1.0 + amp)
        while True:
            t += float(rng.exponential(1.0 / peak_rate))
            phase = 2.0 * math.pi * (t - cfg.diurnal_peak_s) / 86400.0
            if rng.random() * (1.0 + amp) < 1.0 + amp * math.cos(phase):
                return t
