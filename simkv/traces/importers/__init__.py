"""Importers: Mooncake trace JSONL, LMCache lookup-hash logs and agent-call logs → :class:`Trace`.

One module per format (:mod:`.mooncake`, :mod:`.lmcache`, :mod:`.agent`), each registered by
name in :data:`IMPORTERS` (:mod:`.registry`) for ``simkv trace import KIND``. They share the
tiered JSONL reader (:mod:`.reader`: file, line and field of any bad value) and the row checks
and table assembly (:mod:`.common`; the result goes through
:func:`simkv.traces.schema.validate_table`).

Rules common to all formats: blank lines are skipped, and nothing else is. Invalid JSON, a
line that is not an object, a missing/mistyped/out-of-range field, an unknown key, a
decreasing timestamp (unless ``sort``) and an input with zero requests are all
:class:`TraceError`. ``bool`` is not an integer, ``5.0`` is not an integer, JSON ``null`` is
an error for a required key and means "absent" for an optional one. A repeated key in one
object is an error too (``json.loads`` would silently keep the last).
"""

from simkv.traces.importers.agent import import_agent_log
from simkv.traces.importers.lmcache import import_lmcache
from simkv.traces.importers.mooncake import MOONCAKE_BLOCK_SIZE, import_mooncake
from simkv.traces.importers.registry import IMPORTERS, import_trace

__all__ = [
    "IMPORTERS",
    "MOONCAKE_BLOCK_SIZE",
    "import_agent_log",
    "import_lmcache",
    "import_mooncake",
    "import_trace",
]
