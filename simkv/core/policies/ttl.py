"""TTL heuristics: (request, block, metadata, access history) → TTL seconds [, priority].

A heuristic is one function ``fn(ctx: TTLContext, params) -> float | tuple[float, float]``
registered by name with its typed parameter dataclass. It returns the TTL in seconds and,
optionally, a priority score (higher = keep longer) used by the ``priority`` eviction policy.
A heuristic written with NumPy operations (as the built-in ones are) and marked
``vectorized = True`` is called once per archive pass with array fields in ``ctx``; any other
is called once per block.
The simulator's tiers and archive worker and the real engine's archive worker call the
same functions, so a policy chosen in simulation is the policy deployed.

Add one::

    from dataclasses import dataclass
    from simkv.core.policies.ttl import TTL_HEURISTICS, TTLContext

    @dataclass(frozen=True)
    class MyParams:
        ttl: float = 600.0

    @TTL_HEURISTICS.register("mine")      # or name it in a scenario as "mymodule:my_ttl"
    def my_ttl(ctx: TTLContext, p: MyParams) -> float:
        return p.ttl * (2.0 if ctx.prompt_class == "system" else 1.0)
    my_ttl.params = MyParams
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simkv.core.config import from_dict
from simkv.core.errors import ScenarioError, SimkvError
from simkv.core.registry import Registry, check_signature, describe

TTLResult = float | tuple[float, float]


@dataclass(slots=True)
class ClassReuse:
    """Online per-class reuse statistics, learned from the trace prefix seen so far.

    ``p(class) = (reused + 1) / (seen + 2)``: the Laplace-smoothed fraction of blocks first
    referenced by a request of that class that were referenced again later.
    """

    seen: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)

    def first_reference(self, prompt_class: str) -> None:
        self.seen[prompt_class] = self.seen.get(prompt_class, 0) + 1

    def second_reference(self, first_class: str) -> None:
        self.reused[first_class] = self.reused.get(first_class, 0) + 1

    def probability(self, prompt_class: str | np.ndarray) -> float | np.ndarray:
        """For one class, or element-wise for an array of classes."""
        if isinstance(prompt_class, str):
            return (self.reused.get(prompt_class, 0) + 1) / (self.seen.get(prompt_class, 0) + 2)
        table = {c: self.probability(str(c)) for c in set(prompt_class.tolist())}
        return by_key(prompt_class, table, 0.0)


def by_key(keys: str | np.ndarray, table: dict[str, float], default: float) -> float | np.ndarray:
    """``table.get(key, default)`` for one key, or element-wise for an array of keys."""
    if isinstance(keys, str):
        return table.get(keys, default)
    return np.array([table.get(k, default) for k in keys.tolist()], dtype=np.float64)


@dataclass(slots=True)
class TTLContext:
    """What a heuristic may look at when a block is stored, archived or refreshed.

    ``value_s`` is the GPU time one reuse of this block saves in the request at hand (the
    hardware profile's :meth:`~simkv.core.profiles.HardwareProfile.block_value_s`);
    ``gpu_cost_per_s`` and ``storage_cost_per_byte_s`` price it against keeping
    ``stored_bytes`` in the tier the TTL is for. For a vectorized heuristic the per-block
    fields (``block`` to ``access_count``, ``value_s``) are arrays.
    """

    now: float
    block: Any
    position: Any
    prompt_class: Any
    input_tokens: Any
    access_count: Any
    block_tokens: int
    block_bytes: int
    stored_bytes: int
    value_s: Any
    gpu_cost_per_s: float
    storage_cost_per_byte_s: float
    reuse: ClassReuse


@dataclass(frozen=True, slots=True)
class TTLHeuristic:
    """A heuristic bound to its validated parameters."""

    name: str
    fn: Callable[[TTLContext, Any], TTLResult]
    params: Any

    def _run(self, ctx: TTLContext) -> TTLResult:
        """Call the function; anything it raises is a :class:`ScenarioError` naming it."""
        try:
            return self.fn(ctx, self.params)
        except SimkvError:
            raise
        except Exception as exc:
            raise ScenarioError(f"ttl.heuristic: {self.name!r} raised {describe(exc)}") from exc

    def _wrong(self, out: Any, why: str) -> ScenarioError:
        return ScenarioError(f"ttl.heuristic: {self.name!r} returned {out!r:.80}: {why}")

    def __call__(self, ctx: TTLContext) -> tuple[float, float]:
        out = self._run(ctx)
        try:
            ttl, prio = _split(out)
            ttl, prio = float(ttl), float(prio)
        except (TypeError, ValueError):
            raise self._wrong(out, "expected a TTL in seconds or (ttl, priority)") from None
        if not ttl >= 0:  # also catches NaN
            raise self._wrong(out, "a negative or NaN TTL (a TTL must be >= 0)")
        return ttl, prio

    def batch(self, ctx: TTLContext) -> tuple[np.ndarray, np.ndarray]:
        """TTLs and priorities for the blocks of ``ctx`` (array fields): one call if the
        heuristic is vectorized, else one call per block."""
        n = len(ctx.block)
        if getattr(self.fn, "vectorized", False):
            out = self._run(ctx)
            try:
                ttl, prio = _split(out)
                ttl = np.broadcast_to(np.asarray(ttl, dtype=np.float64), (n,))
                prio = np.broadcast_to(np.asarray(prio, dtype=np.float64), (n,))
            except (TypeError, ValueError):
                raise self._wrong(out, f"expected {n} TTLs in seconds (or a scalar), optionally "
                                       "with priorities as (ttl, priority)") from None
            if n and not (ttl >= 0).all():
                raise self._wrong(ttl[~(ttl >= 0)][0], "a negative or NaN TTL (a TTL must be >= 0)")
            return ttl, prio
        ttls = np.empty(n)
        prios = np.empty(n)
        fields = ("block", "position", "prompt_class", "input_tokens", "access_count", "value_s")
        columns = [getattr(ctx, f).tolist() for f in fields]
        for j, values in enumerate(zip(*columns, strict=True)):
            one = TTLContext(ctx.now, *values[:5], ctx.block_tokens, ctx.block_bytes, ctx.stored_bytes,
                             values[5], ctx.gpu_cost_per_s, ctx.storage_cost_per_byte_s, ctx.reuse)
            ttls[j], prios[j] = self(one)
        return ttls, prios


def _split(out: Any) -> tuple[Any, Any]:
    """A heuristic's result as (ttl, priority)."""
    if isinstance(out, tuple):
        if len(out) != 2:
            raise TypeError("a tuple result is (ttl, priority)")
        return out
    return out, 0.0


TTL_HEURISTICS: Registry[Callable[..., TTLResult]] = Registry("TTL heuristic")


def make_heuristic(name: str, params: dict[str, Any]) -> TTLHeuristic:
    """Resolve ``name`` and validate ``params`` against the heuristic's parameter dataclass."""
    fn = TTL_HEURISTICS.get(name, key="ttl.heuristic")
    if TTL_HEURISTICS.is_plugin(name):
        check_signature(fn, name, "ttl.heuristic", "(ctx, params)", 2)
    params_cls = getattr(fn, "params", None)
    bound = from_dict(params_cls, params, prefix="ttl.params", infinite=True) if params_cls else dict(params)
    return TTLHeuristic(name, fn, bound)


def vectorized(fn: Callable[..., TTLResult]) -> Callable[..., TTLResult]:
    """Mark a heuristic whose operations work element-wise on array fields of the context."""
    fn.vectorized = True  # type: ignore[attr-defined]
    return fn


def clamp(x: Any, lo: float, hi: float) -> Any:
    """``min(max(x, lo), hi)``, for a number or element-wise for an array."""
    if isinstance(x, np.ndarray):
        return np.minimum(np.maximum(x, lo), hi)
    return lo if x < lo else hi if x > hi else x


def _check_range(prefix: str, min_ttl: float, max_ttl: float) -> None:
    if not 0 <= min_ttl <= max_ttl:
        raise ScenarioError(f"{prefix}.min_ttl/max_ttl: need 0 <= min_ttl <= max_ttl, "
                            f"got {min_ttl} and {max_ttl}")


@dataclass(frozen=True)
class StaticParams:
    ttl: float = 3600.0

    def check(self, prefix: str) -> None:
        if self.ttl < 0:
            raise ScenarioError(f"{prefix}.ttl: must be >= 0, got {self.ttl}")


@TTL_HEURISTICS.register("static")
@vectorized
def static(ctx: TTLContext, p: StaticParams) -> float:
    """``ttl`` for every block."""
    return p.ttl


static.params = StaticParams  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PerClassParams:
    default_ttl: float = 3600.0
    class_ttl: dict[str, float] = field(default_factory=dict)

    def check(self, prefix: str) -> None:
        for key, ttl in (("default_ttl", self.default_ttl),
                         *((f"class_ttl.{c}", t) for c, t in self.class_ttl.items())):
            if not ttl >= 0:  # also catches NaN
                raise ScenarioError(f"{prefix}.{key}: must be >= 0, got {ttl}")


@TTL_HEURISTICS.register("per_class")
@vectorized
def per_class(ctx: TTLContext, p: PerClassParams) -> float:
    """``class_ttl[prompt_class]``, else ``default_ttl``."""
    return by_key(ctx.prompt_class, p.class_ttl, p.default_ttl)


per_class.params = PerClassParams  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SizeAwareParams:
    base_ttl: float = 3600.0
    ref_tokens: float = 4096.0
    exponent: float = 1.0
    min_ttl: float = 60.0
    max_ttl: float = 86400.0

    def check(self, prefix: str) -> None:
        _check_range(prefix, self.min_ttl, self.max_ttl)


@TTL_HEURISTICS.register("size_aware")
@vectorized
def size_aware(ctx: TTLContext, p: SizeAwareParams) -> tuple[float, float]:
    """``clamp(base_ttl * (input_tokens / ref_tokens) ** exponent, min_ttl, max_ttl)``:
    blocks of long prompts are worth more (a miss recomputes more), so they live longer.
    Priority = ``input_tokens``."""
    ttl = p.base_ttl * (np.maximum(ctx.input_tokens, 1) / p.ref_tokens) ** p.exponent
    return clamp(ttl, p.min_ttl, p.max_ttl), np.asarray(ctx.input_tokens, dtype=np.float64)


size_aware.params = SizeAwareParams  # type: ignore[attr-defined]


@dataclass(frozen=True)
class AdaptiveParams:
    base_ttl: float = 600.0
    alpha: float = 1.0
    min_ttl: float = 60.0
    max_ttl: float = 86400.0

    def check(self, prefix: str) -> None:
        _check_range(prefix, self.min_ttl, self.max_ttl)
        if self.base_ttl < 0 or self.alpha < 0:
            raise ScenarioError(f"{prefix}: base_ttl and alpha must be >= 0, "
                                f"got {self.base_ttl} and {self.alpha}")


@TTL_HEURISTICS.register("adaptive")
@vectorized
def adaptive(ctx: TTLContext, p: AdaptiveParams) -> tuple[float, float]:
    """``clamp(base_ttl * (1 + alpha * access_count), min_ttl, max_ttl)``; priority =
    ``access_count``, the number of times the block was referenced after its first reference."""
    ttl = p.base_ttl * (1.0 + p.alpha * ctx.access_count)
    return clamp(ttl, p.min_ttl, p.max_ttl), np.asarray(ctx.access_count, dtype=np.float64)


adaptive.params = AdaptiveParams  # type: ignore[attr-defined]


@dataclass(frozen=True)
class CostAwareParams:
    reuse_prob: float | None = None
    min_ttl: float = 0.0
    max_ttl: float = 7 * 86400.0

    def check(self, prefix: str) -> None:
        _check_range(prefix, self.min_ttl, self.max_ttl)
        if self.reuse_prob is not None and not 0 <= self.reuse_prob <= 1:
            raise ScenarioError(f"{prefix}.reuse_prob: a probability must be in [0, 1], "
                                f"got {self.reuse_prob}")


@TTL_HEURISTICS.register("cost_aware")
@vectorized
def cost_aware(ctx: TTLContext, p: CostAwareParams) -> tuple[float, float]:
    """Keep a block while its expected saving can still pay for its storage:
    ``ttl = clamp(P(reuse) * value_s * gpu_cost_per_s / (stored_bytes * storage_cost_per_byte_s),
    min_ttl, max_ttl)``, the break-even holding time. ``P(reuse)`` is ``reuse_prob`` if given,
    else the online per-class estimate. Priority = expected saving per stored byte."""
    prob = p.reuse_prob if p.reuse_prob is not None else ctx.reuse.probability(ctx.prompt_class)
    saving = prob * ctx.value_s * ctx.gpu_cost_per_s
    rate = ctx.stored_bytes * ctx.storage_cost_per_byte_s
    ttl = saving * 0.0 + p.max_ttl if rate <= 0 else saving / rate
    return clamp(ttl, p.min_ttl, p.max_ttl), saving / max(ctx.stored_bytes, 1)


cost_aware.params = CostAwareParams  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ReuseProbParams:
    base_ttl: float = 3600.0
    ref_prob: float = 0.5
    min_ttl: float = 60.0
    max_ttl: float = 86400.0

    def check(self, prefix: str) -> None:
        _check_range(prefix, self.min_ttl, self.max_ttl)
        if not 0 < self.ref_prob <= 1:
            raise ScenarioError(f"{prefix}.ref_prob: must be in (0, 1], got {self.ref_prob}")


@TTL_HEURISTICS.register("reuse_prob")
@vectorized
def reuse_prob(ctx: TTLContext, p: ReuseProbParams) -> tuple[float, float]:
    """``clamp(base_ttl * p(class) / ref_prob, min_ttl, max_ttl)`` with ``p(class)`` the
    reuse probability learned online per prompt class (:class:`ClassReuse`); priority = p."""
    prob = ctx.reuse.probability(ctx.prompt_class)
    return clamp(p.base_ttl * prob / p.ref_prob, p.min_ttl, p.max_ttl), prob


reuse_prob.params = ReuseProbParams  # type: ignore[attr-defined]
