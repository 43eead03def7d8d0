"""Where sweep cells run: in-process, a local process pool, or Ray.

Every backend runs the same function on each cell, :func:`execute_cell`, which calls
:func:`simkv.api.run` and turns any exception into an ``error`` record, so one failing cell
never stops a sweep. Workers read the trace once (the pool's initializer reads the Parquet
file; a Ray worker fetches the object-store copy on its first task and keeps it), and they
never touch the output directory: the driver writes each outcome as it arrives, which also
works when Ray workers run on other machines.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from simkv.api import Result, run
from simkv.core.errors import SimkvError
from simkv.core.scenario import Scenario
from simkv.sweep.grid import Cell
from simkv.sweep.results import CellRecord
from simkv.traces.schema import Trace, read_trace


@dataclass
class CellOutcome:
    """A cell's record, plus its full :class:`Result` when per-cell outputs are wanted."""

    record: CellRecord
    result: Result | None = None


@dataclass(frozen=True)
class CellTask:
    """Everything a worker needs for one cell besides the trace."""

    base: Scenario
    cell: Cell
    fingerprint: str
    keep_result: bool


OnDone = Callable[[CellOutcome], None]


def execute_cell(task: CellTask, trace: Trace) -> CellOutcome:
    """Run one cell; an exception becomes an ``error`` record carrying its message."""
    cell = task.cell
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = run(task.base, trace, overrides=list(cell.overrides))  # type: ignore[arg-type]
    except Exception as exc:
        msg = str(exc) if isinstance(exc, SimkvError) else f"{type(exc).__name__}: {exc}"
        rec = CellRecord(cell.id, [list(o) for o in cell.overrides], task.fingerprint, "error",
                         error=msg, wall_s=time.perf_counter() - t0,
                         cpu_s=time.process_time() - c0, traceback=traceback.format_exc())
        return CellOutcome(rec)
    rec = CellRecord(cell.id, [list(o) for o in cell.overrides], task.fingerprint, "ok",
                     summary=result.summary, wall_s=time.perf_counter() - t0,
                     cpu_s=time.process_time() - c0)
    return CellOutcome(rec, result if task.keep_result else None)


def failed_outcome(task: CellTask, exc: BaseException) -> CellOutcome:
    """An ``error`` record for a cell whose worker died (crash, out of memory)."""
    rec = CellRecord(task.cell.id, [list(o) for o in task.cell.overrides], task.fingerprint,
                     "error", error=f"worker failed: {type(exc).__name__}: {exc}")
    return CellOutcome(rec)


def driver_sys_path() -> list[str]:
    """The driver's import path, absolute, for workers to extend theirs with, so
    ``module:function`` plug-ins named by a scenario import there as they do here."""
    return [os.path.abspath(p or os.curdir) for p in sys.path]


def _extend_sys_path(paths: Sequence[str]) -> None:
    for p in paths:
        if p not in sys.path and os.path.isdir(p):
            sys.path.append(p)


def available_cpus() -> int:
    """CPUs this process may use (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


# -- in-process ------------------------------------------------------------------------


def run_inline(tasks: Sequence[CellTask], trace: Trace, on_done: OnDone) -> None:
    """One cell after the other in this process (``workers=1``)."""
    for task in tasks:
        on_done(execute_cell(task, trace))


# -- local process pool ----------------------------------------------------------------

_WORKER_TRACE: Trace | None = None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


def die_with(driver_pid: int, poll_s: float = 0.5) -> None:
    """Make this worker exit when the driver does, even if the driver was killed (SIGKILL,
    an OOM kill) and could not stop its pool: on Linux the kernel sends SIGKILL when the
    worker's parent (the forkserver, which exits with the driver) dies; everywhere a daemon
    thread polls the driver's pid."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def watch() -> None:
        while _alive(driver_pid):
            time.sleep(poll_s)
        os._exit(1)

    if not _alive(driver_pid):
        os._exit(1)
    threading.Thread(target=watch, name="simkv-die-with-driver", daemon=True).start()


def _init_worker(trace_path: str, sys_path: list[str], driver_pid: int) -> None:
    """Pool initializer: die with the driver; read the trace once per worker; leave Ctrl-C
    to the driver."""
    global _WORKER_TRACE
    die_with(driver_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _extend_sys_path(sys_path)
    _WORKER_TRACE = read_trace(trace_path)


def _pool_task(task: CellTask) -> CellOutcome:
    assert _WORKER_TRACE is not None, "worker initializer did not run"
    return execute_cell(task, _WORKER_TRACE)


_BROKEN_POOL = (
    "a sweep worker process died ({exc}); the cells finished so far are saved and the sweep "
    "resumes from them when re-run. If no cell ever completes: a script that calls sweep() "
    "with workers > 1 must guard its entry point with `if __name__ == \"__main__\":` "
    "(workers start with a fresh interpreter that re-imports the main module)")


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now: cells in flight are abandoned (they re-run on resume)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


def run_pool(tasks: Sequence[CellTask], trace: Trace, workers: int, on_done: OnDone) -> None:
    """A ``ProcessPoolExecutor`` of ``workers`` processes (forkserver: workers start from a
    clean process with simkv imported, not a fork of a threaded driver)."""
    if trace.path is None:
        raise SimkvError("the local process pool needs a trace read from a file")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["simkv.api"])
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(str(trace.path), driver_sys_path(), os.getpid()))
    try:
        pending: dict[Future[CellOutcome], CellTask] = {pool.submit(_pool_task, t): t for t in tasks}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: pending[f].cell.index):
                del pending[fut]
                try:
                    outcome = fut.result()
                except BrokenProcessPool as exc:
                    raise SimkvError(_BROKEN_POOL.format(exc=exc)) from None
                on_done(outcome)
    except BaseException:
        _terminate(pool)
        raise
    pool.shutdown(wait=True)


# -- Ray -------------------------------------------------------------------------------

_RAY_TRACES: dict[str, Trace] = {}


def import_ray() -> Any:
    """``ray``, or a :class:`SimkvError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SimkvError("the ray backend needs Ray: pip install 'simkv[ray]' "
                         "(or pip install 'ray[default]')") from None
    return ray


def _ray_task(task: CellTask, trace_ref: list[Any], sys_path: list[str]) -> CellOutcome:
    """A Ray task: fetch the trace from the object store once per worker process, run the cell.
    The reference arrives wrapped in a list so Ray passes it unresolved."""
    import ray

    _extend_sys_path(sys_path)
    key = trace_ref[0].hex()
    trace = _RAY_TRACES.get(key)
    if trace is None:
        _RAY_TRACES.clear()
        trace = _RAY_TRACES[key] = ray.get(trace_ref[0])
    return execute_cell(task, trace)


def probe_ray_address(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast, naming ``address``, when nothing listens there: ``ray.init`` would retry
    for minutes. ``auto`` and ``local`` are left to Ray."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise SimkvError(f"--ray-address {address!r}: expected host:port, ray://host:port, "
                         "auto or local")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise SimkvError(f"--ray-address {address}: cannot connect "
                         f"({exc.strerror or exc or 'timed out'}); is a Ray cluster running there?") from None


def run_ray(tasks: Sequence[CellTask], trace: Trace, workers: int | None, address: str | None,
            on_done: OnDone) -> None:
    """Ray tasks (one CPU each) on an existing cluster (``address``) or a local instance of
    ``workers`` CPUs. The trace is put in the object store once."""
    import logging

    if address:
        probe_ray_address(address)
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        opts: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                "configure_logging": True}
        try:
            if address:
                ray.init(address=address, **opts)
            else:
                ray.init(num_cpus=workers or available_cpus(), **opts)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SimkvError(f"cannot start or reach Ray{f' at {address}' if address else ''}: "
                             f"{exc}") from None
        started = True
    remote = ray.remote(num_cpus=1)(_ray_task)
    pending: dict[Any, CellTask] = {}
    try:
        trace_ref = ray.put(trace)
        sys_path = driver_sys_path()
        pending = {remote.remote(t, [trace_ref], sys_path): t for t in tasks}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # worker crash, node lost, ...
                    outcome = failed_outcome(task, exc)
                on_done(outcome)
    except BaseException:
        for ref in pending:
            with contextlib.suppress(Exception):  # best effort on the way out
                ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()
