"""The summary table printed at the end of ``simkv run``."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from simkv.model.system import TIER_NAMES
from simkv.report.data import NA, fmt_bytes, fmt_num, fmt_pct


def _ms(s: float | None) -> str:
    return NA if s is None else f"{s * 1000:.1f} ms"


def summary_table(s: dict[str, Any], title: str | None = None) -> Table:
    """The headline metrics of one run, with the no-cache baseline beside the cached TTFT."""
    t = Table(title=title or f"simkv run: {s.get('scenario', '')}", show_header=True,
              header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("detail", justify="right")
    t.add_row("requests", f"{s['requests']:,}", f"{s['duration_s']:.1f} s simulated")
    t.add_row("token hit rate", fmt_pct(s["token_hit_rate"]),
              " / ".join(f"{n} {fmt_pct(s[f'token_hit_rate_{n}'])}" for n in TIER_NAMES))
    t.add_row("block hit ratio", fmt_pct(s["block_hit_ratio"]),
              f"full-hit {fmt_pct(s['request_full_hit_ratio'], 1)}, "
              f"any-hit {fmt_pct(s['request_any_hit_ratio'], 1)}")
    for name in TIER_NAMES:
        if s[f"insertions_{name}"] == 0 and s[f"storage_peak_bytes_{name}"] == 0:
            continue
        t.add_row(f"{name}: evictions / expirations",
                  f"{s[f'evictions_{name}']:,} / {s[f'expirations_{name}']:,}",
                  f"{fmt_num(s[f'evictions_per_request_{name}'], '.2f')} evictions/request")
        mean, peak = s[f"storage_mean_bytes_{name}"], s[f"storage_peak_bytes_{name}"]
        t.add_row(f"{name}: storage mean / peak", f"{fmt_bytes(mean)} / {fmt_bytes(peak)}",
                  f"{s[f'storage_gb_hours_{name}']:.2f} GB-h")
    for p in (50, 90, 99):
        t.add_row(f"TTFT p{p}", _ms(s[f"ttft_p{p}_s"]),
                  f"without cache {_ms(s[f'ttft_nocache_p{p}_s'])}")
    t.add_row("GPU time saved", f"{s['gpu_seconds_saved']:.1f} s",
              f"${s['gpu_dollars_saved']:.4f}")
    t.add_row("archive $ (storage + requests + transfer)",
              f"${s['archive_storage_dollars'] + s['archive_request_dollars'] + s['transfer_dollars']:.4f}",
              f"{s['archive_puts']:,} PUT, {s['archive_gets']:,} GET")
    t.add_row("[bold]cost saved[/]", f"[bold]${s['cost_saved_dollars']:.4f}[/]",
              f"{s['tokens_avoided']:,} tokens avoided")
    return t
