"""The hardware profile: every time the simulator charges, and a block's value, from one place.

A profile answers three questions, vectorised where the metrics need many answers at once:

* ``prefill(n, c)``: seconds to prefill ``n`` new tokens after ``c`` cached ones (at least
  one token is always computed, so ``n`` is ``max(n, 1)``);
* the transfer times (:class:`Transfers`): per-request and per-block load time of the CPU,
  disk and archive tiers (and of GPU hits: nothing, unless a table profile measured the
  engine's GPU-cache copy as ``load.gpu``), CPU and disk write time per block, and the
  archive worker's compress + upload time per block;
* what a request costs besides its loads and prefill (:class:`RequestOverhead`: a table
  profile's optional ``request`` section, nothing otherwise);
* a block's value (:meth:`HardwareProfile.block_value_s`): the GPU time one reuse of it saves,
  defined from ``prefill`` alone so that it agrees with what the engine charges;
* the archive's compression ratio (:meth:`HardwareProfile.compression_ratio`): the scenario's
  ``tiers.archive.compression_ratio`` unless a table profile carries a measured one.

Two kinds are registered by name (:data:`PROFILES`): ``analytic`` (the fitted formula of the
scenario's ``hardware.prefill_*`` keys, transfer times from the tiers' bandwidths) and
``table`` (a measured profile file, ``hardware.profile: profiles/NAME.yaml``; format in
docs/system.md, "Hardware profiles"). ``hardware.zero_service_time`` makes every time zero
whatever the profile.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simkv.core.config import read_yaml_file
from simkv.core.errors import ScenarioError
from simkv.core.registry import Registry

if TYPE_CHECKING:
    from simkv.core.scenario import Scenario

PROFILE_VERSION = 1
GB = 1e9


@dataclass(frozen=True)
class Transfers:
    """Seconds: ``*_lat`` once per request that loads from the tier, ``*_per_block`` per block.

    Load time of a request = ``gpu_lat + n_gpu·gpu_per_block`` (if it hits any GPU block; both
    0 except in a table profile with ``load.gpu``) ``+ cpu_lat + n_cpu·cpu_per_block`` (if it
    loads any CPU block)
    ``+ disk_lat + n_disk·disk_per_block`` (if any disk block) ``+ arch_lat +
    n_arch·arch_per_block`` (if any archive block); CPU and disk writes each queue behind
    each other at ``cpu_write_per_block`` / ``disk_write_per_block``; an archive pass is busy
    ``(arch_compress_per_block + arch_upload_per_block)`` per uploaded block. The CPU times
    are 0 where no CPU tier is used."""

    disk_lat: float
    disk_per_block: float
    disk_write_per_block: float
    arch_lat: float
    arch_per_block: float
    arch_compress_per_block: float
    arch_upload_per_block: float
    cpu_lat: float = 0.0
    cpu_per_block: float = 0.0
    cpu_write_per_block: float = 0.0
    gpu_lat: float = 0.0
    gpu_per_block: float = 0.0


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


@PROFILES.register("analytic")
class AnalyticProfile(HardwareProfile):
    """``prefill(n, c) = const_s + per_token_s·n + attn_s·n·(n + c)`` (the scenario's
    ``hardware.prefill_const_s``, ``prefill_per_token_s``, ``prefill_attn_s``); transfer
    times from the tiers' bandwidths: CPU and disk load ``latency_s + bytes / read_gbps``,
    CPU and disk write ``bytes / write_gbps``, archive fetch ``request_latency_s + stored /
    download_gbps + raw / decompress_gbps``, archive pass ``raw / compress_gbps + stored /
    upload_gbps`` per block."""

    kind = "analytic"

    def __init__(self, const_s: float, per_token_s: float, attn_s: float,
                 zero_service_time: bool = False) -> None:
        super().__init__(zero_service_time)
        self.const_s, self.per_token_s, self.attn_s = const_s, per_token_s, attn_s

    def _prefill(self, n: np.ndarray, cached: np.ndarray) -> np.ndarray:
        return self.const_s + self.per_token_s * n + self.attn_s * n * (n + cached)

    def prefill_s(self, new: int, cached: int) -> float:
        # The scalar path of the request loop: plain floats, same operations as _prefill.
        if self.zero:
            return 0.0
        n = max(new, 1)
        return self.const_s + self.per_token_s * n + self.attn_s * n * (n + cached)

    def _step_time(self) -> StepTime:
        # a decode is a prefill of one token after its context: per_token_s + attn_s·(1 + c)
        return StepTime(self.const_s, self.per_token_s, self.per_token_s, self.attn_s, self.attn_s)

    def transfers(self, scenario: Scenario, block_bytes: int, archive_bytes: int) -> Transfers:
        c, d, a = scenario.tiers.cpu, scenario.tiers.disk, scenario.tiers.archive
        return Transfers(
            disk_lat=d.latency_s,
            disk_per_block=block_bytes / (d.read_gbps * GB),
            disk_write_per_block=block_bytes / (d.write_gbps * GB),
            arch_lat=a.request_latency_s,
            arch_per_block=archive_bytes / (a.download_gbps * GB) + block_bytes / (a.decompress_gbps * GB),
            arch_compress_per_block=block_bytes / (a.compress_gbps * GB),
            arch_upload_per_block=archive_bytes / (a.upload_gbps * GB),
            cpu_lat=c.latency_s,
            cpu_per_block=block_bytes / (c.read_gbps * GB),
            cpu_write_per_block=block_bytes / (c.write_gbps * GB),
        )


def bilinear(new: np.ndarray, cached: np.ndarray, seconds: np.ndarray, n: np.ndarray,
             c: np.ndarray) -> np.ndarray:
    """The table's prefill at ``(n, c)``: bilinear in the grid cell holding it, the outermost
    cell's planes continued beyond the grid, floored at 0 (``seconds[i, j]`` is the time at
    ``new[i]``, ``cached[j]``)."""
    i, u = _axis_cell(new, n)
    j, v = _axis_cell(cached, c)
    s = seconds
    out = ((1 - u) * (1 - v) * s[i, j] + u * (1 - v) * s[i + 1, j]
           + (1 - u) * v * s[i, j + 1] + u * v * s[i + 1, j + 1])
    return np.maximum(out, 0.0)


def _axis_cell(grid: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell index ``i`` (``grid[i] <= x < grid[i+1]``, the outermost cell beyond the grid) and
    the fraction ``t = (x − grid[i]) / (grid[i+1] − grid[i])`` (outside [0, 1] beyond the grid)."""
    i = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, len(grid) - 2)
    lo, hi = grid[i], grid[i + 1]
    return i, (x - lo) / (hi - lo)


@PROFILES.register("table")
class TableProfile(HardwareProfile):
    """A measured profile (``kind: table``): prefill seconds on a grid of new × cached tokens,
    bilinear between grid points and linearly extrapolated from the outermost cell beyond the
    grid (floored at 0); load and store times per block and per request as measured for the
    profile's ``block_size`` (the ``cpu`` entries are optional: needed only with a CPU tier;
    ``load.gpu``, written by ``simkv calibrate``, is the engine's GPU-cache copy time, charged to
    GPU hits like any tier's load; without it GPU hits cost nothing); the optional ``request``
    section is the :class:`RequestOverhead`; optionally the archive's measured
    ``archive.compression_ratio``, which replaces the scenario's."""

    kind = "table"

    def __init__(self, data: dict[str, Any], source: str, zero_service_time: bool = False) -> None:
        super().__init__(zero_service_time)
        self.source = source
        self.data = data
        p = data["prefill"]
        self.new = np.asarray(p["new_tokens"], np.float64)
        self.cached = np.asarray(p["cached_tokens"], np.float64)
        self.seconds = np.asarray(p["seconds"], np.float64)
        self.block_size = int(data["block_size"])
        load, store = data["load"], data["store"]
        self.has_cpu = "cpu" in load
        cpu_load = load.get("cpu", {"per_block_s": 0.0, "per_request_s": 0.0})
        self._t = Transfers(
            disk_lat=load["disk"]["per_request_s"], disk_per_block=load["disk"]["per_block_s"],
            disk_write_per_block=store["disk"]["per_block_s"],
            arch_lat=load["archive"]["per_request_s"], arch_per_block=load["archive"]["per_block_s"],
            arch_compress_per_block=store["archive"]["per_block_s"], arch_upload_per_block=0.0,
            cpu_lat=cpu_load["per_request_s"], cpu_per_block=cpu_load["per_block_s"],
            cpu_write_per_block=store.get("cpu", {"per_block_s": 0.0})["per_block_s"],
            **({"gpu_lat": load["gpu"]["per_request_s"], "gpu_per_block": load["gpu"]["per_block_s"]}
               if "gpu" in load else {}))
        if "request" in data and not zero_service_time:
            self.overhead = RequestOverhead(**{k: float(v) for k, v in data["request"].items()})
        self.ratio: float | None = (data.get("archive") or {}).get("compression_ratio")
        step = data.get("step")
        self.step = None if step is None else StepTime(*(float(step.get(k, 0.0)) for k in STEP_KEYS))

    @property
    def step_latency_s(self) -> float:
        if self.zero:
            return 0.0
        return float((self.data.get("step") or {}).get("latency_s", 0.0))

    def _step_time(self) -> StepTime:
        if self.step is None:
            raise ScenarioError(f"{self.source}: step: missing, but hardware.scheduler: vllm needs "
                                "the profile's step time (measure it with simkv calibrate --steps)")
        return self.step

    def compression_ratio(self, scenario: Scenario) -> float:
        return scenario.tiers.archive.compression_ratio if self.ratio is None else float(self.ratio)

    def _prefill(self, n: np.ndarray, cached: np.ndarray) -> np.ndarray:
        return bilinear(self.new, self.cached, self.seconds, n, cached)

    def transfers(self, scenario: Scenario, block_bytes: int, archive_bytes: int) -> Transfers:
        if scenario.tiers.cpu.enabled and not self.has_cpu:
            raise ScenarioError(f"{self.source}: load.cpu: missing, but tiers.cpu.enabled is true "
                                "(add load.cpu and store.cpu, or disable the CPU tier)")
        return self._t


# -- the profile file ---------------------------------------------------------------------

_TOP_KEYS = {"version", "kind", "model", "block_size", "measured_on", "fit_error", "notes",
             "calibration", "prefill", "load", "store", "archive", "request", "step"}
#: Optional keys of the ``step`` section: what ``simkv calibrate --steps`` measured.
_STEP_EXTRA = ("latency_s", "fit_error", "points", "notes", "measured_with")


def _num(source: str, key: str, value: Any, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScenarioError(f"{source}: {key}: expected a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ScenarioError(f"{source}: {key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _mapping(source: str, key: str, value: Any, required: tuple[str, ...],
             optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(f"{source}: {key}: expected a mapping, got {value!r}")
    for k in value:
        if k not in required and k not in optional:
            raise ScenarioError(f"{source}: {key}.{k}: unknown key (known: "
                                f"{', '.join(required + optional)})")
    for k in required:
        if k not in value:
            raise ScenarioError(f"{source}: {key}.{k}: missing")
    return value


def _grid(source: str, key: str, value: Any) -> list[float]:
    if not isinstance(value, list) or len(value) < 2:
        raise ScenarioError(f"{source}: {key}: expected a list of at least 2 token counts, got {value!r}")
    out = [_num(source, f"{key}[{i}]", v) for i, v in enumerate(value)]
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            raise ScenarioError(f"{source}: {key}: must be strictly increasing, but [{i - 1}]="
                                f"{value[i - 1]!r} and [{i}]={value[i]!r}")
    return out


def validate_table(data: Any, source: str) -> dict[str, Any]:
    """Check a ``kind: table`` profile (version, keys, shapes, monotone grids, times >= 0);
    every error names ``source`` and the key."""
    data = _mapping(source, "profile", data, ("version", "kind", "block_size", "prefill", "load", "store"),
                    tuple(sorted(_TOP_KEYS - {"version", "kind", "block_size", "prefill", "load", "store"})))
    if data["version"] != PROFILE_VERSION:
        raise ScenarioError(f"{source}: version: {data['version']!r} is not supported "
                            f"(this simkv reads version {PROFILE_VERSION})")
    bs = data["block_size"]
    if isinstance(bs, bool) or not isinstance(bs, int) or bs <= 0:
        raise ScenarioError(f"{source}: block_size: expected a positive integer, got {bs!r}")
    p = _mapping(source, "prefill", data["prefill"], ("new_tokens", "cached_tokens", "seconds"))
    new = _grid(source, "prefill.new_tokens", p["new_tokens"])
    cached = _grid(source, "prefill.cached_tokens", p["cached_tokens"])
    rows = p["seconds"]
    if not isinstance(rows, list) or len(rows) != len(new):
        raise ScenarioError(f"{source}: prefill.seconds: expected {len(new)} rows (one per "
                            f"new_tokens), got {len(rows) if isinstance(rows, list) else repr(rows)}")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(cached):
            raise ScenarioError(f"{source}: prefill.seconds[{i}]: expected {len(cached)} values "
                                f"(one per cached_tokens), got {row!r}")
        for j, v in enumerate(row):
            _num(source, f"prefill.seconds[{i}][{j}]", v)
    if "calibration" in data and not isinstance(data["calibration"], dict):
        raise ScenarioError(f"{source}: calibration: expected a mapping (what simkv calibrate "
                            f"measured), got {data['calibration']!r}")
    load = _mapping(source, "load", data["load"], ("disk", "archive"), ("gpu", "cpu"))
    store = _mapping(source, "store", data["store"], ("disk", "archive"), ("cpu",))
    if ("cpu" in load) != ("cpu" in store):
        given, other = ("load", "store") if "cpu" in load else ("store", "load")
        raise ScenarioError(f"{source}: {other}.cpu: missing, but {given}.cpu is given (a CPU tier "
                            "needs both)")
    for tier in [t for t in ("gpu", "cpu", "disk", "archive") if t in load]:
        m = _mapping(source, f"load.{tier}", load[tier], ("per_block_s", "per_request_s"))
        for k in ("per_block_s", "per_request_s"):
            _num(source, f"load.{tier}.{k}", m[k])
    for tier in [t for t in ("cpu", "disk", "archive") if t in store]:
        m = _mapping(source, f"store.{tier}", store[tier], ("per_block_s",))
        _num(source, f"store.{tier}.per_block_s", m["per_block_s"])
    if "archive" in data:
        m = _mapping(source, "archive", data["archive"], (), ("compression_ratio",))
        if "compression_ratio" in m:
            _num(source, "archive.compression_ratio", m["compression_ratio"], allow_zero=False)
    if "request" in data:
        m = _mapping(source, "request", data["request"], (), REQUEST_KEYS)
        for k, v in m.items():
            _num(source, f"request.{k}", v)
    if "step" in data:
        m = _mapping(source, "step", data["step"], STEP_KEYS[:-1], (STEP_KEYS[-1], *_STEP_EXTRA))
        for k in (*STEP_KEYS, "latency_s"):
            if k in m:
                _num(source, f"step.{k}", m[k])
    return data


@lru_cache(maxsize=32)
def _read_profile(path: str, mtime_ns: int) -> dict[str, Any]:
    data = read_yaml_file(path, "hardware profile")
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a hardware profile is a mapping of keys, got {type(data).__name__}")
    kind = data.get("kind")
    if kind is None:
        raise ScenarioError(f"{path}: kind: missing (one of: {', '.join(PROFILES.names())})")
    if kind != "table":
        PROFILES.get(str(kind), key=f"{path}: kind")
        raise ScenarioError(f"{path}: kind: {kind!r} profiles come from the scenario's hardware "
                            "keys, not a file (a profile file is kind: table)")
    return validate_table(data, path)


def load_profile(path: str | Path, zero_service_time: bool = False) -> HardwareProfile:
    """Read and validate the profile file at ``path`` (cached while the file is unchanged)."""
    path = Path(path)
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise ScenarioError(f"hardware.profile: {path}: no such profile file") from None
    except OSError as exc:
        raise ScenarioError(f"hardware.profile: {path}: cannot read: {exc}") from None
    data = _read_profile(str(path), mtime)
    return PROFILES.get(data["kind"])(data, str(path), zero_service_time)  # type: ignore[call-arg]


def table_from_profile(profile: HardwareProfile, transfers: Transfers, new_tokens: list[int],
                       cached_tokens: list[int], block_size: int, model: str,
                       **provenance: Any) -> dict[str, Any]:
    """A ``kind: table`` profile document with ``profile``'s prefill evaluated on the grid and
    the given transfer times (``store.archive`` = compress + upload): how an analytic fit is
    turned into a table, and the file format :func:`load_profile` reads."""
    seconds = profile.prefill_array(np.repeat(new_tokens, len(cached_tokens)),
                                    np.tile(cached_tokens, len(new_tokens)))
    return {
        "version": PROFILE_VERSION, "kind": "table", "model": model, "block_size": block_size,
        **provenance,
        "prefill": {"new_tokens": list(new_tokens), "cached_tokens": list(cached_tokens),
                    "seconds": seconds.reshape(len(new_tokens), len(cached_tokens)).tolist()},
        "load": {"cpu": {"per_block_s": transfers.cpu_per_block, "per_request_s": transfers.cpu_lat},
                 "disk": {"per_block_s": transfers.disk_per_block, "per_request_s": transfers.disk_lat},
                 "archive": {"per_block_s": transfers.arch_per_block, "per_request_s": transfers.arch_lat}},
        "store": {"cpu": {"per_block_s": transfers.cpu_write_per_block},
                  "disk": {"per_block_s": transfers.disk_write_per_block},
                  "archive": {"per_block_s": transfers.arch_compress_per_block
                              + transfers.arch_upload_per_block}},
    }
