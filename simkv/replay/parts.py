"""Durable rows of a replay: appended as numbered Parquet parts (``DIR/parts/part-NNNNN.parquet``,
each written atomically), so an interrupt or a crash loses only the rows not yet flushed and
``--resume`` knows which requests are done.

A part holds :data:`PART_SCHEMA`: the per-request columns (:data:`REQUEST_SCHEMA`) and the
replay's own (:data:`REPLAY_COLUMNS`), with the trace's and the scenario's hashes in its
metadata; parts of another trace or scenario are refused.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from simkv.core.errors import SimkvError
from simkv.core.fileio import atomic_write, make_dir
from simkv.core.schema import META_SCENARIO_SHA256, META_TRACE_SHA256, REQUEST_SCHEMA

#: What a replay measures beyond the per-request schema (``replay_requests.parquet``):
#: ``sent_s`` (send time, seconds after the replay session started), ``send_lag_s`` (send − due:
#: how late the client sent it), ``total_s`` (send → end of the stream), ``server_ttft_s`` (the
#: server's arrival → first token), the server's ``hydrate_s`` / ``store_s`` / ``decode_s``,
#: ``computed_tokens`` (prompt tokens prefilled), ``cached_tokens``
#: (``usage.prompt_tokens_details``), ``completion_tokens`` (tokens streamed), ``http_status``
#: and ``session`` (which replay session, 0 first, sent it).
REPLAY_FIELDS = (
    pa.field("sent_s", pa.float64()), pa.field("send_lag_s", pa.float64()),
    pa.field("total_s", pa.float64()), pa.field("server_ttft_s", pa.float64()),
    pa.field("hydrate_s", pa.float64()), pa.field("store_s", pa.float64()),
    pa.field("decode_s", pa.float64()), pa.field("computed_tokens", pa.int64()),
    pa.field("cached_tokens", pa.int64()), pa.field("completion_tokens", pa.int64()),
    pa.field("http_status", pa.int64()), pa.field("session", pa.int64()),
)
REPLAY_COLUMNS = tuple(f.name for f in REPLAY_FIELDS)
PART_SCHEMA = pa.schema([*(f.with_nullable(True) for f in REQUEST_SCHEMA), *REPLAY_FIELDS])
_PART = re.compile(r"^part-(\d{5,})\.parquet$")


def part_files(out: Path) -> list[Path]:
    """The parts in ``out/parts``, in write order."""
    folder = out / "parts"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _PART.match(p.name)]
    return sorted(found, key=lambda p: int(_PART.match(p.name)[1]))


def read_parts(out: Path, trace_hash: str, scenario_hash: str) -> pd.DataFrame:
    """Every row in ``out``'s parts (empty frame if none); a part of another trace or scenario,
    or one that cannot be read, is a :class:`SimkvError` naming it."""
    frames = []
    for path in part_files(out):
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise SimkvError(f"{path}: cannot read: {exc}") from None
        meta = table.schema.metadata or {}
        for key, want, what in ((META_TRACE_SHA256, trace_hash, "trace"),
                                (META_SCENARIO_SHA256, scenario_hash, "scenario")):
            if meta.get(key, b"").decode() != want:
                raise SimkvError(f"{path}: rows of another {what} (its sha256 differs); replay into "
                                 "a new directory or pass the same trace and scenario")
        if table.column_names != PART_SCHEMA.names:
            raise SimkvError(f"{path}: rows of another per-request schema (written by another simkv "
                             "version); replay into a new directory")
        frames.append(table.cast(PART_SCHEMA.with_metadata(meta)).to_pandas())
    if not frames:
        return PART_SCHEMA.empty_table().to_pandas()
    return pd.concat(frames, ignore_index=True)


class PartWriter:
    """Buffers rows; writes them as the next part every ``every_rows`` rows or ``every_s``
    seconds (checked on each :meth:`add`) and on :meth:`flush`."""

    def __init__(self, out: Path, trace_hash: str, scenario_hash: str, *, every_rows: int = 64,
                 every_s: float = 5.0) -> None:
        self.folder = make_dir(out / "parts", "replay's parts directory")
        existing = part_files(out)
        self.next = int(_PART.match(existing[-1].name)[1]) + 1 if existing else 0
        self.meta = {META_TRACE_SHA256: trace_hash.encode(), META_SCENARIO_SHA256: scenario_hash.encode()}
        self.every_rows, self.every_s = every_rows, every_s
        self.rows: list[dict[str, Any]] = []
        self.last = time.monotonic()
        self.written = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.every_rows or time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows (if any) as one part."""
        self.last = time.monotonic()
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=PART_SCHEMA.with_metadata(self.meta))
        path = self.folder / f"part-{self.next:05d}.parquet"
        atomic_write(path, lambda p: pq.write_table(table, p))
        self.next += 1
        self.written += len(self.rows)
        self.rows = []
