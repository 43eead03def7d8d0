"""The archive tier's measurement: loads of chunks held in the archive only, the archive
pass's compress + upload per chunk and the codec's ratio on the model's real KV, and their
summary (``calibration.archive``) and notes in the profile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from simkv.core.profiles import GB
from simkv_engine.calibrate.inprocess import CALIBRATION_TTL_S, InProcessProbe
from simkv_engine.calibrate.plan import FreshPrompts, Plan
from simkv_engine.calibrate.probe import ARCHIVE_COUNTERS, Probe, Served, _expect, _hits, _runs


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
