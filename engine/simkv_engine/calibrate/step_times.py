"""Step times of vLLM's continuous batching (``simkv calibrate --steps``): prefill-only,
decode-only and mixed steps (a prefill beside decoding streams) measured on a vLLM server, the
``step`` section fitted to them by non-negative least squares, the latency outside the engine
core fitted to the streams it serves, and both added to a calibration."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simkv.core.profiles import STEP_KEYS, StepTime
from simkv_engine.calibrate.document import Calibration
from simkv_engine.calibrate.fits import nonneg_lstsq
from simkv_engine.calibrate.plan import CalibrationError, FreshPrompts
from simkv_engine.calibrate.streams import DecodingStreams, decode_gaps, metric_sum
from simkv_engine.calibrate.vllm_probe import VLLMProbe

#: vLLM's ``/metrics`` histograms the step measurement reads: the engine's prefill time of each
#: request (scheduled → first token), its queue time, and one ``iteration_tokens`` sample per
#: engine step (``_count``: steps).
PREFILL_SUM = "vllm:request_prefill_time_seconds_sum"
QUEUE_SUM = "vllm:request_queue_time_seconds_sum"
STEPS_COUNT = "vllm:iteration_tokens_total_count"


@dataclass(frozen=True)
class StepPlan:
    """The step grid: prefill-only steps of ``prefill_tokens`` new tokens after each of
    ``prefill_cached`` cached ones (one request alone, its prefix served first, one token
    generated); decode-only steps of every ``decode_seqs`` × ``decode_lengths`` (that many
    concurrent streams of prompts that long, timed over ``decode_tokens`` tokens once all of them
    decode); mixed steps: each prefill point again beside each of ``mixed_seqs`` decoding
    streams (prompts of the middle ``decode_lengths`` value), its new tokens capped at
    ``max(prefill_tokens) − D`` so the step still holds it whole; ``repeats`` timed runs per
    point (medians) after ``warmup`` discarded ones."""

    prefill_tokens: list[int]
    decode_seqs: list[int]
    decode_lengths: list[int]
    decode_tokens: int = 24
    repeats: int = 3
    warmup: int = 1
    prefill_cached: list[int] = field(default_factory=lambda: [0])
    mixed_seqs: list[int] = field(default_factory=list)

    @property
    def mixed_length(self) -> int:
        """The prompt length of the mixed steps' decoding streams."""
        return sorted(self.decode_lengths)[len(self.decode_lengths) // 2]

    def mixed_prefill(self, n: int, d: int) -> int:
        """The new tokens of a mixed step's prefill of ``n`` beside ``d`` decoding streams."""
        return max(1, min(n, max(self.prefill_tokens) - d))

    def check(self, context: int | None, block: int | None = None) -> None:
        """Refuse a grid the fit cannot use or the model cannot hold; ``block``: vLLM's block
        size (cached prefixes are whole blocks)."""
        for key, values in (("--step-prefill", self.prefill_tokens), ("--step-decode", self.decode_seqs),
                            ("--step-lengths", self.decode_lengths)):
            if not values or any(v < 1 for v in values):
                raise CalibrationError(f"{key}: expected token or sequence counts >= 1, got {values}")
        if len(set(self.prefill_tokens)) < 2 or len(set(self.decode_seqs)) < 2:
            raise CalibrationError("--step-prefill and --step-decode: at least 2 distinct values each "
                                   "(the fit separates the constant from the slopes)")
        if any(d < 1 or d >= max(self.prefill_tokens) for d in self.mixed_seqs):
            raise CalibrationError(f"--step-mixed: expected decoding sequences >= 1 and below the largest "
                                   f"--step-prefill ({max(self.prefill_tokens)}), got {self.mixed_seqs}")
        if not self.prefill_cached or any(c < 0 or (block and c % block) for c in self.prefill_cached):
            raise CalibrationError(f"--step-cached: expected multiples of vLLM's block size {block} "
                                   f"(0: none), got {self.prefill_cached}")
        points = (len(set(self.prefill_tokens)) * len(set(self.prefill_cached))
                  + len(set(self.decode_seqs)) * len(set(self.decode_lengths)))
        # without cached prefixes the prefills' context term is 0 and not fitted
        needed = len(STEP_KEYS) - (max(self.prefill_cached) == 0)
        if points < needed:
            raise CalibrationError(f"the step grid has {points} points, the fit needs at least "
                                   f"{needed} (lengthen --step-prefill, --step-decode or "
                                   "--step-lengths)")
        if self.decode_tokens < 4 or self.repeats < 1 or self.warmup < 0:
            raise CalibrationError(f"--step-tokens must be >= 4, --repeats >= 1 and --warmup >= 0, got "
                                   f"{self.decode_tokens}, {self.repeats}, {self.warmup}")
        longest = max(max(self.prefill_tokens) + max(self.prefill_cached),
                      max(self.decode_lengths) + self.decode_tokens + 1)
        if context is not None and longest > context:
            raise CalibrationError(f"the step grid needs {longest} tokens per sequence but the model's "
                                   f"context is {context} (shrink --step-prefill, --step-cached or "
                                   "--step-lengths)")


@dataclass(frozen=True)
class StepPoint:
    """One measured step: ``P`` prefill tokens, ``D`` decoding sequences, ``K`` their KV tokens
    (cached + 1 each), ``A`` = Σ n·(n + c) over the prefill chunks, ``C`` = Σ n·c over them;
    ``seconds`` measured."""

    prefill_tokens: int
    decode_seqs: int
    context_tokens: int
    attn_tokens: int
    seconds: float
    #: ``C``: the prefill chunks' attention over their cached context (Σ n·c).
    prefill_context_tokens: int = 0


def step_features(points: Sequence[StepPoint]) -> np.ndarray:
    """The design matrix of the step time's coefficients (``STEP_KEYS``,
    :class:`~simkv.core.profiles.StepTime`): one row ``[1, P, D, K, A, C]`` per point."""
    return np.array([[1.0, p.prefill_tokens, p.decode_seqs, p.context_tokens, p.attn_tokens,
                      p.prefill_context_tokens] for p in points], np.float64)


def fit_steps(points: Sequence[StepPoint]) -> dict[str, Any]:
    """The profile's ``step`` section: the ``STEP_KEYS`` coefficients fitted to the points by
    non-negative least squares on relative residuals (each row divided by its measured time),
    the fit's relative errors, and every point with its fitted time."""
    needed = len(STEP_KEYS) - all(p.prefill_context_tokens == 0 for p in points)
    if len(points) < needed:
        raise CalibrationError(f"the step fit needs at least {needed} points, got {len(points)}")
    a, y = step_features(points), np.array([p.seconds for p in points], np.float64)
    w = 1.0 / np.maximum(y, 1e-12)
    coef = nonneg_lstsq(a * w[:, None], y * w)
    fitted = a @ coef
    rel = np.abs(fitted - y) * w
    return {**{k: float(v) for k, v in zip(STEP_KEYS, coef, strict=True)},
            "fit_error": {"median_rel": float(np.median(rel)), "max_rel": float(rel.max()),
                          "points": len(points)},
            "points": [{"prefill_tokens": p.prefill_tokens, "decode_seqs": p.decode_seqs,
                        "context_tokens": p.context_tokens, "attn_tokens": p.attn_tokens,
                        "prefill_context_tokens": p.prefill_context_tokens,
                        "seconds": float(p.seconds), "fitted_s": float(f)}
                       for p, f in zip(points, fitted, strict=True)]}


def step_runs(plan: StepPlan) -> int:
    """Requests the step measurement makes (the progress bar's units)."""
    runs = plan.warmup + plan.repeats
    return runs * (len(plan.prefill_tokens) * len(plan.prefill_cached) * (1 + len(plan.mixed_seqs))
                   + len(plan.decode_lengths) * len(plan.decode_seqs))


@dataclass
class Latency:
    """The latency outside the engine core that prefill runs showed: per run, the streams
    decoding beside it and the client's TTFT less the engine's queue and prefill times (the
    request's wait for the step in progress when it reached the engine core included: vLLM
    queues a request between steps)."""

    streams: list[int] = field(default_factory=list)
    http_s: list[float] = field(default_factory=list)
    context_tokens: list[int] = field(default_factory=list)


def measure_steps(probe: VLLMProbe, plan: StepPlan, seed: int = 0,
                  advance: Callable[[int], None] = lambda n: None) -> tuple[list[StepPoint], Latency, bool]:
    """Measure ``plan`` on vLLM: the points, the latency samples (only where vLLM's
    ``/metrics`` has its prefill times) and whether it has them."""
    plan.check(probe.context, probe.vllm_block)
    fresh = FreshPrompts(probe.vocab_size, seed, 0x57E9)
    runs = plan.warmup + plan.repeats
    points: list[StepPoint] = []
    latency = Latency()
    server = True

    def prefill_points(d: int) -> None:
        nonlocal server
        for c, n0 in itertools.product(plan.prefill_cached, plan.prefill_tokens):
            n = plan.mixed_prefill(n0, d) if d else n0
            if d:           # once, before the streams start, not while they run
                probe.clear(["gpu"])
            streams = DecodingStreams(probe, [fresh(plan.mixed_length) for _ in range(d)])
            try:
                samples, kv = [], []
                for rep in range(runs):
                    if not d:
                        probe.clear(["gpu"])
                    prefix = fresh(c)
                    if c:
                        probe.serve(prefix)
                    before = probe.client.get("/metrics").text
                    sent = time.perf_counter()
                    r = probe.serve(prefix + fresh(n))
                    after = probe.client.get("/metrics").text
                    advance(1)
                    if r.hit_tokens["gpu"] != c:
                        raise CalibrationError(f"step prefill n={n} c={c}: vLLM served {r.hit_tokens['gpu']} "
                                               f"cached tokens, not {c} (is another client using it, or "
                                               "did decoding streams evict the prefix from a small KV "
                                               "pool?)")
                    delta = {k: _delta(before, after, k) for k in (PREFILL_SUM, QUEUE_SUM, STEPS_COUNT)}
                    steps = delta[STEPS_COUNT]
                    if not d and steps is not None and round(steps) != 1:
                        raise CalibrationError(
                            f"--step-prefill: {n} new tokens took {round(steps)} engine steps (over "
                            "vLLM's max_num_batched_tokens, or another client): keep the prefill grid "
                            "within one step")
                    prefill_s = delta[PREFILL_SUM]
                    server = server and prefill_s is not None
                    if rep < plan.warmup:
                        continue
                    kv.append(streams.context(sent))
                    if prefill_s is not None:
                        samples.append(prefill_s)
                        latency.streams.append(d)
                        latency.context_tokens.append(kv[-1])
                        latency.http_s.append(r.client_ttft_s - prefill_s - (delta[QUEUE_SUM] or 0.0))
                    elif d:
                        raise CalibrationError("--step-mixed: vLLM's /metrics has no request_prefill_"
                                               "time_seconds (a mixed step is timed by the engine)")
                    else:
                        samples.append(r.client_ttft_s)
                streams.stop(expect_running=True)
            finally:
                streams.stop()
            points.append(StepPoint(n, d, round(float(np.mean(kv))), n * (n + c), float(np.median(samples)),
                                    n * c))

    prefill_points(0)
    for length in plan.decode_lengths:
        for d in plan.decode_seqs:
            gaps: list[float] = []
            kv_tokens: list[float] = []
            for rep in range(runs):
                probe.clear(["gpu"])
                g, k = decode_gaps(probe, [fresh(length) for _ in range(d)], plan.decode_tokens)
                advance(1)
                if rep >= plan.warmup:
                    gaps += g
                    kv_tokens += k
            if not gaps:
                raise CalibrationError(f"step decode D={d} L={length}: no step with all {d} sequences "
                                       "decoding (raise --step-tokens)")
            points.append(StepPoint(0, d, round(float(np.mean(kv_tokens))), 0, float(np.median(gaps))))
    for d in plan.mixed_seqs:
        prefill_points(d)
    probe.clear(["gpu"])
    return points, latency, server


def _delta(before: str, after: str, name: str) -> float | None:
    a, b = metric_sum(after, name), metric_sum(before, name)
    return None if a is None or b is None else a - b


def fit_latency(latency: Latency, step: dict[str, Any]) -> dict[str, float]:
    """``latency_s`` and ``latency_per_stream_s``: the latency outside the engine core as a
    line in the streams decoding beside a request, fitted (non-negative least squares) to the
    median of each stream count's samples, each less half the decode-only step of those
    streams (the expected wait for the step in progress, which the simulation queues)."""
    d = np.array(latency.streams, np.float64)
    k = np.array(latency.context_tokens, np.float64)
    step_s = StepTime(*(float(step.get(key, 0.0)) for key in STEP_KEYS))
    wait = np.where(d > 0, 0.5 * step_s(0, d, k, 0), 0.0)
    outside = np.array(latency.http_s, np.float64) - wait
    counts = np.unique(d)
    med = np.array([np.median(outside[d == c]) for c in counts])
    if len(counts) < 2:
        return {"latency_s": max(float(np.median(outside)), 0.0)}
    coef = nonneg_lstsq(np.stack([np.ones_like(counts), counts], axis=1), med)
    return {"latency_s": float(coef[0]), "latency_per_stream_s": float(coef[1])}


def add_steps(cal: Calibration, probe: VLLMProbe, plan: StepPlan, seed: int = 0,
              advance: Callable[[int], None] = lambda n: None) -> None:
    """Measure ``plan`` (:func:`measure_steps`) and add the fitted ``step`` section, the plan and
    what the fit does not hold (``calibration.step``) and a note to the calibration."""
    points, latency, server = measure_steps(probe, plan, seed, advance)
    step = fit_steps(points)
    outside = fit_latency(latency, step) if latency.http_s else {}
    # outside the engine core: in a request's TTFT and e2e, not in a step
    cal.doc["step"] = {**{k: v for k, v in step.items() if k in STEP_KEYS}, **outside,
                       **{k: v for k, v in step.items() if k not in STEP_KEYS}}
    idle = [h for h, d in zip(latency.http_s, latency.streams, strict=True) if not d]
    info = {"http_s": float(np.median(idle)) if idle else None, "server_prefill_times": server}
    cal.doc["calibration"]["step"] = {
        "prefill_tokens": plan.prefill_tokens, "prefill_cached": plan.prefill_cached,
        "decode_seqs": plan.decode_seqs, "decode_lengths": plan.decode_lengths,
        "decode_tokens": plan.decode_tokens,
        **({"mixed_seqs": plan.mixed_seqs, "mixed_length": plan.mixed_length} if plan.mixed_seqs else {}),
        "repeats": plan.repeats, "warmup": plan.warmup, "statistic": "median", **info}
    how = ("vLLM's own prefill time (/metrics: request_prefill_time_seconds, scheduled -> first token), "
           f"the client's TTFT being {info['http_s'] * 1e3:.2f} ms longer besides the queue (calibration."
           "step.http_s: HTTP, not in the step)" if info["server_prefill_times"] else
           "the client's TTFT (vLLM's /metrics has no request_prefill_time_seconds), HTTP included")
    cal.notes.append(
        "step: step_s = const_s + per_prefill_token_s*P + per_decode_seq_s*D + per_context_token_s*K + "
        "prefill_attn_s*A + prefill_context_attn_s*C (P prefill tokens, D decoding sequences, K "
        "their KV tokens, A = sum of n*(n+c) and C = sum of n*c over the prefill chunks), fitted by "
        "non-negative least squares on relative error to "
        f"prefill-only steps (one fresh prompt alone after its cached prefix, one token generated, one "
        f"engine step: {how}) and "
        "decode-only steps (D concurrent streams of fresh prompts, ignore_eos; the median gap between "
        "a stream's consecutive tokens while all D decode, K counted from the tokens received)"
        + ("; mixed steps: each prefill point again beside D decoding streams (vLLM's prefill time of "
           "the request, the step that computed it)" if plan.mixed_seqs else "")
        + (f"; step.latency_s: the {outside['latency_s'] * 1e3:.2f} ms outside the engine core"
           if outside else "")
        + (f" + {outside['latency_per_stream_s'] * 1e3:.3f} ms per stream decoding beside the request "
           "(latency_per_stream_s: the client's TTFT less vLLM's queue and prefill times and less half "
           "the decode step in progress, a line in the streams)" if "latency_per_stream_s" in outside
           else ""))
    cal.doc["notes"] = "; ".join(cal.notes)
