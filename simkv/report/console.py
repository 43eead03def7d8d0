"""The summary table printed at the end of ``simkv run``.

Labels and details are short so the table fits 80 columns without wrapping; the value and
detail columns never wrap, so a number is never split across lines.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from simkv.core.tiers import HELD_BILLS, TIER_NAMES
from simkv.metrics.format import fmt_bytes, fmt_dollars, fmt_num, fmt_pct, fmt_seconds


def _present(s: dict[str, Any], tier: str) -> bool:
    return bool(s.get(f"insertions_{tier}") or s.get(f"storage_peak_bytes_{tier}"))


def load_rows(s: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """Offered-load rows (label, value, detail, over its threshold) shared by the console
    table and ``report.md``; empty for summaries written before these metrics existed."""
    if "gpu_utilization" not in s:
        return []
    over = set(filter(None, str(s.get("overload", "")).split(",")))
    rows = [("GPU utilisation", f"{s['gpu_utilization']:.2f}",
             f"queue {s['ttft_queue_share']:.0%} of TTFT", "gpu" in over),
            ("arrivals / makespan", f"{fmt_seconds(s['arrival_span_s'])} / {fmt_seconds(s['makespan_s'])}",
             f"busy {fmt_seconds(s['gpu_busy_s'])}", "gpu" in over)]
    if _present(s, "disk"):
        rows.append(("disk write demand", f"{s['disk_write_demand']:.2f}x bw",
                     f"max lag {fmt_seconds(s['disk_write_lag_max_s'])}", "disk" in over))
    if _present(s, "archive"):
        rows.append(("archive upload demand", f"{s['archive_upload_demand']:.2f}x bw",
                     f"worker busy {s['archive_worker_busy_share']:.0%}", "archive" in over))
    return rows


def decode_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows (label, value, detail) of a batched run's decode metrics (``hardware.scheduler:
    vllm``), shared by the console table and ``report.md``; empty for any other summary."""
    if "e2e_p50_s" not in s:
        return []

    def p50_p90(prefix: str) -> str:
        return f"{fmt_seconds(s[f'{prefix}_p50_s'])} / {fmt_seconds(s[f'{prefix}_p90_s'])}"

    return [("e2e p50 / p90", p50_p90("e2e"), f"p99 {fmt_seconds(s['e2e_p99_s'])}"),
            ("TPOT p50 / p90", p50_p90("tpot"), f"p99 {fmt_seconds(s['tpot_p99_s'])}"),
            ("queue p50 / p90", p50_p90("queue"), f"p99 {fmt_seconds(s['queue_p99_s'])}"),
            ("throughput", f"{fmt_num(s['throughput_requests_per_s'], ',.3g')} req/s",
             f"{fmt_num(s['throughput_output_tokens_per_s'], ',.4g')} output tok/s"),
            ("preemptions", f"{s['preemptions']:,}", "")]


def summary_table(s: dict[str, Any], title: str | None = None) -> Table:
    """The headline metrics of one run, with the no-cache baseline beside the cached TTFT;
    load rows over their threshold are yellow."""
    t = Table(title=escape(title or f"simkv run: {s.get('scenario', '')}"), show_header=True,
              header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right", no_wrap=True)
    t.add_column("detail", justify="right", no_wrap=True)
    t.add_row("requests", f"{s['requests']:,}", f"{fmt_seconds(s['duration_s'])} simulated")
    t.add_row("token hit rate", fmt_pct(s["token_hit_rate"]), "")
    for name in TIER_NAMES:
        if name == "gpu" or _present(s, name):
            t.add_row(f"  from {name}", fmt_pct(s[f'token_hit_rate_{name}']), "")
    t.add_row("block hit ratio", fmt_pct(s["block_hit_ratio"]), "")
    t.add_row("requests full / any hit",
              f"{fmt_pct(s['request_full_hit_ratio'], 1)} / {fmt_pct(s['request_any_hit_ratio'], 1)}", "")
    for name in TIER_NAMES:
        if not _present(s, name):
            continue
        t.add_row(f"{name} evict / expire",
                  f"{s[f'evictions_{name}']:,} / {s[f'expirations_{name}']:,}",
                  f"{fmt_num(s[f'evictions_per_request_{name}'], '.2f')} per request")
        mean, peak = s[f"storage_mean_bytes_{name}"], s[f"storage_peak_bytes_{name}"]
        t.add_row(f"{name} stored mean / peak", f"{fmt_bytes(mean)} / {fmt_bytes(peak)}",
                  f"{s[f'storage_gb_hours_{name}']:.2f} GB-h")
    for p in (50, 90, 99):
        t.add_row(f"TTFT p{p}", fmt_seconds(s[f"ttft_p{p}_s"]),
                  f"no cache {fmt_seconds(s[f'ttft_nocache_p{p}_s'])}")
    for label, value, detail in decode_rows(s):
        t.add_row(label, value, detail)
    for label, value, detail, over in load_rows(s):
        style = "yellow" if over else None
        t.add_row(label, value, detail, style=style)
    t.add_row("GPU time saved", fmt_seconds(s["gpu_seconds_saved"]),
              fmt_dollars(s["gpu_dollars_saved"]))
    t.add_row("archive $ (all)",
              fmt_dollars(s["archive_storage_dollars"] + s["archive_request_dollars"]
                          + s["transfer_dollars"]),
              f"{s['archive_puts']:,} PUT, {s['archive_gets']:,} GET")
    for name, bill in HELD_BILLS.items():
        if _present(s, name):
            t.add_row(f"{name} $ ({bill})", fmt_dollars(s[f"{name}_storage_dollars"]),
                      f"{s[f'{name}_writes']:,} writes")
    t.add_row("[bold]cost saved[/]", f"[bold]{fmt_dollars(s['cost_saved_dollars'])}[/]",
              f"{s['tokens_avoided']:,} tokens avoided")
    return t
