"""What every hardware profile is: the :class:`HardwareProfile` interface (prefill, transfer
and step times, a block's value, the archive's compression ratio), the value types it answers
with (:class:`Transfers`, :class:`RequestOverhead`, :class:`StepTime`) and the registry of
profile kinds (:data:`PROFILES`) the ``analytic`` and ``table`` kinds register in."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from simkv.core.errors import ScenarioError
from simkv.core.registry import Registry
from simkv.core.scenario.tiers import TIER_NAMES

if TYPE_CHECKING:
    from simkv.core.scenario import Scenario

PROFILE_VERSION = 1
#: Tiers whose load and store entries every table profile has; the others' (every tier but
#: these and the GPU, whose ``load.gpu`` alone is optional) are needed only when the scenario
#: enables the tier.
REQUIRED_TIERS = ("disk", "archive")
OPTIONAL_TIERS = tuple(t for t in TIER_NAMES[1:] if t not in REQUIRED_TIERS)
GB = 1e9


@dataclass(frozen=True)
class Transfers:
    """Seconds per tier, each tuple indexed like ``TIER_NAMES`` (gpu, cpu, disk, archive).

    Load time of a request = ``Σ_t latency_s[t] + n_t·read_per_block_s[t]`` over the tiers
    ``t`` it loads ``n_t > 0`` blocks from (a tier's latency once per request); a block written
    to tier ``t`` takes ``write_per_block_s[t]``, queued behind the tier's earlier writes (the
    archive's: compression and upload, per block of a pass). The GPU's entries are 0 except
    a table profile's measured ``load.gpu``; the CPU's are 0 where no CPU tier is used."""

    latency_s: tuple[float, ...]
    read_per_block_s: tuple[float, ...]
    write_per_block_s: tuple[float, ...]

    def load_s(self, tier: int, blocks: int) -> float:
        """Seconds to load ``blocks`` blocks from ``tier`` (a ``TIER_NAMES`` index): its latency
        once, then per block; 0 for none."""
        return self.latency_s[tier] + blocks * self.read_per_block_s[tier] if blocks else 0.0

    def to_profile(self, names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The ``load`` and ``store`` sections of a table profile for the tiers ``names`` (their
        ``TIER_NAMES`` order): ``{tier: {per_block_s, per_request_s}}``, ``{tier: {per_block_s}}``."""
        idx = [TIER_NAMES.index(n) for n in names]
        load = {TIER_NAMES[t]: {"per_block_s": self.read_per_block_s[t], "per_request_s": self.latency_s[t]}
                for t in idx}
        return load, {TIER_NAMES[t]: {"per_block_s": self.write_per_block_s[t]} for t in idx}


@dataclass(frozen=True)
class RequestOverhead:
    """Seconds a request costs besides its loads and prefill (a table profile's ``request``
    section, measured by ``simkv calibrate`` against a server; all 0 without it):

    * in the engine's worker, before the first token (so the next request waits for it too):
      ``service_s = per_request_s + blocks·per_block_s + stored·store_per_block_s +
      admitted·admit_per_block_s + evicted·disk_evict_per_block_s``, ``blocks`` = the
      prompt's full blocks (hashed and looked up), ``stored`` = those it computed or fetched
      from the archive (the engine stores them into the GPU cache and LMCache), ``admitted`` =
      those loaded from the CPU or disk tier (copied into the GPU cache), ``evicted`` = the
      disk blocks its stores evict (LMCache evicts inside the store, a scan of its disk index
      and a file removal per chunk; estimated when the request starts as ``min(stored,
      disk blocks held + stored − disk capacity)``, at least 0); ``per_request_s`` and
      ``per_block_s`` are the worker's time outside the load, prefill and store (hashing, the
      walk, the first token);
    * ``latency_s = latency_const_s + tokens·latency_per_token_s`` outside the worker (HTTP,
      JSON, validation, the event loops): in the TTFT the client measures, not in the queue."""

    per_request_s: float = 0.0
    per_block_s: float = 0.0
    store_per_block_s: float = 0.0
    admit_per_block_s: float = 0.0
    disk_evict_per_block_s: float = 0.0
    latency_const_s: float = 0.0
    latency_per_token_s: float = 0.0

    @property
    def any(self) -> bool:
        return any(getattr(self, k) for k in REQUEST_KEYS)

    def service_s(self, blocks: Any, stored: Any, admitted: Any, evicted: Any = 0) -> Any:
        """The worker's time (scalars or arrays)."""
        return (self.per_request_s + blocks * self.per_block_s + stored * self.store_per_block_s
                + admitted * self.admit_per_block_s + evicted * self.disk_evict_per_block_s)

    def latency_s(self, tokens: Any) -> Any:
        """The time outside the worker for prompts of ``tokens`` tokens (scalars or arrays)."""
        return self.latency_const_s + tokens * self.latency_per_token_s


#: The keys of a table profile's ``request`` section (each optional, 0 when absent).
REQUEST_KEYS = ("per_request_s", "per_block_s", "store_per_block_s", "admit_per_block_s",
                "disk_evict_per_block_s", "latency_const_s", "latency_per_token_s")


@dataclass(frozen=True)
class StepTime:
    """Seconds one step of a batching engine takes (``hardware.scheduler: vllm``)::

        step_s = const_s + per_prefill_token_s·P + per_decode_seq_s·D
                 + per_context_token_s·K + prefill_attn_s·A + prefill_context_attn_s·C

    ``P``: the prefill tokens the step computes (over its prefill chunks), ``D``: its decoding
    sequences, ``K``: their KV length summed (cached tokens + the one computed), ``A``: the
    prefill chunks' attention, ``Σ n·(n + c)`` for a chunk of ``n`` tokens after ``c``
    computed ones, ``C``: those chunks' attention over their cached context, ``Σ n·c`` (an
    engine may attend to a prefill's cached KV by another path than to its new tokens: vLLM's
    CPU build does, at about three times the cost). The analytic profile's step is its prefill
    formula applied to the batch (:meth:`HardwareProfile.step_time`), so a step that prefills
    one chunk alone takes ``prefill(n, c)``; a table profile's is the fit ``simkv calibrate
    --steps`` measured."""

    const_s: float
    per_prefill_token_s: float
    per_decode_seq_s: float
    per_context_token_s: float
    prefill_attn_s: float
    prefill_context_attn_s: float = 0.0

    def __call__(self, prefill_tokens: float, decode_seqs: float, context_tokens: float,
                 attn_tokens: float, prefill_context_tokens: float = 0.0) -> float:
        return (self.const_s + self.per_prefill_token_s * prefill_tokens
                + self.per_decode_seq_s * decode_seqs + self.per_context_token_s * context_tokens
                + self.prefill_attn_s * attn_tokens
                + self.prefill_context_attn_s * prefill_context_tokens)


#: A table profile's ``step`` coefficients, in :class:`StepTime` order (all required but
#: the last, 0 when absent).
STEP_KEYS = ("const_s", "per_prefill_token_s", "per_decode_seq_s", "per_context_token_s",
             "prefill_attn_s", "prefill_context_attn_s")


class HardwareProfile(ABC):
    """Prefill time, transfer times and block value (see the module docstring)."""

    kind = ""
    #: The block size the per-block times were measured for (``None``: any).
    block_size: int | None = None
    source = ""

    def __init__(self, zero_service_time: bool = False) -> None:
        self.zero = zero_service_time
        #: What a request costs besides loads and prefill (0 with ``zero_service_time``).
        self.overhead = RequestOverhead()

    @abstractmethod
    def _prefill(self, n: np.ndarray, cached: np.ndarray) -> np.ndarray:
        """Seconds for ``n >= 1`` new tokens after ``cached`` ones (float64 arrays)."""

    @abstractmethod
    def transfers(self, scenario: Scenario, block_bytes: int, archive_bytes: int) -> Transfers:
        """The load and store times for blocks of ``block_bytes`` (``archive_bytes`` compressed)."""

    def compression_ratio(self, scenario: Scenario) -> float:
        """Raw / stored bytes of an archived block: the scenario's ``tiers.archive.compression_ratio``
        (a table profile's measured ``archive.compression_ratio`` replaces it)."""
        return scenario.tiers.archive.compression_ratio

    def check_block_size(self, block_size: int) -> None:
        """Refuse a trace whose block size the profile's per-block times were not made for."""
        if self.block_size is not None and block_size != self.block_size:
            raise ScenarioError(f"{self.source}: block_size: the profile was made for blocks of "
                                f"{self.block_size} tokens but the trace has block_size {block_size}")

    def prefill_s(self, new: int, cached: int) -> float:
        """``prefill(max(new, 1), cached)`` seconds for one request."""
        if self.zero:
            return 0.0
        return float(self._prefill(np.array([max(new, 1)], np.float64), np.array([cached], np.float64))[0])

    def prefill_array(self, new: np.ndarray, cached: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`prefill_s`."""
        if self.zero:
            return np.zeros(len(new))
        n = np.maximum(new, 1).astype(np.float64)
        return self._prefill(n, np.broadcast_to(np.asarray(cached, np.float64), n.shape))

    def step_time(self) -> StepTime:
        """The step time of ``hardware.scheduler: vllm`` (:class:`StepTime`; all 0 with
        ``zero_service_time``)."""
        if self.zero:
            return StepTime(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        return self._step_time()

    @abstractmethod
    def _step_time(self) -> StepTime:
        """The profile's own step time."""

    @property
    def step_latency_s(self) -> float:
        """Seconds a batching engine's output takes outside its engine core (HTTP, the API
        server) before a client sees it, added to TTFT and e2e: a table profile's
        ``step.latency_s``, else 0."""
        return 0.0

    @property
    def step_latency_per_stream_s(self) -> float:
        """Seconds that latency grows by per other request the engine is streaming tokens of at
        the time (the API server and the client handle every stream's tokens): a table
        profile's ``step.latency_per_stream_s``, else 0."""
        return 0.0

    def block_value_s(self, position: Any, input_tokens: Any, block_size: int) -> Any:
        """GPU seconds one reuse of the block at ``position`` of an ``input_tokens`` prompt saves:
        ``prefill(N − p·B, p·B) − prefill(N − (p+1)·B, (p+1)·B)`` (``p`` = position, ``N`` =
        input tokens, ``B`` = block size), the prefill the request avoids when its cached prefix
        extends over this block too. Summed over a request's ``h`` hit blocks it telescopes to
        ``prefill(N, 0) − prefill(N − h·B, h·B)``, the GPU time the metrics count as saved
        (before load time). Scalars in, a float out; arrays in, an array out."""
        p = np.atleast_1d(np.asarray(position, np.int64))
        n = np.broadcast_to(np.atleast_1d(np.asarray(input_tokens, np.int64)), p.shape)
        B = block_size
        value = (self.prefill_array(n - p * B, p * B)
                 - self.prefill_array(n - (p + 1) * B, (p + 1) * B))
        return float(value[0]) if np.ndim(position) == 0 else value


PROFILES: Registry[type[HardwareProfile]] = Registry("hardware profile")
