"""The in-process probe: the model and :class:`~simkv_engine.engine.KVEngine` built here from a
scenario, as the server builds them, with LMCache's disk files in a temporary folder (dropped
from the page cache for cold reads) and, with an archive tier, the archive in a folder or S3
prefix of its own, passes run on demand under a fixed TTL, deleted at close."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simkv_engine.calibrate.plan import CalibrationError
from simkv_engine.calibrate.probe import ARCHIVE_COUNTERS, Probe, Served

log = logging.getLogger(__name__)

#: The archive's fixed TTL in an in-process calibration (a day: nothing expires meanwhile).
CALIBRATION_TTL_S = 86400.0


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
        self.tiers = tuple(tier.name for tier in e.tiers)      # the archive's included
        fs = _fs_type(self.disk_path)
        self.disk_cold = (f"after fsync + posix_fadvise(DONTNEED) on LMCache's disk files (filesystem "
                          f"{fs}; the kernel drops their clean pages from the page cache, so the read "
                          "goes to the device" + ("; on tmpfs the files live in memory, so cold is not "
                                                  "a device read" if fs == "tmpfs" else "") + ")")
        self._torch = torch
        self.wait_clears = False
        self.gpu_chunks = e.gpu_cache.capacity

    def _archive_options(self, scenario: Any, archive: str | None,
                         endpoint: str | None) -> tuple[Any, Any]:
        """The scenario with the calibration's fixed TTL, and where its archive goes."""
        from simkv.core.scenario import TTLConfig
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
        from simkv_engine.backends import Chunk

        disk = self.engine.tier("disk")
        assert disk is not None
        keys = self.engine.chunk_keys(tokens)
        t0 = time.perf_counter()
        while not all(disk.contains(Chunk(k)) for k in keys):
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
