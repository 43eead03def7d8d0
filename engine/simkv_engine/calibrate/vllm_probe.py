"""The vLLM probe (a server without ``/kv/lookup``: the prefill grid only, timed at the client,
hits from the usage's cached tokens) and :func:`http_probe`, which picks it or the HTTP probe
for an engine URL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from simkv_engine.calibrate.plan import CalibrationError
from simkv_engine.calibrate.probe import Served
from simkv_engine.calibrate.remote import HTTPProbe, auth_headers


class VLLMProbe(HTTPProbe):
    """A vLLM server (OpenAI API, no ``/kv/*``): only the prefill grid can be measured, at the
    client. A request is a streamed completion of one token (``ignore_eos``, as ``simkv replay``
    sends); its "prefill" is the client's TTFT (send → first streamed token: HTTP, scheduling,
    the prefill and the first token, everything a replay's TTFT holds but the queue), its hits
    ``usage.prompt_tokens_details.cached_tokens`` (``--enable-prompt-tokens-details``), checked
    against the cached prefix the measurement made. :meth:`clear` empties the prefix cache with
    ``POST /reset_prefix_cache`` where the server allows it (``VLLM_SERVER_DEV_MODE=1``); else
    nothing is cleared and fresh random prompts keep anything from hitting by accident.

    vLLM's block size is found by serving ``p − 1`` random tokens and then them plus one: the
    second hits ``p − B`` (``p`` a power of two). ``block_size`` (the profile's, i.e. the
    trace's) must be a multiple of it; default: vLLM's."""

    prefill_only = True
    wait_clears = False
    gpu_note = ("load.gpu is 0: vLLM computes a prefix-cache hit in place (no copy), and the prefill of a "
                "request with c cached tokens, in the table, is the whole cost of its hits")

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0,
                 block_size: int | None = None) -> None:
        self._connect(url, api_key, timeout)
        self.vocab_size = 512      # ids below 512 are valid for every named model
        self.tiers = ("gpu",)
        if self.context is not None:
            self.context -= 1      # the longest prompt: one token is generated
        self.resets = self.client.post("/reset_prefix_cache").status_code == 200
        self.vllm_block = self._block_size()
        if block_size is not None and (block_size < 1 or block_size % self.vllm_block):
            raise CalibrationError(f"--block-size: {block_size} is not a multiple of vLLM's block size "
                                   f"{self.vllm_block}")
        self.chunk_size = block_size or self.vllm_block
        version = self.client.get("/version")
        self.version = version.json().get("version") if version.status_code == 200 else None

    def _block_size(self) -> int:
        rng = np.random.default_rng(2**31 - 1)
        p = 1 << (min(self.context or 1024, 4096).bit_length() - 1)
        prompt = rng.integers(1, 512, p).tolist()
        self.serve(prompt[:-1])
        hit = self.serve(prompt).hit_tokens["gpu"]
        if not 0 < hit < p:
            raise CalibrationError(f"--engine {self.url}: vLLM served {p - 1} tokens, then them and one more "
                                   f"with {hit} cached tokens: start it with --enable-prefix-caching")
        self.clear(["gpu"])
        return p - hit

    def serve(self, tokens: list[int]) -> Served:
        first, usage = self._stream(tokens, model=self.model_name, ignore_eos=True, temperature=0)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if not isinstance(cached, int):
            raise CalibrationError(f"--engine {self.url}: vLLM's usage has no prompt_tokens_details."
                                   "cached_tokens: start it with --enable-prompt-tokens-details")
        return Served({"gpu": cached}, 0.0, first, 0.0, client_ttft_s=first)

    def serve_timed(self, tokens: list[int]) -> Served:
        return self.serve(tokens)      # every request is already timed at the client

    def lookup(self, tokens: list[int]) -> list[str]:
        raise CalibrationError("vLLM has no lookup")

    def clear(self, tiers: Sequence[str]) -> None:
        import httpx

        if not self.resets or "gpu" not in tiers:
            return
        try:
            r = self.client.post("/reset_prefix_cache")
        except httpx.HTTPError as exc:
            raise CalibrationError(f"--engine {self.url}: /reset_prefix_cache: {exc}") from None
        if r.status_code != 200:
            raise CalibrationError(f"--engine {self.url}: /reset_prefix_cache: HTTP {r.status_code}: "
                                   f"{r.text[:200]}")

    def wait_on_disk(self, tokens: list[int], timeout: float = 60.0) -> float:
        raise CalibrationError("vLLM has no disk tier here")

    def notes(self) -> list[str]:
        """What the profile holds for vLLM and what it does not."""
        return [
            f"vLLM (prefix caching, block size {self.vllm_block}; profile block_size {self.chunk_size}): "
            "prefill.seconds is the client's TTFT of a streamed one-token completion (HTTP, scheduling, the "
            "prefill and the first token; simkv replay's TTFT less its queue), c cached tokens made by "
            "serving the prefix first and checked with usage.prompt_tokens_details.cached_tokens; "
            + ("the prefix cache was emptied before each run (POST /reset_prefix_cache)" if self.resets else
               "the server does not allow POST /reset_prefix_cache (VLLM_SERVER_DEV_MODE=1): nothing was "
               "reset, every run used fresh random prompts"),
            "not measured (vLLM's HTTP API reports no server-side times and here has no CPU or disk "
            "tier): the request section (the client TTFT in the table already holds what a request "
            "costs besides its prefill), CPU loads and stores (not written); load.disk, store.disk, "
            "load.archive and store.archive are the analytic defaults the profile format requires, "
            "unused by a scenario without those tiers"]

    def describe(self) -> dict[str, Any]:
        return {"device": f"vLLM {self.version or '(version not reported)'} at {self.url} (device not "
                          "reported by the API)", "model": self.model_name}


def http_probe(url: str, api_key: str | None = None, block_size: int | None = None) -> HTTPProbe:
    """The probe for the server at ``url``: :class:`HTTPProbe` (simkv's engine), or
    :class:`VLLMProbe` where ``POST /kv/lookup`` is 404 (vLLM)."""
    import httpx

    try:
        r = httpx.post(f"{url.rstrip('/')}/kv/lookup", json={"prompt": [0]}, headers=auth_headers(api_key),
                       timeout=60)
    except httpx.HTTPError as exc:
        raise CalibrationError(f"--engine {url}: /kv/lookup: {exc}") from None
    if r.status_code == 404:
        return VLLMProbe(url, api_key, block_size=block_size)
    if block_size is not None:
        raise CalibrationError("--block-size: only for a vLLM server (simkv's engine reports its chunk size)")
    return HTTPProbe(url, api_key)
