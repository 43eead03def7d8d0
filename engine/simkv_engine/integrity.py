"""What the engine checks around LMCache: every chunk read back from the disk tier, every disk
write, the disk folder before LMCache starts, LMCache's noisy allocator warnings, and the
default disk folder's life.

**Disk integrity.** LMCache 0.5.6's disk backend writes a chunk's bytes to a file and reads them
back with no check: a damaged, truncated or vanished file is served as a hit (and would then be
promoted to the CPU tier, admitted to the GPU cache and uploaded to the archive under a new,
valid SHA-256). :class:`DiskGuard` records the SHA-256 of each chunk's bytes as the disk worker
writes it (off the request path) and verifies every read: the engine's loads (LMCache's
``batched_get_blocking`` / ``get_blocking`` of the disk backend) and the archive worker's direct
file read. A chunk whose file is unreadable, of the wrong length, or whose digest differs (or
that has no digest) is a miss, as is every chunk after it in the same read (prefix semantics:
the rest is recomputed); the bad entry is removed from the disk tier and counted in
``disk_errors{kind}`` (``unreadable``, ``length``, ``checksum``, ``unverified``). Nothing read
from disk reaches the CPU tier, the GPU cache or the archive unverified. The CPU tier and the
GPU cache are the process's own memory, filled only with computed or verified chunks, and are
not re-hashed on reads.

**Disk writes.** LMCache lets an exception of a disk write (``ENOSPC``, ``EIO``) escape its I/O
thread: the chunk stays "in flight" forever, its CPU copy stays pinned, and the disk's budget
counts it; once the CPU pool is full of such pins every allocation busy-waits and the engine
freezes. The guard catches the failure, releases all of that (the chunk is simply not on disk),
removes the partial file, counts ``disk_errors{write}`` and reports the engine degraded until a
later write succeeds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from simkv.core.errors import SimkvError
from simkv.core.fileio import make_dir
from simkv_engine.lmcache_glue import disk_file_path, disk_read_pool

log = logging.getLogger(__name__)

#: The kinds a disk-tier failure is counted under in ``disk_errors``.
DISK_ERROR_KINDS = ("unreadable", "length", "checksum", "unverified", "write")


def check_disk_folder(path: str | Path) -> Path:
    """``path`` as a folder LMCache's disk tier can use: created if missing, then probed with a
    small file (a read-only filesystem refuses even root). A :class:`SimkvError` naming the path
    otherwise, raised before LMCache starts (LMCache would fail inside its init and leave a
    thread running)."""
    folder = make_dir(Path(path), "disk tier's folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".simkv-probe-"):
            pass
    except OSError as exc:
        raise SimkvError(f"{folder}: cannot write in the disk tier's folder: "
                         f"{exc.strerror or exc}") from None
    return folder


class DiskGuard:
    """Checksums and write-failure handling on one LMCache ``LocalDiskBackend`` (installed by
    wrapping the backend instance's ``async_save_bytes_to_disk``, ``batched_get_blocking``,
    ``get_blocking`` and ``remove``; see the module docstring). ``stored_chunks``: chunks whose
    write landed (the engine's ``bytes_stored{disk}``)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.digests: dict[Any, tuple[int, bytes]] = {}    # key -> (length, sha256) of its file
        self.errors = dict.fromkeys(DISK_ERROR_KINDS, 0)
        self.stored_chunks = 0
        self.write_error: str | None = None                # the last write failed: why
        self._lock = threading.Lock()
        self._save = backend.async_save_bytes_to_disk
        self._remove = backend.remove
        backend.async_save_bytes_to_disk = self.save
        backend.batched_get_blocking = self.get_many
        backend.get_blocking = lambda key: self.get_many([key])[0]
        backend.remove = self.forget

    # -- writes -------------------------------------------------------------------------------
    def save(self, key: Any, memory_obj: Any, on_complete_callback: Callable | None = None) -> None:
        """LMCache's disk write of one chunk (its I/O thread), digest first; a failure leaves
        the chunk off the disk with nothing pinned or charged."""
        b = self.backend
        buffer = memory_obj.byte_array
        self.digests[key] = (len(buffer), hashlib.sha256(buffer).digest())
        size = memory_obj.get_physical_size()
        try:
            self._save(key=key, memory_obj=memory_obj, on_complete_callback=on_complete_callback)
        except OSError as exc:      # only the file write does I/O: nothing after it has run
            self.digests.pop(key, None)
            path = disk_file_path(b, key)
            with contextlib.suppress(OSError):
                os.unlink(path)
            b.usage -= len(buffer)
            memory_obj.ref_count_down()
            with b.disk_lock:
                b.current_cache_size -= size
                b.cache_policy.update_on_force_evict(key)
            b.disk_worker.remove_put_task(key)
            why = f"{path}: {exc.strerror or exc}"
            with self._lock:
                self.errors["write"] += 1
                first = self.write_error is None
                self.write_error = why
            if first:
                log.warning("disk tier: a write failed, the chunk is not stored (%s); requests go "
                            "on by recompute", why)
            return
        with self._lock:
            self.stored_chunks += 1
            if self.write_error is not None:
                log.warning("disk tier: writes succeed again")
            self.write_error = None

    def forget(self, key: Any, force: bool = True) -> bool:
        """LMCache's ``remove`` (evictions, clears), dropping the key's digest too."""
        self.digests.pop(key, None)
        return self._remove(key, force)

    def drop(self, key: Any) -> bool:
        """Remove ``key`` from the disk tier (file, entry, budget); whether it was there."""
        b = self.backend
        with b.disk_lock:
            meta = b.dict.get(key)
        if meta is None:
            return False
        try:
            removed = b.remove(key, force=True)
        except OSError:          # the file was already gone: the entry is removed all the same
            removed = True
        if removed:
            with b.disk_lock:
                b.current_cache_size -= meta.size          # LMCache's remove leaves it to its caller
        return removed

    # -- reads --------------------------------------------------------------------------------
    def _bad(self, key: Any, kind: str, detail: str) -> None:
        with self._lock:
            self.errors[kind] += 1
        log.warning("disk tier: chunk %s is not served (%s: %s); it is recomputed", key.chunk_hash,
                    kind, detail)
        self.drop(key)

    def _check(self, key: Any, path: str, buffer: Any) -> tuple[str, str] | None:
        """Fill ``buffer`` from ``path`` and verify it: ``None``, or (kind, detail)."""
        want = self.digests.get(key)
        if want is None:
            return "unverified", "no digest was recorded for it"
        view = memoryview(buffer).cast("B")
        if len(view) != want[0]:
            return "length", f"{len(view)} bytes expected by LMCache, {want[0]} written"
        try:
            with open(path, "rb", buffering=0) as f:
                got = 0
                while got < len(view) and (n := f.readinto(view[got:])):
                    got += n
                extra = f.read(1)
        except OSError as exc:
            return "unreadable", f"{path}: {exc.strerror or exc}"
        if got != len(view) or extra:
            return "length", f"{path}: {'more than' if extra else got} of {len(view)} bytes"
        if hashlib.sha256(view).digest() != want[1]:
            return "checksum", f"{path}: the bytes differ from those written"
        return None

    def get_many(self, keys: list) -> list:
        """The disk backend's read of ``keys`` (memory objects in LMCache's CPU pool), verified:
        ``None`` from the first chunk missing, unreadable or damaged on (prefix semantics).
        Concurrent reads on LMCache's read pool; the eviction order is touched for the chunks
        served, as LMCache's own read does."""
        b = self.backend
        with b.disk_lock:
            metas = [b.dict.get(key) for key in keys]
        objs: list = []
        for meta in metas:
            if meta is None:
                break
            obj = b.local_cpu_backend.allocate(meta.shape, meta.dtype, meta.fmt)
            if obj is None:
                break
            objs.append(obj)
        n = len(objs)
        paths = [m.path for m in metas[:n]]
        bufs = [o.byte_array for o in objs]
        if n > 1:
            checks = list(disk_read_pool(b).map(self._check, keys[:n], paths, bufs))
        else:
            checks = [self._check(k, p, buf) for k, p, buf in zip(keys[:n], paths, bufs, strict=True)]
        good = next((i for i, c in enumerate(checks) if c is not None), n)
        for obj in objs[good:]:
            obj.ref_count_down()
        if good < n:
            self._bad(keys[good], *checks[good])    # type: ignore[misc]
        out: list = [None] * len(keys)
        with b.disk_lock:
            for i in range(good):
                objs[i].metadata.cached_positions = metas[i].cached_positions
                if keys[i] in b.dict:
                    b.cache_policy.update_on_hit(keys[i], b.dict)
                out[i] = objs[i]
        return out

    def read_bytes(self, key: Any) -> bytes | None:
        """The verified bytes of ``key``'s file (``None``: not on disk, or bad: then dropped and
        counted), without touching LMCache's eviction order or CPU pool (the archive worker's
        read)."""
        b = self.backend
        with b.disk_lock:
            meta = b.dict.get(key)
        want = self.digests.get(key)
        if meta is None:
            return None
        buf = bytearray(want[0] if want is not None else 0)
        bad = self._check(key, meta.path, buf)
        if bad is not None:
            self._bad(key, *bad)
            return None
        return bytes(buf)

    def counts(self) -> tuple[dict[str, int], int, str | None]:
        """(errors by kind, chunks stored, the last write's failure or ``None``)."""
        with self._lock:
            return dict(self.errors), self.stored_chunks, self.write_error


# -- LMCache's log ------------------------------------------------------------------------------
#: Messages (templates) that can come by the thousand: LMCache's, repeated in a busy loop while
#: its CPU pool is full, and ours, one per bad chunk of a damaged disk.
_NOISY = {"lmcache.v1.memory_management": "Failed to allocate memory block",
          "lmcache.v1.storage_backend.local_cpu_backend": "No eviction candidates found",
          __name__: "disk tier: chunk"}


class _RateLimit(logging.Filter):
    """Counts LMCache's busy-loop warnings and passes at most one of each every ``every_s``
    seconds, saying how many were held back."""

    def __init__(self, prefix: str, every_s: float = 10.0) -> None:
        super().__init__()
        self.prefix = prefix
        self.every_s = every_s
        self.count = 0
        self._held = 0
        self._last = -float("inf")
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        with self._lock:
            self.count += 1
            now = time.monotonic()
            if now - self._last < self.every_s:
                self._held += 1
                return False
            held, self._held, self._last = self._held, 0, now
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {self.every_s:g} s not shown)"
        return True


_filters: dict[str, _RateLimit] = {}


def lmcache_alloc_failures() -> int:
    """LMCache's failed CPU-pool allocations since the filters were installed (process-wide)."""
    install_log_filters()
    return _filters["lmcache.v1.memory_management"].count


def install_log_filters() -> None:
    """Count and rate-limit the warnings of :data:`_NOISY` (idempotent)."""
    for name, prefix in _NOISY.items():
        if name not in _filters:
            _filters[name] = _RateLimit(prefix)
            logging.getLogger(name).addFilter(_filters[name])


# -- the default disk folder ---------------------------------------------------------------------
_PREFIX = "simkv-disk-"
_OWNER = ".simkv-owner.lock"


def remove_stale_disk_folders(root: str | Path | None = None) -> list[Path]:
    """Remove the default disk folders (``simkv-disk-*`` in the temporary directory) whose owner
    process is gone: each live engine holds an ``flock`` on its folder's lock file, released by
    the kernel when the process dies however it dies. Folders without a lock file (made by
    another program, or an older simkv) are left alone. Returns the folders removed."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(_PREFIX + "*"):
        lock = folder / _OWNER
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue                          # its engine is alive
        finally:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


@contextlib.contextmanager
def default_disk_folder(root: str | Path | None = None) -> Iterator[Path]:
    """A fresh ``simkv-disk-*`` folder for LMCache's disk tier, removed when the block exits
    (normally or by an exception). Stale ones of dead processes are removed first, so a killed
    engine's folder does not outlive the next start."""
    for folder in remove_stale_disk_folders(root):
        log.info("removed %s, the disk folder of an engine that is gone", folder)
    folder = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=root))
    fd = os.open(folder / f"{_OWNER}.new", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(folder / f"{_OWNER}.new", folder / _OWNER)   # visible to others once locked
        yield folder
    finally:
        os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
