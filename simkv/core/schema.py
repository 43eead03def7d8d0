"""The per-request result schema: the rows ``simkv run`` writes to ``requests.parquet`` (and a
real engine's replay will write), one Arrow schema with a version, documented in
docs/metrics.md ("Per-request rows").

Naming: ``<tier>_hit_tokens`` are the tokens served from a tier, ``<tier>_loaded_bytes`` the
bytes a request moved from a tier below the GPU into it (traffic), ``<tier>_held_bytes`` the
bytes a tier held after the request (occupancy). Per-tier columns follow
:data:`~simkv.core.tiers.TIER_NAMES`, so a new tier adds its columns (with a
``<tier>_storage_dollars`` where it bills what it holds, :data:`~simkv.core.tiers.HELD_BILLED`;
a new column bumps :data:`SCHEMA_VERSION`). TTFT is split into what a server can timestamp:
``ttft_s = queue_s + load_s + prefill_s``.

The same rows come from a simulation (``simkv run``: every column known, ``error`` null, and
under ``hardware.scheduler: fifo`` the :data:`DECODE_COLUMNS` null too) and from a replay
through a real engine (``simkv replay``: a column the client cannot know is null, never 0; a
request that failed has its ``error`` set). Columns taken from the trace
(:data:`TRACE_COLUMNS`) are never null.

The file metadata holds the schema version and the content hashes of the trace and the
scenario that produced the rows (:func:`trace_sha256`, :func:`scenario_sha256`), the same
hashes ``summary.json`` records.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from simkv.core.errors import SimkvError
from simkv.core.scenario import Scenario
from simkv.core.tiers import HELD_BILLED, TIER_NAMES
from simkv.traces.schema import Trace

#: Bump when a column is added, renamed, removed, retyped or changes meaning.
#: 3: the ``error`` column; measured columns nullable (a replay leaves unknown ones null).
#: 4: ``output_tokens`` and the decode columns ``e2e_s``, ``tpot_s``, ``preemptions``.
#: 5: the remote KV store tier: ``remote_hit_tokens``, ``remote_loaded_bytes``,
#:    ``remote_held_bytes``, ``remote_storage_dollars`` (in ``request_cost_dollars``).
SCHEMA_VERSION = 5

META_SCHEMA_VERSION = b"simkv_requests_schema_version"
META_TRACE_SHA256 = b"trace_sha256"
META_SCENARIO_SHA256 = b"scenario_sha256"

#: Tiers a request can load from: every tier but the GPU, where loads go.
LOAD_TIERS = TIER_NAMES[1:]

#: Columns taken from the trace: known for every request, so never null.
TRACE_COLUMNS = ("request_id", "arrival_s", "prompt_class", "input_tokens", "output_tokens",
                 "blocks")
#: What only a batching time model (``hardware.scheduler: vllm``) or a replay knows: when the
#: last output token came, the time per output token after the first (null with one output
#: token) and how often the request was preempted. A ``fifo`` simulation models no decode and
#: leaves them null: with ``error``, the only columns a simulation may leave null.
DECODE_COLUMNS = ("e2e_s", "tpot_s", "preemptions")
#: ``error``: why a replayed request failed (null: it was served). A simulation has none.
ERROR_COLUMN = "error"


def _fields() -> list[pa.Field]:
    i64, f64, s = pa.int64(), pa.float64(), pa.string()
    cols: list[tuple[str, pa.DataType]] = [
        ("request_id", s), ("arrival_s", f64), ("prompt_class", s), ("input_tokens", i64),
        ("output_tokens", i64), ("blocks", i64), ("prefix_blocks", i64), ("hit_blocks", i64),
        ("hit_tokens", i64),
        *((f"{t}_hit_tokens", i64) for t in TIER_NAMES),
        ("queue_s", f64), ("load_s", f64), ("prefill_s", f64), ("ttft_s", f64),
        ("ttft_nocache_s", f64), ("e2e_s", f64), ("tpot_s", f64), ("preemptions", i64),
        *((f"{t}_loaded_bytes", i64) for t in LOAD_TIERS),
        ("gpu_seconds_saved", f64), ("gpu_dollars_saved", f64), ("archive_objects", i64),
        ("archive_storage_dollars", f64), ("archive_request_dollars", f64),
        ("transfer_dollars", f64), *((f"{t}_storage_dollars", f64) for t in HELD_BILLED),
        ("request_cost_dollars", f64),
        ("cost_saved_dollars", f64),
        *((f"{t}_held_bytes", i64) for t in TIER_NAMES),
        (ERROR_COLUMN, s),
    ]
    return [pa.field(name, typ, nullable=name not in TRACE_COLUMNS) for name, typ in cols]


REQUEST_SCHEMA = pa.schema(_fields())
REQUEST_COLUMNS = tuple(REQUEST_SCHEMA.names)


def trace_sha256(trace: Trace) -> str:
    """SHA-256 of the trace's content (:attr:`~simkv.traces.schema.Trace.content_sha256`):
    the same trace read from any path hashes the same."""
    return trace.content_sha256


def scenario_sha256(scenario: Scenario) -> str:
    """SHA-256 of the resolved scenario as canonical JSON (sorted keys), without its
    ``trace`` path (the trace is identified by :func:`trace_sha256`) and without ``engine``
    (an implementation choice: the engines give the same rows where they apply)."""
    data = {k: v for k, v in scenario.to_dict().items() if k not in ("trace", "engine")}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def request_table(frame: pd.DataFrame, trace_hash: str, scenario_hash: str, *,
                  allow_null: bool = False) -> pa.Table:
    """``frame`` as a table of :data:`REQUEST_SCHEMA` (columns in schema order), with the
    version and both hashes in its metadata. A missing or unknown column, or a value that
    does not convert losslessly to the column's type, is a :class:`SimkvError` naming it;
    so is a null outside ``error`` and the :data:`DECODE_COLUMNS` (null in a simulation
    that models no decode, and ``tpot_s`` of a request with one output token), unless
    ``allow_null`` (a replay's unknown columns; the trace's columns are never null)."""
    missing = [c for c in REQUEST_COLUMNS if c not in frame.columns]
    unknown = [c for c in frame.columns if c not in REQUEST_SCHEMA.names]
    if missing or unknown:
        raise SimkvError(f"per-request rows do not match schema version {SCHEMA_VERSION}: "
                         f"missing {missing}, unknown {unknown}")
    arrays = []
    for f in REQUEST_SCHEMA:
        try:
            arr = pa.array(frame[f.name].to_numpy(), from_pandas=True)
            may_be_null = f.name in (ERROR_COLUMN, *DECODE_COLUMNS) or (allow_null and f.nullable)
            if arr.null_count and not may_be_null:
                raise SimkvError(f"per-request column '{f.name}': {arr.null_count} missing value(s)")
            arrays.append(arr.cast(f.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise SimkvError(f"per-request column '{f.name}': cannot convert to {f.type}: {exc}") from None
    meta = {META_SCHEMA_VERSION: str(SCHEMA_VERSION).encode(),
            META_TRACE_SHA256: trace_hash.encode(), META_SCENARIO_SHA256: scenario_hash.encode()}
    return pa.Table.from_arrays(arrays, schema=REQUEST_SCHEMA.with_metadata(meta))


def write_requests(table: pa.Table, path: Path) -> None:
    """Write a :func:`request_table` as Parquet (not atomic: the caller's
    :func:`~simkv.core.fileio.atomic_write` is)."""
    pq.write_table(table, path)


def read_requests(path: str | Path) -> pd.DataFrame:
    """Read a ``requests.parquet`` written by :func:`request_table`; a file that cannot be
    read, was written under another schema version, or lacks a column is a
    :class:`SimkvError` naming the file."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise SimkvError(f"{path}: cannot read: {exc}") from None
    meta = table.schema.metadata or {}
    raw = meta.get(META_SCHEMA_VERSION)
    version = raw.decode(errors="replace") if raw is not None else None
    if version != str(SCHEMA_VERSION):
        found = f"schema version {version}" if version is not None else "no schema version (an older simkv)"
        raise SimkvError(f"{path}: per-request rows of {found}; this simkv reads version "
                         f"{SCHEMA_VERSION}: re-run 'simkv run' to rewrite them")
    missing = [c for c in REQUEST_COLUMNS if c not in table.column_names]
    if missing:
        raise SimkvError(f"{path}: per-request rows lack column(s) {missing} of schema "
                         f"version {SCHEMA_VERSION}")
    return table.to_pandas()


def request_metadata(path: str | Path) -> dict[str, str]:
    """The schema version and content hashes stored in a ``requests.parquet``."""
    meta = pq.read_schema(path).metadata or {}
    keys = (META_SCHEMA_VERSION, META_TRACE_SHA256, META_SCENARIO_SHA256)
    return {k.decode(): meta[k].decode() for k in keys if k in meta}
