"""Step times of vLLM's continuous batching (``simkv calibrate --steps``): prefill-only and
decode-only steps measured on a vLLM server, the ``step`` section fitted to them by
non-negative least squares, and added to a calibration."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simkv.core.profiles import STEP_KEYS
from simkv_engine.calibrate.document import Calibration
from simkv_engine.calibrate.fits import nonneg_lstsq
from simkv_engine.calibrate.plan import CalibrationError, FreshPrompts
from simkv_engine.calibrate.remote import sse_chunks
from simkv_engine.calibrate.vllm_probe import VLLMProbe

#: vLLM's ``/metrics`` histograms the step measurement reads: the engine's prefill time of each
#: request (scheduled → first token), its queue time, and one ``iteration_tokens`` sample per
#: engine step (``_count``: steps).
PREFILL_SUM = "vllm:request_prefill_time_seconds_sum"
QUEUE_SUM = "vllm:request_queue_time_seconds_sum"
STEPS_COUNT = "vllm:iteration_tokens_total_count"
#: Seconds the decode measurement waits for all its streams' first tokens.
START_WAIT_S = 300.0


@dataclass(frozen=True)
class StepPlan:
    """The step grid: prefill-only steps of ``prefill_tokens`` new tokens after each of
    ``prefill_cached`` cached ones (one request alone, its prefix served first, one token
    generated); decode-only steps of every ``decode_seqs`` × ``decode_lengths`` (that many
    concurrent streams of prompts that long, timed over ``decode_tokens`` tokens once all of them
    decode); ``repeats`` timed runs per point (medians) after ``warmup`` discarded ones."""

    prefill_tokens: list[int]
    decode_seqs: list[int]
    decode_lengths: list[int]
    decode_tokens: int = 24
    repeats: int = 3
    warmup: int = 1
    prefill_cached: list[int] = field(default_factory=lambda: [0])

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


def metric_sum(text: str, name: str) -> float | None:
    """The sum of ``name``'s samples over all their labels in Prometheus text (``None``: absent)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            total += float(line.rpartition(" ")[2])
            seen = True
    return total if seen else None


def step_runs(plan: StepPlan) -> int:
    """Requests the step measurement makes (the progress bar's units)."""
    runs = plan.warmup + plan.repeats
    return runs * (len(plan.prefill_tokens) * len(plan.prefill_cached)
                   + len(plan.decode_lengths) * len(plan.decode_seqs))


def measure_steps(probe: VLLMProbe, plan: StepPlan, seed: int = 0,
                  advance: Callable[[int], None] = lambda n: None) -> tuple[list[StepPoint], dict[str, Any]]:
    """Measure ``plan`` on vLLM: the points and what else was learnt (``http_s``: the median of
    the client's TTFT less the engine's queue and prefill times of the prefill-only runs)."""
    plan.check(probe.context, probe.vllm_block)
    fresh = FreshPrompts(probe.vocab_size, seed, 0x57E9)
    runs = plan.warmup + plan.repeats
    points: list[StepPoint] = []
    http: list[float] = []
    server = True
    for c, n in itertools.product(plan.prefill_cached, plan.prefill_tokens):
        samples = []
        for rep in range(runs):
            probe.clear(["gpu"])
            prefix = fresh(c)
            if c:
                probe.serve(prefix)
            before = probe.client.get("/metrics").text
            r = probe.serve(prefix + fresh(n))
            after = probe.client.get("/metrics").text
            advance(1)
            if r.hit_tokens["gpu"] != c:
                raise CalibrationError(f"step prefill n={n} c={c}: vLLM served {r.hit_tokens['gpu']} cached "
                                       f"tokens, not {c} (is another client using it?)")
            d = {k: _delta(before, after, k) for k in (PREFILL_SUM, QUEUE_SUM, STEPS_COUNT)}
            if d[STEPS_COUNT] is not None and round(d[STEPS_COUNT]) != 1:
                raise CalibrationError(f"--step-prefill: {n} new tokens took {round(d[STEPS_COUNT])} engine "
                                       "steps (over vLLM's max_num_batched_tokens, or another client): "
                                       "keep the prefill grid within one step")
            server = server and d[PREFILL_SUM] is not None
            if rep >= plan.warmup:
                if d[PREFILL_SUM] is not None:
                    samples.append(d[PREFILL_SUM])
                    http.append(r.client_ttft_s - d[PREFILL_SUM] - (d[QUEUE_SUM] or 0.0))
                else:
                    samples.append(r.client_ttft_s)
        points.append(StepPoint(n, 0, 0, n * (n + c), float(np.median(samples)), n * c))
    http_s = float(np.median(http)) if http else None
    for length in plan.decode_lengths:
        for d in plan.decode_seqs:
            gaps: list[float] = []
            kv: list[float] = []
            for rep in range(runs):
                probe.clear(["gpu"])
                g, k = _decode_run(probe, [fresh(length) for _ in range(d)], plan.decode_tokens)
                advance(1)
                if rep >= plan.warmup:
                    gaps += g
                    kv += k
            if not gaps:
                raise CalibrationError(f"step decode D={d} L={length}: no step with all {d} sequences "
                                       "decoding (raise --step-tokens)")
            points.append(StepPoint(0, d, round(float(np.mean(kv))), 0, float(np.median(gaps))))
    probe.clear(["gpu"])
    return points, {"http_s": http_s, "server_prefill_times": server}


def _delta(before: str, after: str, name: str) -> float | None:
    a, b = metric_sum(after, name), metric_sum(before, name)
    return None if a is None or b is None else a - b


def _decode_run(probe: VLLMProbe, prompts: list[list[int]], tokens: int) -> tuple[list[float], list[float]]:
    """Stream ``prompts`` concurrently (``ignore_eos``, as many tokens as the context allows),
    and once every stream has its first token (all decode), read until each has ``tokens`` more,
    then close them (vLLM aborts the requests). Returns the gaps between consecutive tokens of a stream
    that lie while all of them decoded (from the last first token to the first close), and the
    KV tokens of the step of each gap (Σ over the streams of prompt + tokens received so far)."""
    import threading

    d = len(prompts)
    times: list[list[float]] = [[] for _ in range(d)]
    first = [threading.Event() for _ in range(d)]
    all_decoding = threading.Event()
    closed: list[float] = []
    errors: list[str] = []
    # tokens read since every stream decodes; a stream closes only once each has `tokens` of them,
    # so a stream whose backlog arrives in one burst (a busy client) cannot close the window early
    extra = [0] * d

    def stream(i: int) -> None:
        body = {"model": probe.model_name, "prompt": prompts[i], "stream": True, "ignore_eos": True,
                "temperature": 0, "max_tokens": (probe.context or 4096) - len(prompts[i])}
        try:
            with probe.client.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise CalibrationError(f"HTTP {r.status_code}: {r.text[:200]}")
                for chunk in sse_chunks(r):
                    if chunk.get("choices"):
                        times[i].append(time.perf_counter())
                        first[i].set()
                        if all_decoding.is_set():
                            extra[i] += 1
                            if min(extra) >= tokens:
                                break
            closed.append(time.perf_counter())     # list.append is atomic
        except Exception as exc:      # reported below, after the other streams end
            errors.append(str(exc))
            extra[i] = tokens          # (the others must not wait for this one)
            first[i].set()

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(d)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + START_WAIT_S
    together = all(e.wait(max(deadline - time.monotonic(), 0.0)) for e in first)
    all_decoding.set()           # (also releases streams that would otherwise never end)
    for t in threads:
        t.join()
    if errors:
        raise CalibrationError(f"--engine {probe.url}: step decode D={d}: {errors[0]}")
    if not together:
        raise CalibrationError(f"--step-decode: {d} sequences never all ran at once within "
                               f"{START_WAIT_S:g} s (above vLLM's --max-num-seqs?)")
    start = max(ts[0] for ts in times)
    end = min(closed)
    lengths = [len(p) for p in prompts]
    gaps, kv = [], []

    def context(a: float) -> int:
        return sum(n + sum(1 for t in other if t <= a) for n, other in zip(lengths, times, strict=True))

    for ts in times:
        for a, b in itertools.pairwise(ts):
            if a >= start and b <= end:
                gaps.append(b - a)
                kv.append(context(a))
    return gaps, kv


def add_steps(cal: Calibration, probe: VLLMProbe, plan: StepPlan, seed: int = 0,
              advance: Callable[[int], None] = lambda n: None) -> None:
    """Measure ``plan`` (:func:`measure_steps`) and add the fitted ``step`` section, the plan and
    what the fit does not hold (``calibration.step``) and a note to the calibration."""
    points, info = measure_steps(probe, plan, seed, advance)
    cal.doc["step"] = fit_steps(points)
    if info["http_s"] is not None:   # outside the engine core: in a request's TTFT and e2e, not in a step
        cal.doc["step"] = {**{k: v for k, v in cal.doc["step"].items() if k in STEP_KEYS},
                           "latency_s": max(info["http_s"], 0.0),
                           **{k: v for k, v in cal.doc["step"].items() if k not in STEP_KEYS}}
    cal.doc["calibration"]["step"] = {
        "prefill_tokens": plan.prefill_tokens, "prefill_cached": plan.prefill_cached,
        "decode_seqs": plan.decode_seqs, "decode_lengths": plan.decode_lengths,
        "decode_tokens": plan.decode_tokens,
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
        + (f"; step.latency_s: the {info['http_s'] * 1e3:.2f} ms outside the engine core"
           if info["http_s"] is not None else ""))
    cal.doc["notes"] = "; ".join(cal.notes)
