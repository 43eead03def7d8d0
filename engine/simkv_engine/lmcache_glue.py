"""Every place the engine reaches past LMCache 0.5.6's API into its internals, one small function
each, so that a new LMCache version is checked in this file alone. The API the engine uses
elsewhere: ``LMCacheEngine.store`` / ``retrieve`` / ``clear`` / ``is_healthy``, the storage
backends' ``contains`` / ``get_blocking`` / ``submit_put_task`` / ``remove``, and the standalone
manager's constructor, ``post_init`` and ``stop_services``. What is here: private attributes (a
leading underscore) and the internal state of LMCache's storage manager, local backends, cache
policies and disk worker. (:class:`~simkv_engine.integrity.DiskGuard` wraps the disk backend
itself and keeps its own reads of that backend's bookkeeping.) Imports nothing of simkv.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Executor
from typing import Any

#: The engine's LMCache tiers and the names LMCache's storage manager files their backends under.
BACKENDS = {"cpu": "LocalCPUBackend", "disk": "LocalDiskBackend", "remote": "RemoteBackend"}


def local_backends(lmc: Any) -> dict[str, Any]:
    """LMCache's CPU, disk and remote backends by tier (``None`` where LMCache has none): the engine's
    ``StorageManager.storage_backends`` (an ordered dict by backend class name), which LMCache
    keeps for its own dispatch and exposes no accessor for."""
    assert lmc.storage_manager is not None
    return {tier: lmc.storage_manager.storage_backends.get(name) for tier, name in BACKENDS.items()}


def chunk_keys(lmc: Any, tokens: list[int]) -> list:
    """LMCache's ``CacheEngineKey`` of each chunk of ``tokens`` (full chunks only), as its store
    and retrieve compute them: the engine's ``token_database.process_tokens``, the only way to
    know a chunk's key (and so ask a backend's ``contains``) before reading it."""
    return [key for _, _, key in lmc.token_database.process_tokens(tokens)]


def count_evictions(backend: Any, tier: str, counts: dict[str, int], lock: threading.Lock) -> None:
    """Count the chunks LMCache's ``backend`` evicts into ``counts[tier]``. LMCache 0.5.6 keeps no
    per-backend eviction total (its stats monitor has an interval count for the CPU backend only,
    process-wide and reset by whoever reads it), but both local backends pick every victim with
    their cache policy's ``get_evict_candidates`` and nothing else calls it (``clear`` and
    ``remove`` do not), so the engine wraps that method on the backend's own policy instance."""
    policy = backend.cache_policy
    pick = policy.get_evict_candidates

    def counted(*args: Any, **kwargs: Any) -> Any:
        keys = pick(*args, **kwargs)
        with lock:
            counts[tier] += len(keys or ())
        return keys

    policy.get_evict_candidates = counted


def touch_cpu(cpu: Any, key: Any) -> None:
    """An access to ``key`` in the CPU backend's eviction order, if it holds it: the backend's
    ``cache_policy.update_on_hit`` over its ``hot_cache`` under its ``cpu_lock``. LMCache's own
    CPU read does not touch the policy; the simulator's lookup does, so the engine does it."""
    with cpu.cpu_lock:
        if key in cpu.hot_cache:
            cpu.cache_policy.update_on_hit(key, cpu.hot_cache)


def remote_connected(remote: Any) -> bool:
    """Whether the remote backend holds a connection to its server: its ``connection`` (LMCache
    logs a failed connect, leaves it ``None`` and then answers every call as a miss)."""
    return remote.connection is not None


def cpu_chunks(cpu: Any) -> int:
    """Chunks the CPU backend holds now: its ``hot_cache`` (no counting API in 0.5.6)."""
    return len(cpu.hot_cache)


def disk_chunks(disk: Any) -> int:
    """Chunks the disk backend holds now: its ``dict`` of file metadata (no counting API)."""
    return len(disk.dict)


def disk_keys(disk: Any) -> list:
    """The keys of the chunks the disk backend holds now (a copy of its ``dict``'s keys): the
    engine removes them one by one, as 0.5.6's disk backend has no ``clear``."""
    return list(disk.dict)


def wait_disk_writes(disk: Any, timeout_s: float, poll_s: float) -> None:
    """Wait (at most ``timeout_s``, polling every ``poll_s``) until the disk backend's pending
    asynchronous writes are done: its ``disk_worker.put_tasks`` (LMCache offers no wait)."""
    deadline = time.monotonic() + timeout_s
    while disk.disk_worker.put_tasks and time.monotonic() < deadline:
        time.sleep(poll_s)


def disk_file_path(disk: Any, key: Any) -> str:
    """The file of ``key`` in the disk backend's folder: its private ``_key_to_path`` (the
    engine removes a partly written file after a failed write)."""
    return disk._key_to_path(key)


def disk_read_pool(disk: Any) -> Executor:
    """The disk backend's own read threads, its private ``_read_thread_pool``: the engine's
    verified reads of several chunks run there, as LMCache's own batched read does."""
    return disk._read_thread_pool


def stop_event_loops(threads: set[threading.Thread]) -> None:
    """Stop the asyncio loops LMCache started in ``threads`` and left running after a failed
    init (its storage manager's loop thread is not a daemon: the process would never exit). The
    loop is found among the thread's private ``_args`` (LMCache keeps no handle the engine can
    reach once its init failed)."""
    for thread in threads:
        args = getattr(thread, "_args", ())
        loop = next((a for a in args if isinstance(a, asyncio.AbstractEventLoop)), None)
        if loop is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
