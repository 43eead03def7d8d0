"""The HTTP probe: a running ``simkv engine serve`` driven through its API (completions with
``max_tokens: 0`` or streamed as the replay sends them, ``/kv/lookup``, ``/kv/clear``,
``/kv/archive``, ``/metrics``); its tiers are discovered by where a served chunk goes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from simkv_engine.calibrate.plan import LOCAL_TIERS, CalibrationError
from simkv_engine.calibrate.probe import ARCHIVE_COUNTERS, Probe, Served


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The ``Authorization`` header a server with ``api_key`` requires (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def sse_chunks(response: Any) -> Iterator[dict[str, Any]]:
    """The JSON chunks of a streamed completion (its server-sent ``data:`` lines, ``[DONE]`` left out)."""
    for line in response.iter_lines():
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        yield json.loads(line[5:])


class HTTPProbe(Probe):
    """A running engine server (``simkv engine serve``), driven through its API."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        self._connect(url, api_key, timeout)
        info = self._call("POST", "/kv/lookup", {"prompt": [0]})
        self.chunk_size = int(info["chunk_size"])
        self.tiers = self._discover_tiers()
        # The API does not say the vocabulary; ids below 512 are valid for every named model
        # (the tiny one has 512), and random 16+-token chunks of 511 ids never collide.
        self.vocab_size = 512

    def _connect(self, url: str, api_key: str | None, timeout: float) -> None:
        """The HTTP client and what ``/v1/models`` says (model, context)."""
        import httpx

        from simkv_engine.models import SHAPES

        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers=auth_headers(api_key), timeout=timeout)
        models = self._call("GET", "/v1/models")
        first = (models.get("data") or [{}])[0]
        self.model_name = str(first.get("id", "unknown"))
        context = first.get("max_model_len")
        self.context = context if isinstance(context, int) and context > 0 else None
        self.random_weights = True if self.model_name in SHAPES else None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx

        try:
            r = self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise CalibrationError(f"--engine {self.url}: {path}: {exc}") from None
        if r.status_code >= 400:
            try:
                msg = r.json()["error"]["message"]
            except Exception:
                msg = r.text[:200]
            raise CalibrationError(f"--engine {self.url}: {path}: HTTP {r.status_code}: {msg}")
        return r.json()

    def _discover_tiers(self) -> tuple[str, ...]:
        """The API does not list the engine's tiers: serve one chunk, clear the GPU cache and
        see where it is (CPU, or disk once written); the archive where ``/kv/hydrate`` is not
        501 (no archive tier)."""
        rng = np.random.default_rng(2**31 - 1)
        probe = rng.integers(1, 512, self.chunk_size + 1).tolist()
        self.serve(probe)
        self._call("POST", "/kv/clear", {"tiers": ["gpu"]})
        tiers = ["gpu"]
        if self.lookup(probe) == ["cpu"]:
            tiers.append("cpu")
            self._call("POST", "/kv/clear", {"tiers": ["cpu"]})
        deadline = time.monotonic() + 30        # LMCache writes disk asynchronously
        while time.monotonic() < deadline:
            if self.lookup(probe) == ["disk"]:
                tiers.append("disk")
                break
            time.sleep(0.01)
        if self.client.post("/kv/hydrate", json={"prompt": [0]}).status_code != 501:
            tiers.append("archive")
            self.archive_where = ("the server's archive (its store and endpoint are not reported by "
                                  "the API)")
            self.prompt_salt = int(np.random.default_rng().integers(2**62))
        return tuple(tiers)

    def serve(self, tokens: list[int]) -> Served:
        out = self._call("POST", "/v1/completions", {"prompt": tokens, "max_tokens": 0})
        return self._served(out["usage"])

    @staticmethod
    def _served(usage: dict[str, Any]) -> Served:
        s = usage["simkv"]
        src = s["tokens_by_source"]

        def num(key: str) -> float | None:
            return float(s[key]) if isinstance(s.get(key), int | float) else None

        return Served({t: int(src.get(t, 0)) for t in (*LOCAL_TIERS, "archive")}, float(s["load_s"]),
                      float(s["prefill_s"]), float(s["store_s"]), float(s.get("hydrate_s") or 0.0),
                      {t: int(v) for t, v in (s.get("bytes_loaded") or {}).items()},
                      queue_s=num("queue_s"), ttft_s=num("ttft_s"))

    def serve_timed(self, tokens: list[int]) -> Served:
        """A streamed completion of one token with the usage chunk, as ``simkv replay`` sends
        it; ``client_ttft_s`` is send → first streamed token, as the replay measures it."""
        first, usage = self._stream(tokens)
        served = self._served(usage)
        served.client_ttft_s = first
        return served

    def _stream(self, tokens: list[int], **extra: Any) -> tuple[float, dict[str, Any]]:
        """Send → first streamed token (seconds) and the usage of a streamed one-token completion."""
        import httpx

        body = {"prompt": tokens, "max_tokens": 1, "stream": True, "stream_options": {"include_usage": True},
                **extra}
        first = usage = None
        try:
            t0 = time.perf_counter()
            with self.client.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise CalibrationError(f"--engine {self.url}: /v1/completions (stream): HTTP "
                                           f"{r.status_code}: {r.text[:200]}")
                for chunk in sse_chunks(r):
                    if chunk.get("choices") and first is None:
                        first = time.perf_counter() - t0
                    if chunk.get("usage"):
                        usage = chunk["usage"]
        except httpx.HTTPError as exc:
            raise CalibrationError(f"--engine {self.url}: /v1/completions (stream): {exc}") from None
        if usage is None or first is None:
            raise CalibrationError(f"--engine {self.url}: a streamed completion sent no token or no usage")
        return first, usage

    def lookup(self, tokens: list[int]) -> list[str]:
        return list(self._call("POST", "/kv/lookup", {"prompt": tokens})["tiers"])

    def clear(self, tiers: Sequence[str]) -> None:
        self._call("POST", "/kv/clear", {"tiers": [t for t in tiers if t in self.tiers]})

    def wait_on_disk(self, tokens: list[int], timeout: float = 60.0) -> float:
        """Clear the GPU and CPU tiers (the server's clear waits for LMCache's pending disk
        writes first) and check the lookup sees the chunks on disk."""
        want = len(tokens) // self.chunk_size
        t0 = time.perf_counter()
        self.clear(["gpu", "cpu"])
        while self.lookup(tokens).count("disk") < want:
            if time.perf_counter() - t0 > timeout:
                raise CalibrationError(f"--engine {self.url}: the disk writes did not finish in "
                                       f"{timeout:.0f} s")
            time.sleep(0.001)
        return time.perf_counter() - t0

    def archive_pass(self) -> dict[str, Any]:
        return self._call("POST", "/kv/archive")

    def _metrics(self) -> dict[str, float]:
        """The server's ``/metrics`` samples (``{'name{labels}': value}``)."""
        import httpx

        from simkv.core.prometheus import parse_metrics

        try:
            return parse_metrics(self.client.get("/metrics").text)
        except httpx.HTTPError as exc:
            raise CalibrationError(f"--engine {self.url}: /metrics: {exc}") from None

    def counters(self) -> dict[str, float]:
        """The archive's counters from ``/metrics`` (``simkv_<key>_total``, unlabelled)."""
        m = self._metrics()
        return {k: m[f"simkv_{k}_total"] for k in ARCHIVE_COUNTERS if f"simkv_{k}_total" in m}

    def disk_evictions(self) -> int | None:
        v = self._metrics().get('simkv_evictions_total{tier="disk"}')
        return None if v is None else int(v)

    def describe(self) -> dict[str, Any]:
        return {"device": f"engine at {self.url} (device and versions are not reported by the API)",
                "model": self.model_name}

    def close(self) -> None:
        self.client.close()
