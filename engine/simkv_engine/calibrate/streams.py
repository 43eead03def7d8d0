"""Decoding streams on a vLLM server for the step measurement (:mod:`.step_times`): streamed
completions decoding side by side, their token times, and the gaps of decode-only steps."""

from __future__ import annotations

import itertools
import time

from simkv_engine.calibrate.plan import CalibrationError
from simkv_engine.calibrate.remote import sse_chunks
from simkv_engine.calibrate.vllm_probe import VLLMProbe

#: Seconds the measurement waits for all its streams' first tokens.
START_WAIT_S = 300.0
#: vLLM's gauge of the requests its engine runs (closed streams are aborted, not at once).
RUNNING = "vllm:num_requests_running"


def metric_sum(text: str, name: str) -> float | None:
    """The sum of ``name``'s samples over all their labels in Prometheus text (``None``: absent)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            total += float(line.rpartition(" ")[2])
            seen = True
    return total if seen else None


class DecodingStreams:
    """Streamed completions of ``prompts`` decoding side by side (``ignore_eos``, as many tokens
    as the context allows) until :meth:`stop` (vLLM aborts a closed stream's request). The
    constructor returns once every stream has its first token (all of them decode)."""

    def __init__(self, probe: VLLMProbe, prompts: list[list[int]], wait_s: float = START_WAIT_S) -> None:
        import threading

        self.probe, self.lengths = probe, [len(p) for p in prompts]
        self.times: list[list[float]] = [[] for _ in prompts]
        self.closed: list[float] = []        # (list.append is atomic)
        self.errors: list[str] = []
        self.ended = False                   # a stream ran to the end of the context
        self._first = [threading.Event() for _ in prompts]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read, args=(i, p), daemon=True)
                         for i, p in enumerate(prompts)]
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + wait_s
        if not all(e.wait(max(deadline - time.monotonic(), 0.0)) for e in self._first):
            self.stop()
            raise CalibrationError(f"--step-decode: {len(prompts)} sequences never all ran at once within "
                                   f"{wait_s:g} s (above vLLM's --max-num-seqs?)")
        self._check()
        self.start = max((ts[0] for ts in self.times), default=time.perf_counter())

    def _read(self, i: int, prompt: list[int]) -> None:
        body = {"model": self.probe.model_name, "prompt": prompt, "stream": True, "ignore_eos": True,
                "temperature": 0, "max_tokens": (self.probe.context or 4096) - len(prompt)}
        try:
            with self.probe.client.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise CalibrationError(f"HTTP {r.status_code}: {r.text[:200]}")
                for chunk in sse_chunks(r):
                    if chunk.get("choices"):
                        self.times[i].append(time.perf_counter())
                        self._first[i].set()
                        if self._stop.is_set():
                            break
                else:
                    self.ended = True
            self.closed.append(time.perf_counter())
        except Exception as exc:      # reported by _check, after the other streams end
            self.errors.append(str(exc))
        finally:
            self._first[i].set()

    def _check(self) -> None:
        if self.errors:
            self.stop()
            raise CalibrationError(f"--engine {self.probe.url}: step decode D={len(self.times)}: "
                                   f"{self.errors[0]}")

    def wait_tokens(self, tokens: int) -> None:
        """Until every stream has ``tokens`` tokens since all of them decoded (or one ended)."""
        while not self.ended and not self.errors and min(
                sum(1 for t in ts if t > self.start) for ts in self.times) < tokens:
            time.sleep(0.005)

    def context(self, at: float) -> int:
        """The streams' KV tokens at ``at``: their prompts and the tokens they had received."""
        return sum(n + sum(1 for t in ts if t <= at) for n, ts in zip(self.lengths, self.times, strict=True))

    def stop(self, expect_running: bool = False) -> None:
        """Close the streams; ``expect_running``: refuse it if one had already ended (the
        measurement then had fewer streams decoding than it says)."""
        self._stop.set()
        for t in self._threads:
            t.join()
        self._check()
        deadline = time.monotonic() + START_WAIT_S
        while self._threads and time.monotonic() < deadline:   # until vLLM has aborted them
            running = metric_sum(self.probe.client.get("/metrics").text, RUNNING)
            if not running:
                break
            time.sleep(0.01)
        self._threads = []
        if expect_running and self.ended:
            raise CalibrationError("--step-mixed: a decoding stream reached the model's context before the "
                                   "prefills beside it were measured (shorten --step-lengths)")


def decode_gaps(probe: VLLMProbe, prompts: list[list[int]], tokens: int) -> tuple[list[float], list[float]]:
    """Stream ``prompts`` concurrently (:class:`DecodingStreams`) until each has ``tokens`` more
    once all decode, then close them. Returns the gaps between consecutive tokens of a stream
    that lie while all of them decoded (from the last first token to the first close), and the
    KV tokens of the step of each gap (Σ over the streams of prompt + tokens received so far)."""
    streams = DecodingStreams(probe, prompts)
    streams.wait_tokens(tokens)
    streams.stop()
    end = min(streams.closed)
    gaps, kv = [], []
    for ts in streams.times:
        for a, b in itertools.pairwise(ts):
            if a >= streams.start and b <= end:
                gaps.append(b - a)
                kv.append(streams.context(a))
    return gaps, kv
