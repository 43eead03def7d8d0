"""Console tables at 80 columns: no number is ever split across lines."""

from __future__ import annotations

import io
import re

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from simkv.api import run
from simkv.report.console import summary_table
from simkv.sweep.console import short_keys, top_cells_table
from tests.conftest import ROOT


def render(table: Table, width: int = 80) -> list[str]:
    buf = io.StringIO()
    Console(width=width, file=buf, color_system=None).print(table)
    return buf.getvalue().splitlines()


def numeric_cells(table: Table, skip: int = 0) -> list[str]:
    """Plain text of every cell holding a digit (columns from ``skip`` on)."""
    out = []
    for col in table.columns[skip:]:
        for cell in col._cells:
            text = Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)
            if re.search(r"\d", text):
                out.append(text)
    return out


def assert_intact(table: Table, skip: int = 0) -> None:
    lines = render(table)
    assert max(len(ln) for ln in lines) <= 80
    cells = numeric_cells(table, skip)
    assert cells
    for text in cells:
        assert any(text in ln for ln in lines), f"{text!r} is split or cut:\n" + "\n".join(lines)


def test_run_summary_fits_80_columns(gen_trace) -> None:
    res = run(ROOT / "scenarios" / "three-tier-adaptive.yaml", gen_trace,
              overrides=["hardware.gpus=1", "tiers.disk.write_gbps=0.01"])
    assert res.summary["overload"]  # the load rows are there, in yellow
    assert_intact(summary_table(res.summary), skip=1)


def test_sweep_table_fits_80_columns() -> None:
    df = pd.DataFrame({
        "cell_id": ["a1b2c3d4e5f6", "0123456789ab", "ffffeeeedddd"],
        "tiers.gpu.capacity_bytes": ["8GiB", "16GiB", "32GiB"],
        "tiers.disk.capacity_bytes": ["64GiB", "128GiB", "1TiB"],
        "ttl.params.base_ttl": [60, 600, 3600],
        "status": ["ok", "ok", "error"], "error": [None, None, "boom"],
        "token_hit_rate": [0.37412345, 0.3745678, None],
        "cost_saved_dollars": [0.44212345, 12345.678, None],
        "ttft_p90_s": [3.2936, 1620.5, None],
        "overload": ["", "gpu,disk", None],
    })
    for objective in (None, ("token_hit_rate", "max")):
        table = top_cells_table(df, 10, objective)
        assert_intact(table)
        assert "gpu, disk" in "\n".join(render(table))


def test_short_keys_are_unique_suffixes() -> None:
    keys = ["tiers.gpu.capacity_bytes", "tiers.disk.capacity_bytes", "ttl.params.base_ttl"]
    assert short_keys(keys) == {"tiers.gpu.capacity_bytes": "gpu.capacity_bytes",
                                "tiers.disk.capacity_bytes": "disk.capacity_bytes",
                                "ttl.params.base_ttl": "base_ttl"}
