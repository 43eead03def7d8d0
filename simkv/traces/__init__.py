"""Traces: the Parquet schema, importers, the synthetic generator and trace statistics."""

from simkv.traces.schema import (
    OPTIONAL_NAMES,
    REQUIRED_NAMES,
    SCHEMA_VERSION,
    Trace,
    build_table,
    read_trace,
    trace_schema,
    validate_table,
    write_trace,
)

__all__ = [
    "OPTIONAL_NAMES",
    "REQUIRED_NAMES",
    "SCHEMA_VERSION",
    "Trace",
    "build_table",
    "read_trace",
    "trace_schema",
    "validate_table",
    "write_trace",
]
