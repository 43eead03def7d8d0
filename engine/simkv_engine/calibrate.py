"""``simkv calibrate``: measure the engine through the path requests take and write a
``kind: table`` hardware profile (docs/system.md, "Calibrating a profile").

A :class:`Probe` serves token-id prompts and reports the engine's own per-request times
(``load_s``, ``prefill_s``, ``store_s``, ``hydrate_s``) and tokens per tier; it can clear local
tiers and look up where a prompt's chunks are. Two probes: :class:`InProcessProbe` (the model
and :class:`~simkv_engine.engine.KVEngine` built from a scenario, as the server builds them) and
:class:`HTTPProbe` (a running ``simkv engine serve``, docs in the API contract: completions
with ``max_tokens: 0``, ``/kv/lookup``, ``/kv/clear``; ``/kv/archive`` and ``/metrics`` for the
archive). Both end in ``KVEngine.serve``. A server without ``/kv/lookup`` (404: vLLM) gets a
:class:`VLLMProbe`: the prefill grid only, timed at the client (:class:`VLLMProbe` says what and why).

Measurements (each a median over ``repeats`` after ``warmup`` discarded runs, every run on a
fresh random prompt from ``numpy.random.default_rng(seed)`` so nothing hits by accident; the
lookup before each timed run checks the chunks are exactly where the measurement needs them):

* prefill seconds over ``new × cached``: the cached prefix is served first (so its chunks sit
  in the GPU cache), then prefix + new tokens; ``prefill_s`` as the engine reports it.
* load seconds vs chunks per tier: ``gpu`` (GPU-cache copy), ``cpu`` (LMCache CPU),
  ``disk_cold`` and ``disk_warm`` (LMCache disk; what cold means: :attr:`Probe.disk_cold`);
  fitted ``load = per_request_s + chunks·per_block_s`` (least squares, both >= 0).
* store: ``store_s`` of the run that computed the chunks (GPU cache + LMCache CPU copy) and,
  with a disk tier, the time from the run's end until LMCache's asynchronous disk writes are
  done; the per-chunk slope of each; and ``store_s`` of the run that loaded them from the CPU
  tier (their copy into the GPU cache: ``admit``).
* the archive, where the engine has one (:func:`_measure_archive`): a request's chunks are
  uploaded by an archive pass the probe triggers, the local tiers cleared, and the request
  served again from the archive alone: ``archive`` is its ``load_s`` (fetch + verify +
  decompress + copy), fitted like the other loads; the pass's compress + upload seconds per
  chunk, the uploads' raw / stored bytes (the codec's ratio on the model's real KV), and the
  compress and decompress speeds from the archive's counters.
* the request overhead (the profile's ``request`` section, what a request costs besides its
  loads, prefill and stores): on fresh prompts of every grid length, served as the replay sends
  them (:meth:`Probe.serve_timed`), the worker's rest ``ttft − queue − load − prefill − store``
  fitted against the prompt's chunks, and (over HTTP) the latency outside the worker, the
  client's TTFT minus the server's, fitted against its tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import itertools
import logging
import os
import platform
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simkv.errors import SimkvError
from simkv.model.hardware import GB, PROFILE_VERSION, STEP_KEYS, AnalyticProfile, Transfers, bilinear

log = logging.getLogger(__name__)

LOCAL_TIERS = ("gpu", "cpu", "disk")
#: The archive's fixed TTL in an in-process calibration (a day: nothing expires meanwhile).
CALIBRATION_TTL_S = 86400.0
#: The archive counters the calibration reads (``KVEngine.counters()`` keys).
ARCHIVE_COUNTERS = ("archive_fetches", "archive_fetch_bytes", "archive_fetch_s", "archive_decompress_s")


class CalibrationError(SimkvError):
    """The engine cannot be calibrated as asked (bad grid, unreachable engine, a chunk found
    where the measurement did not put it)."""


# -- the grid -----------------------------------------------------------------------------

#: Grids in chunks of the engine's block size ``C`` (``quick``: CPU, a minute with the tiny
#: model; ``full``: a GPU with a Llama shape). ``new``: new tokens (``1`` is one token, the
#: rest multiples of C); ``cached``: cached tokens; ``chunks``: chunks per load measurement.
GRIDS: dict[str, dict[str, Any]] = {
    "quick": {"new": [1, 1, 4, 16], "cached": [0, 4, 16], "chunks": [1, 2, 4, 8], "repeats": 3, "warmup": 1},
    "full": {"new": [1, 1, 4, 16, 32, 64], "cached": [0, 16, 64, 128], "chunks": [1, 4, 16, 64],
             "repeats": 5, "warmup": 2},
}


@dataclass(frozen=True)
class Plan:
    """What to measure: token grids, chunk counts, repeats (medians of), warm-up runs
    (discarded) and the prompts' seed."""

    new_tokens: list[int]
    cached_tokens: list[int]
    chunks: list[int]
    repeats: int = 3
    warmup: int = 1
    seed: int = 0
    tiers: bool = True

    @classmethod
    def make(cls, grid: str, chunk: int, *, new_tokens: list[int] | None = None,
             cached_tokens: list[int] | None = None, chunks: list[int] | None = None,
             repeats: int | None = None, warmup: int | None = None, seed: int = 0) -> Plan:
        """The named grid for chunk size ``chunk``, any of its lists or counts replaced."""
        if grid not in GRIDS:
            raise CalibrationError(f"--grid: {grid!r} is not one of {', '.join(GRIDS)}")
        g = GRIDS[grid]
        new = new_tokens or [1, *(k * chunk for k in g["new"][1:])]
        plan = cls(new, cached_tokens or [k * chunk for k in g["cached"]], chunks or list(g["chunks"]),
                   g["repeats"] if repeats is None else repeats, g["warmup"] if warmup is None else warmup,
                   seed)
        plan.check(chunk)
        return plan

    def check(self, chunk: int, context: int | None = None) -> None:
        for key, values in (("--new-tokens", self.new_tokens), ("--cached-tokens", self.cached_tokens)):
            if len(values) < 2 or any(b <= a for a, b in itertools.pairwise(values)):
                raise CalibrationError(f"{key}: expected at least 2 strictly increasing token counts, "
                                       f"got {values}")
        if self.new_tokens[0] < 1:
            raise CalibrationError(f"--new-tokens: at least one token is computed, got {self.new_tokens[0]}")
        bad = [c for c in self.cached_tokens if c < 0 or c % chunk]
        if bad:
            raise CalibrationError(f"--cached-tokens: {bad[0]} is not a multiple of the block size {chunk} "
                                   "(only full chunks are cached)")
        if not self.chunks or any(k < 1 for k in self.chunks) or len(set(self.chunks)) < 2:
            raise CalibrationError(f"--chunks: expected at least 2 distinct counts >= 1, got {self.chunks}")
        if self.repeats < 1 or self.warmup < 0:
            raise CalibrationError(f"--repeats must be >= 1 and --warmup >= 0, got {self.repeats}, "
                                   f"{self.warmup}")
        if context is not None:
            longest = max(self.new_tokens[-1] + self.cached_tokens[-1], max(self.chunks) * chunk + 1)
            if longest > context:
                raise CalibrationError(f"the grid needs prompts of {longest} tokens but the model's context "
                                       f"is {context} (shrink --new-tokens / --cached-tokens / --chunks)")


# -- probes -------------------------------------------------------------------------------


@dataclass
class Served:
    """One request as the engine reports it: tokens per tier, seconds of each phase, bytes
    loaded per tier (where reported)."""

    hit_tokens: dict[str, int]
    load_s: float
    prefill_s: float
    store_s: float
    hydrate_s: float = 0.0
    bytes_loaded: dict[str, int] = field(default_factory=dict)
    #: The server's queue and arrival → first token (in-process: 0 and the serve's wall time).
    queue_s: float | None = None
    ttft_s: float | None = None
    #: Send → first streamed token at the client (over HTTP, from :meth:`Probe.serve_timed`).
    client_ttft_s: float | None = None


class Probe(ABC):
    """The engine seen by the calibration: serve, look up, clear, wait for disk writes."""

    chunk_size: int
    vocab_size: int
    context: int | None = None
    #: Tiers the engine has, in walk order (``gpu``, ``cpu``, ``disk``, ``archive``).
    tiers: tuple[str, ...] = ()
    #: Bytes of one chunk's KV (``None``: learnt from a served GPU hit's ``bytes_loaded``).
    chunk_bytes: int | None = None
    #: Chunks the GPU cache holds (``None``: unlimited or unknown).
    gpu_chunks: int | None = None
    #: Whether :meth:`wait_on_disk` drops the chunks from the GPU and CPU tiers.
    wait_clears = True
    #: What "cold" means for this probe's disk reads (written into the profile's notes).
    disk_cold = "first read after the write (the page cache may still hold the file)"
    #: Whether only the prefill grid can be measured (no lookup, no tiers, no server timings).
    prefill_only = False
    #: What the profile's ``load.gpu`` is, for the notes.
    gpu_note = ("load.gpu is the engine's GPU-cache copy (KV chunks copied out of the GPU cache into the "
                "request's KV), charged to GPU hits")

    @abstractmethod
    def serve(self, tokens: list[int]) -> Served: ...

    def serve_timed(self, tokens: list[int]) -> Served:
        """Serve ``tokens`` as a replay sends a request (over HTTP: streamed, one token), with
        ``ttft_s`` (and ``client_ttft_s`` where there is a client) set."""
        return self.serve(tokens)

    @abstractmethod
    def lookup(self, tokens: list[int]) -> list[str]: ...

    @abstractmethod
    def clear(self, tiers: Sequence[str]) -> None: ...

    @abstractmethod
    def wait_on_disk(self, tokens: list[int], timeout: float = 60.0) -> float:
        """Block until every full chunk of ``tokens`` is on disk; the seconds waited. May drop
        the chunks from the GPU and CPU tiers (the HTTP probe can only see disk behind them)."""

    def drop_disk_cache(self) -> bool:
        """Evict the disk tier's files from the page cache; False where it cannot."""
        return False

    #: Where the archive lives, for the notes (``""``: no archive).
    archive_where = ""
    #: Whether the model has random weights (``None``: unknown).
    random_weights: bool | None = None
    #: Mixed into the prompts' seed (``None``: none): an archive outlives the engine, so an
    #: earlier calibration's chunks may still be there; fresh prompts must not meet them.
    prompt_salt: int | None = None

    def archive_pass(self) -> dict[str, Any]:
        """Run one archive pass now; what it did (the server's ``POST /kv/archive`` answer)."""
        raise CalibrationError("the engine has no archive tier")

    def counters(self) -> dict[str, float]:
        """The engine's archive fetch counters (:data:`ARCHIVE_COUNTERS`), cumulative."""
        return {}

    def disk_evictions(self) -> int | None:
        """Chunks the disk tier has evicted so far (``None``: not known)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Provenance: device, versions, model shape."""
        return {}

    def notes(self) -> list[str]:
        """The probe's own notes for the profile (what it measures differently, or not)."""
        return []

    def close(self) -> None:  # noqa: B027 (nothing to release by default)
        pass


def _fs_type(path: Path) -> str:
    """The filesystem type holding ``path`` (from /proc/self/mountinfo; ``unknown`` elsewhere)."""
    best, kind = "", "unknown"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return kind
    target = str(path.resolve())
    for line in lines:
        left, _, right = line.partition(" - ")
        mount = left.split()[4]
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, kind = mount, right.split()[0]
    return kind


class InProcessProbe(Probe):
    """The model and KVEngine in this process, built from ``scenario`` as the server does.
    ``disk_path``: LMCache's disk folder (a fresh temporary folder inside it is used).

    With ``tiers.archive.enabled``: the archive lives in a folder of its own under ``archive``
    (``s3://bucket/prefix`` with ``archive_endpoint``, or a folder; default: a local folder in
    the temporary folder), deleted at :meth:`close`; passes run only when the calibration asks
    (no background worker), and the scenario's TTL policy is replaced by a fixed TTL of
    :data:`CALIBRATION_TTL_S` (a TTL is the objects' metadata: the times measured do not depend
    on it, and no chunk expires or is refreshed while it is measured)."""

    def __init__(self, scenario: Any, model_spec: str = "tiny", device: str = "cpu",
                 disk_path: str | Path | None = None, archive: str | None = None,
                 archive_endpoint: str | None = None) -> None:
        import torch

        from simkv_engine.engine import KVEngine
        from simkv_engine.models import SHAPES, load_model

        if not scenario.tiers.archive.enabled and (archive or archive_endpoint):
            raise CalibrationError("--archive: the scenario has no archive tier (tiers.archive.enabled "
                                   "is false)")
        if archive_endpoint and not str(archive or "").startswith("s3://"):
            raise CalibrationError("--archive-endpoint: needs --archive s3://bucket[/prefix]")
        self.model_spec, self.device_name = model_spec, device
        self.random_weights = model_spec in SHAPES
        self.model = load_model(model_spec, device)
        self._tmp = tempfile.TemporaryDirectory(prefix="simkv-calibrate-", dir=disk_path)
        self.disk_path = Path(self._tmp.name)
        self._archive: Any = None
        options = None
        if scenario.tiers.archive.enabled:
            scenario, options = self._archive_options(scenario, archive, archive_endpoint)
        try:
            self.engine = KVEngine(scenario, self.model, disk_path=self.disk_path, archive=options)
        except BaseException:
            self._tmp.cleanup()
            raise
        e = self.engine
        self.chunk_size = e.chunk_size
        self.chunk_bytes = e.chunk_bytes
        self.vocab_size = int(self.model.config.vocab_size)
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0)) or None
        self.tiers = ("gpu", *(t for t in ("cpu", "disk") if e._backends[t] is not None))
        fs = _fs_type(self.disk_path)
        self.disk_cold = (f"after fsync + posix_fadvise(DONTNEED) on LMCache's disk files (filesystem "
                          f"{fs}; the kernel drops their clean pages from the page cache, so the read "
                          "goes to the device" + ("; on tmpfs the files live in memory, so cold is not "
                                                  "a device read" if fs == "tmpfs" else "") + ")")
        self._torch = torch
        self.wait_clears = False
        self.gpu_chunks = e.gpu_cache.capacity
        if e.archive is not None:
            self.tiers = (*self.tiers, "archive")

    def _archive_options(self, scenario: Any, archive: str | None,
                         endpoint: str | None) -> tuple[Any, Any]:
        """The scenario with the calibration's fixed TTL, and where its archive goes."""
        from simkv.scenario import TTLConfig
        from simkv_engine.archive import ArchiveOptions

        folder = f"simkv-calibrate-{uuid.uuid4().hex[:12]}"
        if archive is None:
            location = str(self.disk_path / "archive")
            self.archive_where = f"a local folder (filesystem {_fs_type(self.disk_path)})"
        elif archive.startswith("s3://"):
            location = f"{archive.rstrip('/')}/{folder}"
            self.archive_where = f"{location} (endpoint {endpoint or 'AWS, from boto3'})"
        else:
            location = str(Path(archive) / folder)
            self.archive_where = f"the folder {location} (filesystem {_fs_type(Path(archive))})"
        self._archive = (location, endpoint)
        ttl = TTLConfig("static", {"ttl": CALIBRATION_TTL_S}, "fixed", "archive")
        return (dataclasses.replace(scenario, ttl=ttl),
                ArchiveOptions(location, endpoint_url=endpoint, worker_thread=False))

    def archive_pass(self) -> dict[str, Any]:
        from simkv_engine.server import archive_pass

        if self.engine.archive is None:
            return super().archive_pass()
        return archive_pass(self.engine.archive)

    def counters(self) -> dict[str, float]:
        c = self.engine.counters()
        return {k: float(c[k]) for k in ARCHIVE_COUNTERS if k in c}

    def serve(self, tokens: list[int]) -> Served:
        t0 = time.perf_counter()
        r = self.engine.serve(tokens)
        wall = time.perf_counter() - t0
        return Served(dict(r.hit_tokens), r.load_s, r.prefill_s, r.store_s, r.hydrate_s,
                      {t: n // self.chunk_size * self.chunk_bytes for t, n in r.hit_tokens.items()},
                      queue_s=0.0, ttft_s=wall)

    def lookup(self, tokens: list[int]) -> list[str]:
        return self.engine.lookup(tokens)

    def clear(self, tiers: Sequence[str]) -> None:
        self.engine.clear(list(tiers))        # waits for LMCache's pending disk writes first

    def wait_on_disk(self, tokens: list[int], timeout: float = 60.0) -> float:
        disk = self.engine._backends["disk"]
        keys = self.engine.chunk_keys(tokens)
        t0 = time.perf_counter()
        while not all(disk.contains(k) for k in keys):
            if time.perf_counter() - t0 > timeout:
                raise CalibrationError(f"LMCache's disk writes did not finish in {timeout:.0f} s")
            time.sleep(0.0002)
        return time.perf_counter() - t0

    def disk_evictions(self) -> int | None:
        return int(self.engine.counters()["evictions"].get("disk", 0))

    def drop_disk_cache(self) -> bool:
        if not hasattr(os, "posix_fadvise"):
            return False
        for path in self.disk_path.iterdir():
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
        return True

    def describe(self) -> dict[str, Any]:
        import lmcache
        import transformers

        torch = self._torch
        dev = torch.device(self.device_name)
        if dev.type == "cuda":
            name = torch.cuda.get_device_name(dev)
        else:
            name = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        kv = self.engine.kv
        cfg = self.model.config
        return {"device": name, "torch": torch.__version__, "transformers": transformers.__version__,
                "lmcache": getattr(lmcache, "__version__", "unknown"),
                "model": f"{self.model_spec} ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
                         f"{kv.kv_heads} KV heads x {kv.head_dim}, {str(kv.dtype).removeprefix('torch.')})"}

    def close(self) -> None:
        archive = self.engine.archive
        try:
            if archive is not None:
                archive.close(final_pass=False)   # what it holds is deleted below: upload nothing more
            self.engine.close()
        finally:
            try:
                if archive is not None:
                    self._drop_archive(archive.fmt.model)
            finally:
                self._tmp.cleanup()

    def _drop_archive(self, model: str) -> None:
        """Delete the objects this calibration wrote (its own folder or prefix)."""
        from simkv_engine.archive import ArchiveError, open_store

        location, endpoint = self._archive
        if not location.startswith("s3://"):
            shutil.rmtree(location, ignore_errors=True)
            return
        store = open_store(location, endpoint_url=endpoint)
        try:
            for name in list(store.list(model)):
                store.delete(name)
        except ArchiveError as exc:
            log.warning("calibrate: could not delete the archive objects under %s: %s", location, exc)
        finally:
            store.close()


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
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
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
        import json

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
                for line in r.iter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    chunk = json.loads(line[5:])
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

        from simkv.replay.client import parse_metrics

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

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.post(f"{url.rstrip('/')}/kv/lookup", json={"prompt": [0]}, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise CalibrationError(f"--engine {url}: /kv/lookup: {exc}") from None
    if r.status_code == 404:
        return VLLMProbe(url, api_key, block_size=block_size)
    if block_size is not None:
        raise CalibrationError("--block-size: only for a vLLM server (simkv's engine reports its chunk size)")
    return HTTPProbe(url, api_key)


# -- fits ---------------------------------------------------------------------------------


def nonneg_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``argmin ||a·x − b||`` over ``x >= 0``: the best of the unconstrained least-squares
    solutions on every subset of columns whose solution is non-negative (exact for the 2-3
    columns the fits here have)."""
    best, best_res = np.zeros(a.shape[1]), float(np.sum(b**2))
    for r in range(1, a.shape[1] + 1):
        for cols in itertools.combinations(range(a.shape[1]), r):
            x, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
            if np.all(x >= 0):
                res = float(np.sum((a[:, cols] @ x - b) ** 2))
                if res < best_res:
                    best_res, best = res, np.zeros(a.shape[1])
                    best[list(cols)] = x
    return best


def fit_analytic(n: np.ndarray, c: np.ndarray, seconds: np.ndarray) -> tuple[float, float, float]:
    """``(const_s, per_token_s, attn_s)`` of ``const + per_token·n + attn·n·(n + c)`` fitted to
    the measured ``seconds`` by least squares on relative residuals (each point divided by its
    measured time, so short prefills weigh as much as long ones), all three >= 0."""
    n, c, y = (np.asarray(v, np.float64).ravel() for v in (n, c, seconds))
    a = np.stack([np.ones_like(n), n, n * (n + c)], axis=1)
    w = 1.0 / np.maximum(y, 1e-12)
    const, per_token, attn = nonneg_lstsq(a * w[:, None], y * w)
    return float(const), float(per_token), float(attn)


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """``(intercept, slope)`` of ``y = intercept + slope·x`` by least squares, both >= 0."""
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a = np.stack([np.ones_like(xs), xs], axis=1)
    b0, b1 = nonneg_lstsq(a, ys)
    return float(b0), float(b1)


def leave_one_out(new: np.ndarray, cached: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Relative leave-one-out error of the table at each grid point: the point predicted by
    the table without its row (interpolated between its neighbours in new tokens, or
    extrapolated at an edge) and without its column (likewise in cached tokens), the larger
    of the two ``|predicted − measured| / measured``; NaN where an axis has only 2 values."""
    out = np.full(seconds.shape, np.nan)
    for i, j in itertools.product(range(len(new)), range(len(cached))):
        errs = []
        n, c = np.array([new[i]]), np.array([cached[j]])
        if len(new) > 2:
            keep = np.arange(len(new)) != i
            errs.append(bilinear(new[keep], cached, seconds[keep], n, c)[0])
        if len(cached) > 2:
            keep = np.arange(len(cached)) != j
            errs.append(bilinear(new, cached[keep], seconds[:, keep], n, c)[0])
        if errs:
            y = max(seconds[i, j], 1e-12)
            out[i, j] = max(abs(p - seconds[i, j]) / y for p in errs)
    return out


# -- the measurement ----------------------------------------------------------------------


@dataclass
class Calibration:
    """What a calibration measured and fitted; :attr:`doc` is the profile document."""

    doc: dict[str, Any]
    prefill_rows: list[dict[str, float]]
    load_rows: list[dict[str, Any]]
    notes: list[str]


class FreshPrompts:
    """Fresh prompts: ``numpy.random.default_rng(seed)`` token ids in ``[1, vocab)`` (the seed
    ``[seed, salt]`` with a salt)."""

    def __init__(self, vocab: int, seed: int, salt: int | None = None) -> None:
        self.rng, self.vocab = np.random.default_rng(seed if salt is None else [seed, salt]), vocab

    def __call__(self, n: int) -> list[int]:
        return self.rng.integers(1, self.vocab, n).tolist() if n else []


def _expect(probe: Probe, tokens: list[int], want: list[str], what: str) -> None:
    got = probe.lookup(tokens)
    if got != want:
        raise CalibrationError(f"{what}: expected the chunks in {_runs(want) or 'no tier'}, the engine "
                               f"has them in {_runs(got) or 'no tier'} (is another client using it?)")


def _runs(tiers: list[str]) -> str:
    return ", ".join(f"{len(list(g))}x {t}" for t, g in itertools.groupby(tiers))


def _hits(served: Served, tier: str, tokens: int, what: str) -> None:
    got = {t: n for t, n in served.hit_tokens.items() if n}
    if got != ({tier: tokens} if tokens else {}):
        raise CalibrationError(f"{what}: expected {tokens} tokens from {tier}, the engine served {got}")


def steps(plan: Plan, tiers: Sequence[str], wait_clears: bool = False, prefill_only: bool = False) -> int:
    """Engine requests a calibration makes (the progress bar's total)."""
    runs = plan.warmup + plan.repeats
    prefill = sum(2 if c else 1 for c in plan.cached_tokens) * len(plan.new_tokens) * runs
    if prefill_only:
        return prefill
    per_load = 1 + len([t for t in ("gpu", "cpu") if t in tiers]) + (2 if "disk" in tiers else 0) \
        + (2 if "archive" in tiers else 0) + (2 if "disk" in tiers and wait_clears else 0)
    loads = per_load * len(plan.chunks) * runs if plan.tiers else 0
    full = len(plan.chunks) * runs if plan.tiers and "disk" in tiers else 0
    return prefill + loads + len(overhead_lengths(plan)) * runs + full


def overhead_lengths(plan: Plan, context: int | None = None) -> list[int]:
    """Prompt lengths of the request-overhead measurement: the grid's new-token counts and its
    longest prompt (new + cached), one token short of ``context`` at most (one is generated)."""
    longest = plan.new_tokens[-1] + plan.cached_tokens[-1]
    if context is not None:
        longest = min(longest, context - 1)
    return sorted({*(n for n in plan.new_tokens if n <= longest), longest})


def calibrate(probe: Probe, plan: Plan, *, scenario: Any = None,
              advance: Callable[[int], None] = lambda n: None) -> Calibration:
    """Measure ``plan`` on ``probe`` and fit the profile. ``scenario``: where the analytic
    defaults of tiers not measured come from (simkv's defaults if ``None``)."""
    from simkv.scenario import Scenario

    scenario = scenario or Scenario()
    C = probe.chunk_size
    plan.check(C, probe.context)
    if probe.prefill_only:
        plan = dataclasses.replace(plan, tiers=False)
    need = max(plan.cached_tokens[-1] // C, max(plan.chunks) if plan.tiers else 0)
    if probe.gpu_chunks is not None and probe.gpu_chunks < need:
        raise CalibrationError(f"tiers.gpu.capacity_bytes: the GPU cache holds {probe.gpu_chunks} chunks, "
                               f"the calibration needs {need} there (raise it, or shrink --cached-tokens "
                               "/ --chunks)")
    fresh = FreshPrompts(probe.vocab_size, plan.seed, probe.prompt_salt)
    runs = plan.warmup + plan.repeats
    notes: list[str] = probe.notes()
    local = [t for t in LOCAL_TIERS if t in probe.tiers]

    def counted(served: Served) -> Served:
        advance(1)
        return served

    # Prefill over the grid.
    new, cached = plan.new_tokens, plan.cached_tokens
    seconds = np.zeros((len(new), len(cached)))
    for (i, n), (j, c) in itertools.product(enumerate(new), enumerate(cached)):
        samples = []
        for rep in range(runs):
            probe.clear(local)
            prefix, suffix = fresh(c), fresh(n)
            if c:
                counted(probe.serve(prefix))
            what = f"prefill n={n} c={c}"
            if not probe.prefill_only:      # else the served hits below are the check
                _expect(probe, prefix + suffix, ["gpu"] * (c // C), what)
            r = counted(probe.serve(prefix + suffix))
            _hits(r, "gpu", c, what)
            if rep >= plan.warmup:
                samples.append(r.prefill_s)
        seconds[i, j] = float(np.median(samples))

    # Loads per tier, stores.
    loads: dict[str, dict[int, list[float]]] = {}
    stores: dict[str, dict[int, list[float]]] = {"store": {}, "disk_write": {}, "admit": {}}
    chunk_bytes = probe.chunk_bytes
    cold_dropped = False
    for k in plan.chunks if plan.tiers else []:
        for rep in range(runs):
            keep = rep >= plan.warmup
            probe.clear(local)
            prompt = fresh(k * C + 1)
            full, want = prompt[: k * C], k * C
            what = f"load of {k} chunks"
            _expect(probe, prompt, [], what)
            first = counted(probe.serve(prompt))
            _hits(first, "gpu", 0, what)
            timed: dict[str, Served] = {}
            if keep:
                stores["store"].setdefault(k, []).append(first.store_s)
            if "disk" in probe.tiers:
                # LMCache's disk writes were queued by the serve: time them from its end. Where
                # the wait clears the GPU and CPU tiers, on a prompt of their own.
                if probe.wait_clears:
                    probe.clear(local)
                    other = fresh(k * C + 1)
                    counted(probe.serve(other))
                    waited = probe.wait_on_disk(other[: k * C])
                    probe.clear(local)
                    prompt = fresh(k * C + 1)
                    full = prompt[: k * C]
                    first = counted(probe.serve(prompt))
                    _hits(first, "gpu", 0, what)
                else:
                    waited = probe.wait_on_disk(full)
                if keep:
                    stores["disk_write"].setdefault(k, []).append(waited)
            r = counted(probe.serve(prompt))
            _hits(r, "gpu", want, f"{what} from gpu")
            timed["gpu"] = r
            if chunk_bytes is None and r.bytes_loaded.get("gpu"):
                chunk_bytes = r.bytes_loaded["gpu"] // k
            if "cpu" in probe.tiers:
                probe.clear(["gpu"])
                _expect(probe, prompt, ["cpu"] * k, f"{what} from cpu")
                timed["cpu"] = r = counted(probe.serve(prompt))
                _hits(r, "cpu", want, f"{what} from cpu")
                if keep:
                    stores["admit"].setdefault(k, []).append(r.store_s)
            if "disk" in probe.tiers:
                probe.wait_on_disk(full)
                for label in ("disk_cold", "disk_warm"):
                    probe.clear(["gpu", "cpu"])
                    if label == "disk_cold":
                        cold_dropped = probe.drop_disk_cache()
                    _expect(probe, prompt, ["disk"] * k, f"{what} from disk")
                    timed[label] = r = counted(probe.serve(prompt))
                    _hits(r, "disk", want, f"{what} from disk")
            if keep:
                for label, s in timed.items():
                    loads.setdefault(label, {}).setdefault(k, []).append(s.load_s)

    archive = None
    if plan.tiers and "archive" in probe.tiers:
        archive = _measure_archive(probe, plan, fresh, counted, local, notes)
        if archive is not None:
            loads["archive"], loads["archive_hydrate"] = archive.pop("loads"), archive.pop("hydrates")

    # The request overhead: fresh prompts (misses), served as the replay sends them.
    rest: dict[int, list[float]] = {}
    latency: dict[int, list[float]] = {}
    for n in [] if probe.prefill_only else overhead_lengths(plan, probe.context):
        for rep in range(runs):
            probe.clear(local)
            r = counted(probe.serve_timed(fresh(n)))
            if rep < plan.warmup or r.ttft_s is None:
                continue
            rest.setdefault(n // C, []).append(r.ttft_s - (r.queue_s or 0.0) - r.load_s - r.prefill_s
                                               - r.store_s)
            if r.client_ttft_s is not None:
                latency.setdefault(n, []).append(r.client_ttft_s - r.ttft_s)
    stores["rest"], stores["latency"] = rest, latency

    # Stores into full tiers: LMCache evicts inside the store (the disk backend scans its index
    # and removes a file per chunk). Fill the disk tier with fresh prompts until it evicts, then
    # time stores of k computed chunks, each of which now evicts one disk chunk.
    if "disk" in probe.tiers and plan.tiers and probe.disk_evictions() is not None:
        probe.clear(local)
        fill = min(probe.context or 4096, 4096) - 1
        start = probe.disk_evictions() or 0
        for _ in range(10_000):
            probe.serve(fresh(fill))
            if (probe.disk_evictions() or 0) > start:
                break
        full: dict[int, list[float]] = {}
        for k in plan.chunks:
            for rep in range(runs):
                r = counted(probe.serve(fresh(k * C + 1)))
                if rep >= plan.warmup:
                    full.setdefault(k, []).append(r.store_s)
        stores["store_full"] = full
        probe.clear(local)

    return _profile(probe, plan, scenario, seconds, loads, stores, chunk_bytes, notes,
                    cold_dropped=cold_dropped, archive=archive)


def _measure_archive(probe: Probe, plan: Plan, fresh: FreshPrompts, counted: Callable[[Served], Served],
                     local: list[str], notes: list[str]) -> dict[str, Any] | None:
    """For each chunk count ``k``: clear the local tiers and run a pass (so the chunks referenced
    before are held nowhere and nothing else is uploaded), serve a fresh prompt of ``k`` chunks,
    run a pass (it uploads them: compress + PUT, the pass's counters), clear the local tiers,
    check the lookup finds the chunks in the archive only, and serve the prompt again: its
    ``load_s`` is a load of ``k`` archived chunks (fetch + verify + decompress + copy), the
    archive counters' change over it the fetches' own seconds. Returns the samples and the
    totals of the timed runs, or ``None`` (with a note) where the chunks did not reach the
    archive."""
    C = probe.chunk_size
    out: dict[str, Any] = {"loads": {}, "hydrates": {}, "store": {}, "codec": None}
    totals = dict.fromkeys(("uploads", "raw_bytes", "stored_bytes", "compress_s", "upload_s", "requests",
                            *ARCHIVE_COUNTERS), 0.0)
    for k in plan.chunks:
        for rep in range(plan.warmup + plan.repeats):
            keep = rep >= plan.warmup
            probe.clear(local)
            probe.archive_pass()
            prompt = fresh(k * C + 1)
            what = f"archive load of {k} chunks"
            _expect(probe, prompt, [], what)
            _hits(counted(probe.serve(prompt)), "gpu", 0, what)
            did = probe.archive_pass()
            if "disk" in probe.tiers:
                probe.wait_on_disk(prompt[: k * C])    # else the CPU copy outlives the clear
            probe.clear(local)
            got = probe.lookup(prompt)
            if got != ["archive"] * k:
                errors = {kind: n for kind, n in (did.get("errors") or {}).items() if n}
                notes.append(f"archive: after a pass the {k} chunks of a request were in "
                             f"{_runs(got) or 'no tier'}, not all in the archive (the pass uploaded "
                             f"{did.get('uploads')}, errors {errors or 'none'}; a TTL that ends at once "
                             "does the same); load.archive, store.archive and the compression ratio "
                             "are the analytic default")
                return None
            before = probe.counters()
            r = counted(probe.serve(prompt))
            after = probe.counters()
            _hits(r, "archive", k * C, what)
            out["codec"] = did.get("codec") or out["codec"]
            if not keep:
                continue
            out["loads"].setdefault(k, []).append(r.load_s)
            out["hydrates"].setdefault(k, []).append(r.hydrate_s)
            totals["requests"] += 1
            for key in ARCHIVE_COUNTERS:
                totals[key] += after.get(key, 0.0) - before.get(key, 0.0)
            if did["uploads"] == k:      # else a background pass uploaded them first: no store sample
                out["store"].setdefault(k, []).append(did["compress_s"] + did["upload_s"])
                totals["uploads"] += k
                totals["raw_bytes"] += did["upload_bytes"]["raw"]
                totals["stored_bytes"] += did["upload_bytes"]["stored"]
                totals["compress_s"] += did["compress_s"]
                totals["upload_s"] += did["upload_s"]
    out["totals"] = totals
    return out


def _medians(samples: dict[int, list[float]]) -> tuple[list[int], list[float]]:
    ks = sorted(samples)
    return ks, [float(np.median(samples[k])) for k in ks]


def _rel(pred: float, meas: float) -> float:
    return abs(pred - meas) / meas if meas > 0 else float("nan")


def _profile(probe: Probe, plan: Plan, scenario: Any, seconds: np.ndarray,
             loads: dict[str, dict[int, list[float]]], stores: dict[str, dict[int, list[float]]],
             chunk_bytes: int | None, notes: list[str], *, cold_dropped: bool,
             archive: dict[str, Any] | None = None) -> Calibration:
    C = probe.chunk_size
    new = np.asarray(plan.new_tokens, np.float64)
    cached = np.asarray(plan.cached_tokens, np.float64)
    nn, cc = np.meshgrid(new, cached, indexing="ij")
    const, per_token, attn = fit_analytic(nn, cc, seconds)
    analytic = AnalyticProfile(const, per_token, attn)
    a_pred = analytic.prefill_array(nn.ravel(), cc.ravel()).reshape(seconds.shape)
    a_err = np.abs(a_pred - seconds) / np.maximum(seconds, 1e-12)
    loo = leave_one_out(new, cached, seconds)

    prefill_rows = [{"new": int(new[i]), "cached": int(cached[j]), "measured_s": float(seconds[i, j]),
                     "table_s": float(seconds[i, j]), "table_loo_rel": float(loo[i, j]),
                     "analytic_s": float(a_pred[i, j]), "analytic_rel": float(a_err[i, j])}
                    for i, j in itertools.product(range(len(new)), range(len(cached)))]

    # Defaults for what is not measured: the analytic profile of the scenario's tiers.
    block_bytes = chunk_bytes or C * scenario.model.bytes_per_token
    archive_bytes = int(block_bytes / scenario.tiers.archive.compression_ratio)
    default: Transfers = AnalyticProfile(0.0, 0.0, 0.0).transfers(scenario, block_bytes, archive_bytes)
    load_rows: list[dict[str, Any]] = []
    fitted: dict[str, dict[str, Any]] = {}
    for label, samples in [*loads.items(), *stores.items()]:
        if not samples:
            continue
        ks, med = _medians(samples)
        b0, b1 = fit_line(ks, med)
        errs = [_rel(b0 + b1 * k, m) for k, m in zip(ks, med, strict=True)]
        fitted[label] = {"chunks": ks, "median_s": med, "per_request_s": b0, "per_block_s": b1,
                         "fit_rel_error": errs}
        load_rows += [{"what": label, "chunks": k, "measured_s": m, "fit_s": b0 + b1 * k, "rel": e}
                      for k, m, e in zip(ks, med, errs, strict=True)]

    def entry(label: str, lat: float, per_block: float) -> dict[str, float]:
        f = fitted.get(label)
        return ({"per_block_s": f["per_block_s"], "per_request_s": f["per_request_s"]} if f
                else {"per_block_s": per_block, "per_request_s": lat})

    load: dict[str, Any] = {"gpu": entry("gpu", 0.0, 0.0)}
    store: dict[str, Any] = {}
    if "cpu" in probe.tiers:
        load["cpu"] = entry("cpu", default.cpu_lat, default.cpu_per_block)
        store["cpu"] = {"per_block_s": fitted["store"]["per_block_s"] if "store" in fitted
                        else default.cpu_write_per_block}
    disk_label = "disk_cold" if "disk_cold" in fitted else "disk_warm"
    load["disk"] = entry(disk_label, default.disk_lat, default.disk_per_block)
    store["disk"] = {"per_block_s": fitted["disk_write"]["per_block_s"] if "disk_write" in fitted
                     else default.disk_write_per_block}
    load["archive"] = entry("archive", default.arch_lat, default.arch_per_block)
    store["archive"] = {"per_block_s": default.arch_compress_per_block + default.arch_upload_per_block}
    measured_archive = _archive_summary(archive)
    if measured_archive is not None and measured_archive["uploads"]:
        store["archive"] = {"per_block_s": measured_archive["store_s_per_chunk"]}
    request = _request_section(fitted)
    if request:
        notes.append(
            "request: the engine's time per request besides loads, prefill and stores: per_request_s + "
            "per_block_s x chunks is the worker's rest (ttft - queue - load - prefill - store of fresh "
            "prompts) plus the store's intercept; store_per_block_s is the store slope of computed "
            "chunks, admit_per_block_s that of chunks loaded from the CPU tier; disk_evict_per_block_s "
            "is the store slope with the tiers full (every stored chunk evicts one from disk) minus "
            "store_per_block_s; " + ("latency_* is the client's TTFT minus the server's (streamed, one "
                                     "token, as simkv replay sends), by prompt tokens (calibration."
                                     "request.latency's chunks are tokens)" if "latency" in fitted else
                                     "measured in-process (no HTTP): latency_* is not measured"))

    if probe.prefill_only:
        pass                        # the probe's own notes say what was not measured
    elif "disk" not in probe.tiers:
        notes.append("disk: the engine has no disk tier; load.disk and store.disk are the analytic "
                     "default of the scenario's tiers.disk")
    else:
        notes.append(f"load.disk is the cold read: {probe.disk_cold}"
                     + ("" if cold_dropped else " (the page cache could not be dropped here)")
                     + "; the warm read (file in the page cache) is calibration.load.disk_warm. "
                     "store.disk is the per-chunk slope of the time from the request's end until "
                     "LMCache's asynchronous disk writes were done")
    if "archive" not in probe.tiers and not probe.prefill_only:
        notes.append("archive: not measured (the engine has no archive tier); load.archive and "
                     "store.archive are the analytic default of the scenario's tiers.archive "
                     "(compression ratio, compress / decompress and network speeds not measured)")
    elif measured_archive is not None:
        notes += _archive_notes(probe, measured_archive)
    notes.append(probe.gpu_note)
    if "cpu" in probe.tiers:
        notes.append("store.cpu is the per-chunk slope of the engine's store_s (GPU cache + LMCache "
                     "CPU copy, disk writes queued)")

    info = probe.describe()
    today = _dt.date.today().isoformat()
    measured_on = ", ".join(f"{k} {v}" for k, v in info.items() if k != "device")
    measured_on = f"{info.get('device', 'unknown device')}; {measured_on}; {today}; simkv calibrate"
    finite = loo[np.isfinite(loo)]
    doc: dict[str, Any] = {
        "version": PROFILE_VERSION, "kind": "table", "model": str(info.get("model", "unknown")),
        "block_size": C, "measured_on": measured_on,
        "fit_error": {
            "method": "leave-one-out: each grid point predicted by the table without its row and "
                      "without its column (interpolated between the neighbours, extrapolated at an "
                      "edge), the larger relative error; the table itself is exact at grid points",
            "max_rel": float(finite.max()) if finite.size else None,
            "prefill_rel": _nan_none(loo),
            "analytic_max_rel": float(a_err.max()),
        },
        "notes": "; ".join(notes),
        "calibration": {
            "date": today, **{k: str(v) for k, v in info.items()},
            "plan": {"new_tokens": plan.new_tokens, "cached_tokens": plan.cached_tokens,
                     "chunks": plan.chunks, "repeats": plan.repeats, "warmup": plan.warmup,
                     "seed": plan.seed, "statistic": "median",
                     **({"salt": probe.prompt_salt} if probe.prompt_salt is not None else {})},
            **({} if probe.prefill_only else {"chunk_bytes": int(block_bytes)}),   # vLLM: not known
            "analytic_fit": {"const_s": const, "per_token_s": per_token, "attn_s": attn,
                             "formula": "const_s + per_token_s*n + attn_s*n*(n+c), least squares on "
                                        "relative residuals, constants >= 0",
                             "prefill_rel": a_err.tolist()},
            "load": {k: v for k, v in fitted.items() if k not in _STORE_LABELS},
            "store": {k: v for k, v in fitted.items() if k in ("store", "disk_write", "admit", "store_full")},
            "request": {k: v for k, v in fitted.items() if k in ("rest", "latency")},
        },
        "prefill": {"new_tokens": [int(v) for v in new], "cached_tokens": [int(v) for v in cached],
                    "seconds": seconds.tolist()},
        "load": load,
        "store": store,
        **({"request": request} if request else {}),
    }
    if measured_archive is not None:
        doc["calibration"]["archive"] = measured_archive
        if measured_archive["uploads"]:
            doc["archive"] = {"compression_ratio": measured_archive["compression_ratio"]}
    return Calibration(doc, prefill_rows, load_rows, notes)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _archive_summary(archive: dict[str, Any] | None) -> dict[str, Any] | None:
    """The archive's totals over the timed runs and what follows from them (``calibration.archive``):
    ``compression_ratio = raw / stored`` bytes of the uploads, ``store_s_per_chunk = (compress_s +
    upload_s) / uploads``, ``compress_gbps = raw / compress_s / 1e9``, ``decompress_gbps = fetches
    · raw per chunk / decompress_s / 1e9`` (decompress + length and SHA-256 check, per fetch
    thread), ``fetch_s_per_chunk = fetch_s / fetches`` (the GETs, concurrent within a request)."""
    if archive is None:
        return None
    t = archive["totals"]
    uploads, fetches = int(t["uploads"]), int(t["archive_fetches"])
    raw_chunk = _ratio(t["raw_bytes"], uploads)
    return {
        "codec": archive["codec"], "requests": int(t["requests"]), "uploads": uploads,
        "raw_bytes": int(t["raw_bytes"]), "stored_bytes": int(t["stored_bytes"]),
        "compression_ratio": _ratio(t["raw_bytes"], t["stored_bytes"]),
        "compress_s": t["compress_s"], "upload_s": t["upload_s"],
        "store_s_per_chunk": _ratio(t["compress_s"] + t["upload_s"], uploads),
        "compress_s_per_chunk": _ratio(t["compress_s"], uploads),
        "upload_s_per_chunk": _ratio(t["upload_s"], uploads),
        "compress_gbps": _ratio(t["raw_bytes"] / GB, t["compress_s"]),
        "fetches": fetches, "fetch_bytes": int(t["archive_fetch_bytes"]),
        "fetch_s": t["archive_fetch_s"], "decompress_s": t["archive_decompress_s"],
        "fetch_s_per_chunk": _ratio(t["archive_fetch_s"], fetches),
        "decompress_s_per_chunk": _ratio(t["archive_decompress_s"], fetches),
        "decompress_gbps": (_ratio(fetches * raw_chunk / GB, t["archive_decompress_s"])
                            if raw_chunk is not None else None),
        "store_per_chunk": {k: float(np.median(v)) / k for k, v in sorted(archive["store"].items())},
    }


def _archive_notes(probe: Probe, a: dict[str, Any]) -> list[str]:
    def gbps(x: float | None) -> str:
        return "-" if x is None else f"{x:.3g} GB/s"

    notes = ["load.archive is the engine's load_s of a request whose chunks were in the archive only "
             "(uploaded by an archive pass, then the local tiers cleared): fetch (concurrent GETs) + "
             "verify + decompress + copy into the KV, fitted per_request_s + chunks x per_block_s; "
             "hydrate_s, the archive's part of it, is calibration.load.archive_hydrate"]
    if a["uploads"]:
        notes.append(f"store.archive is compress + upload per chunk over {a['uploads']} uploads (the archive "
                     "worker's compress_s + upload_s; a pass uploads one chunk after another); "
                     f"archive.compression_ratio {a['compression_ratio']:.4g} is raw / stored bytes of "
                     f"those uploads with codec {a['codec']}; compress {gbps(a['compress_gbps'])}, "
                     f"decompress {gbps(a['decompress_gbps'])} (with the length and SHA-256 check, per "
                     "fetch thread) are in calibration.archive")
    else:
        notes.append("store.archive and the compression ratio: not measured (a background pass uploaded "
                     "the chunks before the calibration's own); store.archive is the analytic default")
    notes.append(f"the archive was {probe.archive_where}: against another store (another region, a "
                 "real network) fetches and uploads take other times")
    if probe.random_weights:
        notes.append("the compression ratio is of a random-weight model's KV (random token prompts): it "
                     "compresses differently from a trained model's KV, whose values have structure a "
                     "codec can use; calibrate with the real checkpoint (--model PATH) before trusting "
                     "archive.compression_ratio")
    else:
        notes.append("the compression ratio is of the model's KV on random token prompts; real prompts' "
                     "KV may compress differently")
    if isinstance(probe, InProcessProbe):
        notes.append("in-process the archive's TTL policy is a fixed TTL of "
                     f"{CALIBRATION_TTL_S:.0f} s (TTLs are the objects' metadata; the times do not "
                     "depend on them), and the objects written were deleted afterwards")
    return notes


_STORE_LABELS = ("store", "disk_write", "admit", "store_full", "rest", "latency")


def _request_section(fitted: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The profile's ``request`` section from the fitted lines (empty: nothing measured)."""
    if "rest" not in fitted:
        return {}
    rest, store = fitted["rest"], fitted.get("store", {})
    out = {"per_request_s": rest["per_request_s"] + store.get("per_request_s", 0.0),
           "per_block_s": rest["per_block_s"],
           "store_per_block_s": store.get("per_block_s", 0.0),
           "admit_per_block_s": fitted.get("admit", {}).get("per_block_s", 0.0)}
    if "store_full" in fitted:
        slope = fitted["store_full"]["per_block_s"]
        out["disk_evict_per_block_s"] = max(slope - out["store_per_block_s"], 0.0)
    if "latency" in fitted:
        out |= {"latency_const_s": fitted["latency"]["per_request_s"],
                "latency_per_token_s": fitted["latency"]["per_block_s"]}
    return out


def _nan_none(a: np.ndarray) -> list[list[float | None]]:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in a]


def write_profile(cal: Calibration, path: Path) -> None:
    """Write the profile document as YAML (atomically), with a header saying what it is."""
    import yaml

    from simkv.fileio import atomic_write

    fit = cal.doc["calibration"]["analytic_fit"]
    worst = cal.doc["fit_error"]["analytic_max_rel"]
    header = (f"# Hardware profile measured by `simkv calibrate` (kind: table, version {PROFILE_VERSION}); "
              "see docs/system.md, \"Calibrating a profile\".\n"
              f"# {cal.doc['measured_on']}\n"
              f"# Analytic fit for comparison: prefill(n, c) = {fit['const_s']:.4g} + "
              f"{fit['per_token_s']:.4g}*n + {fit['attn_s']:.4g}*n*(n+c) (max relative error {worst:.1%})"
              "\n# prefill.seconds: one row per new_tokens, one column per cached_tokens.\n")
    text = header + yaml.safe_dump(cal.doc, sort_keys=False, width=110)
    atomic_write(path, lambda tmp: tmp.write_text(text))


@contextlib.contextmanager
def open_probe(*, engine: str | None, api_key: str | None, scenario: Any, model: str, device: str,
               disk_path: str | Path | None, archive: str | None = None,
               archive_endpoint: str | None = None, block_size: int | None = None):
    """The probe the CLI asked for, closed on exit."""
    probe: Probe = (http_probe(engine, api_key, block_size) if engine else
                    InProcessProbe(scenario, model, device, disk_path, archive, archive_endpoint))
    try:
        yield probe
    finally:
        probe.close()


# -- step times (vLLM's continuous batching) ----------------------------------------------

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
    :class:`~simkv.model.hardware.StepTime`): one row ``[1, P, D, K, A, C]`` per point."""
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
    and once every stream has its first token (all decode), read ``tokens`` more from each and
    close it (vLLM aborts the request). Returns the gaps between consecutive tokens of a stream
    that lie while all of them decoded (from the last first token to the first close), and the
    KV tokens of the step of each gap (Σ over the streams of prompt + tokens received so far)."""
    import json
    import threading

    d = len(prompts)
    times: list[list[float]] = [[] for _ in range(d)]
    first = [threading.Event() for _ in range(d)]
    all_decoding = threading.Event()
    closed: list[float] = []
    errors: list[str] = []

    def stream(i: int) -> None:
        body = {"model": probe.model_name, "prompt": prompts[i], "stream": True, "ignore_eos": True,
                "temperature": 0, "max_tokens": (probe.context or 4096) - len(prompts[i])}
        try:
            with probe.client.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise CalibrationError(f"HTTP {r.status_code}: {r.text[:200]}")
                extra = 0
                for line in r.iter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    if json.loads(line[5:]).get("choices"):
                        times[i].append(time.perf_counter())
                        first[i].set()
                        if all_decoding.is_set():
                            extra += 1
                            if extra >= tokens:
                                break
            closed.append(time.perf_counter())     # list.append is atomic
        except Exception as exc:      # reported below, after the other streams end
            errors.append(str(exc))
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
