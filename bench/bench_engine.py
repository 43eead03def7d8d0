"""The real engine's speed: prefill, per-tier loads through our connector, TTFT of a hit vs a
miss, logits equality, and (``--server``) the HTTP server's own overhead beside a bare
in-process prefill of the same tokens, as a ratio.

    python bench/bench_engine.py                                  # CPU: the tiny shape
    python bench/bench_engine.py --device cuda --shapes llama-1b,llama-8b --json out.json

Every figure is the median of ``--repeat`` runs after one warm-up; each measurement uses fresh
random prompts (a fixed seed), checked with ``lookup`` to come from the tier it claims.

* prefill: the model's forward pass over ``n`` new tokens (no cache), per shape;
* load: ``--load-tokens`` (default 4096) tokens of KV from the GPU cache, LMCache's CPU backend
  and its disk backend (the file just written, so likely in the page cache: "warm"), and the
  effective GB/s (KV bytes / load time);
* TTFT in process: a full-prefix CPU-tier hit vs a miss of the same prompt length (load + prefill
  of the last token vs prefill of all);
* logits: a prefill continued from KV loaded from each tier equals the full prefill's (max abs
  difference);
* server (``--server``, tiny shape): requests/s and p50 TTFT at the client for miss and hit
  requests over real HTTP; the server's overhead = client TTFT / the engine's own load + prefill
  (as the server reports them), and a miss's client TTFT / a bare in-process prefill of the
  same tokens (no tiers, no server).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PYTHONHASHSEED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "engine")]

import torch  # noqa: E402
from simkv_engine.calibrate import FreshPrompts as Prompts  # noqa: E402
from simkv_engine.engine import KVEngine  # noqa: E402
from simkv_engine.models import kv_shape_of, load_model  # noqa: E402

from simkv.core.scenario import scenario_from_dict  # noqa: E402


def scenario(chunk: int, gpu_bytes: str, cpu_bytes: str, disk_bytes: str) -> Any:
    return scenario_from_dict({
        "block_size": chunk,
        "tiers": {"gpu": {"capacity_bytes": gpu_bytes},
                  "cpu": {"enabled": True, "capacity_bytes": cpu_bytes},
                  "disk": {"enabled": True, "capacity_bytes": disk_bytes}}})


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_prefill(model: Any, prompts: Prompts, tokens: list[int], repeat: int) -> dict[int, float]:
    device = next(model.parameters()).device
    out = {}
    for n in tokens:
        times = []
        for i in range(repeat + 1):
            ids = torch.tensor([prompts(n)], device=device)
            sync(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                model(input_ids=ids, use_cache=True, logits_to_keep=1)
            sync(device)
            if i:
                times.append(time.perf_counter() - t0)
        out[n] = median(times)
    return out


def bench_loads(engine: KVEngine, prompts: Prompts, n: int, repeat: int) -> dict[str, Any]:
    """Per tier: median load seconds for ``n`` cached tokens, GB/s, the TTFT of the hit, the
    miss's TTFT and the logits' max abs difference from the full prefill."""
    c = engine.chunk_size
    n = n // c * c + 1                          # n cached tokens, one computed
    res: dict[str, Any] = {"tokens": n - 1, "bytes": (n - 1) // c * engine.chunk_bytes}
    times: dict[str, list[float]] = {t: [] for t in ("gpu", "cpu", "disk")}
    ttft: dict[str, list[float]] = {t: [] for t in ("miss", "gpu", "cpu", "disk")}
    diff = dict.fromkeys(times, 0.0)
    drop = {"gpu": [], "cpu": ["gpu"], "disk": ["gpu", "cpu"]}
    for i in range(repeat + 1):
        p = prompts(n)
        miss = engine.serve(p)
        assert miss.cached_tokens == 0, "a fresh prompt hit the cache"
        if i:
            ttft["miss"].append(miss.load_s + miss.prefill_s)
        for tier in ("gpu", "cpu", "disk"):
            if drop[tier]:
                engine.clear(drop[tier])
            where = engine.lookup(p)
            assert where and set(where) == {tier}, f"expected the {tier} tier, lookup says {where}"
            hit = engine.serve(p)
            assert hit.hit_tokens[tier] == n - 1, (tier, hit.hit_tokens)
            diff[tier] = max(diff[tier], float((hit.logits.float() - miss.logits.float()).abs().max()))
            if i:
                times[tier].append(hit.load_s)
                ttft[tier].append(hit.load_s + hit.prefill_s)
        engine.clear(["gpu", "cpu"])            # keep memory bounded; disk holds the rest
    for tier, ts in times.items():
        s = median(ts)
        res[tier] = {"load_s": s, "gb_s": res["bytes"] / s / 1e9, "ttft_s": median(ttft[tier]),
                     "logits_max_abs_diff": diff[tier]}
    res["miss_ttft_s"] = median(ttft["miss"])
    return res


def bench_server(model: Any, sc: Any, prompts: Prompts, n: int, repeat: int, disk: Path) -> dict[str, Any]:
    """Client-side TTFT and requests/s over real HTTP, beside the server's own load + prefill."""
    import threading

    import httpx
    import uvicorn
    from simkv_engine.server import create_app

    engine = KVEngine(sc, model, disk_path=disk)
    app = create_app(engine, model_name="bench")
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    n = min(n, model.config.max_position_embeddings - 1)     # room for the one generated token
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for kind in ("miss", "hit"):
                ttfts, inner = [], []
                p = prompts(n)
                t_start = time.perf_counter()
                for i in range(repeat + 1):
                    if kind == "miss":
                        p = prompts(n)
                    t0 = time.perf_counter()
                    r = client.post("/v1/completions", json={"prompt": p, "max_tokens": 1})
                    dt = time.perf_counter() - t0
                    r.raise_for_status()
                    usage = r.json()["usage"]["simkv"]
                    if i:
                        ttfts.append(dt)
                        inner.append(usage["load_s"] + usage["prefill_s"])
                    else:
                        t_start = time.perf_counter()
                elapsed = time.perf_counter() - t_start
                out[kind] = {"requests_per_s": repeat / elapsed, "p50_ttft_s": median(ttfts),
                             "p50_engine_s": median(inner),
                             "overhead_ratio": median(ttfts) / median(inner)}
        # A bare in-process prefill of the same number of tokens (no tiers, no server).
        bare = bench_prefill(model, prompts, [n], repeat)[n]
        out["bare_prefill_s"] = bare
        out["miss"]["vs_bare_ratio"] = out["miss"]["p50_ttft_s"] / bare
    finally:
        server.should_exit = True
        thread.join(10)
        engine.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shapes", default=None,
                    help="comma-separated (default tiny on CPU, llama-1b,llama-8b on CUDA)")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--load-tokens", type=int, default=4096)
    ap.add_argument("--prefill-tokens", default=None, help="comma-separated new-token counts")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--server", action="store_true", help="also measure the HTTP server (tiny shape)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    shapes = (args.shapes or ("llama-1b,llama-8b" if cuda else "tiny")).split(",")
    prefill_tokens = [int(x) for x in (args.prefill_tokens or
                      ("256,1024,4096,8192,16384" if cuda else "256,1024,4096")).split(",")]
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else "cpu",
                              "torch": torch.__version__, "repeat": args.repeat, "shapes": {}}
    for shape in shapes:
        model = load_model(shape, device)
        prompts = Prompts(model.config.vocab_size, seed=0)
        entry: dict[str, Any] = {"prefill_s": bench_prefill(model, prompts, prefill_tokens, args.repeat)}
        with tempfile.TemporaryDirectory() as tmp:
            kv_bytes = args.load_tokens * kv_shape_of(model).bytes_per_token
            cap = f"{max(4, 4 * kv_bytes // 2**30 + 1)}GiB"
            sc = scenario(args.chunk, cap, cap, cap)
            with KVEngine(sc, model, disk_path=Path(tmp) / "disk") as engine:
                entry["load"] = bench_loads(engine, prompts, args.load_tokens, args.repeat)
            if args.server and shape == "tiny":
                entry["server"] = bench_server(model, sc, prompts, args.load_tokens, args.repeat,
                                               Path(tmp) / "disk-server")
        report["shapes"][shape] = entry
        print_shape(shape, entry)
        del model
        if cuda:
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def print_shape(shape: str, e: dict[str, Any]) -> None:
    print(f"\n== {shape}")
    print("prefill (no cache): " + ", ".join(f"{n} tok {s * 1e3:.1f} ms" for n, s in e["prefill_s"].items()))
    ld = e["load"]
    print(f"load {ld['tokens']} tokens ({ld['bytes'] / 2**20:.1f} MiB of KV):")
    for tier in ("gpu", "cpu", "disk"):
        t = ld[tier]
        print(f"  {tier:5s} {t['load_s'] * 1e3:8.2f} ms  {t['gb_s']:7.2f} GB/s  "
              f"TTFT {t['ttft_s'] * 1e3:8.2f} ms  logits max|diff| {t['logits_max_abs_diff']:.2e}")
    ratio = ld["cpu"]["ttft_s"] / ld["miss_ttft_s"]
    print(f"  miss  TTFT {ld['miss_ttft_s'] * 1e3:.2f} ms  (CPU hit / miss = {ratio:.3f})")
    if "server" in e:
        bare = e["server"]["bare_prefill_s"]
        print(f"bare in-process prefill of the same tokens: {bare * 1e3:.2f} ms; a miss over HTTP "
              f"takes x{e['server']['miss']['vs_bare_ratio']:.2f} of it")
        for kind in ("miss", "hit"):
            s = e["server"][kind]
            print(f"server {kind:4s}: {s['requests_per_s']:.1f} req/s, p50 TTFT "
                  f"{s['p50_ttft_s'] * 1e3:.2f} ms at the client vs {s['p50_engine_s'] * 1e3:.2f} ms "
                  f"in the engine: overhead x{s['overhead_ratio']:.2f}")


if __name__ == "__main__":
    main()
