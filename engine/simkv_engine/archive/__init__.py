"""The engine's S3 archive: one object per KV chunk with its TTL in the object's metadata, an
in-memory index rebuilt from the bucket at start, and the archive worker (a background thread)
that expires, refreshes and uploads chunks as the scenario's TTL policy decides.

Keys. A chunk is named by a hash of the whole token prefix up to its end, stable across
processes, restarts and Python versions (LMCache's own key is Python's ``hash()`` of int
tuples: seed-independent, but not a documented format, so the archive does not rely on it)::

    h_b = blake2b_64(h_{b-1} (8 bytes, little-endian) || token ids of chunk b (uint32 LE)),  h_{-1} = 0

Object ``{prefix}/{model}/{h:016x}``, where ``model`` is :func:`model_fingerprint` (a digest
of the KV layout, the chunk size and a sample of the weights): engines hosting different
models can share a bucket and never see each other's chunks. The body is the chunk's KV
(``[2, layers, chunk, kv_heads, head_dim]`` in the model's dtype, C order) compressed by the
scenario's ``tiers.archive.codec`` (``zstd``, ``zlib`` or ``none``). Metadata (S3 user
metadata, ``x-amz-meta-simkv-*``; a ``.meta.json`` file beside the body in a local folder):
``deadline`` (engine-clock epoch seconds), ``ttl``, ``access-count``, ``prompt-class``
(URL-quoted), ``codec``, ``raw-bytes``, ``sha256`` (of the raw bytes), ``dtype``, ``shape``,
``chunk-size``, ``model``, ``version``. A fetch checks the layout fields against the engine's,
decompresses, and checks the length and SHA-256 of the result before the KV is used.

Storage (:func:`open_store`): ``s3://bucket/prefix`` through boto3 (any endpoint; credentials
from boto3's usual chain; connect/read timeouts and one retry so that an unreachable or slow
endpoint fails a request in seconds instead of hanging it), or a local folder.
"""

from simkv_engine.archive.chunks import FORMAT_VERSION, ChunkFormat, chunk_hashes, model_fingerprint
from simkv_engine.archive.clock import EngineClock, TraceClock
from simkv_engine.archive.codecs import CODECS, codec
from simkv_engine.archive.options import S3_STORAGE_CLASSES, ArchiveOptions, open_store
from simkv_engine.archive.s3 import S3Store
from simkv_engine.archive.store import ERROR_KINDS, ArchiveConfigError, ArchiveError, ArchiveStore, LocalStore
from simkv_engine.archive.worker import ArchiveWorker, ChunkSource, IndexEntry

__all__ = [
    "CODECS",
    "ERROR_KINDS",
    "FORMAT_VERSION",
    "S3_STORAGE_CLASSES",
    "ArchiveConfigError",
    "ArchiveError",
    "ArchiveOptions",
    "ArchiveStore",
    "ArchiveWorker",
    "ChunkFormat",
    "ChunkSource",
    "EngineClock",
    "IndexEntry",
    "LocalStore",
    "S3Store",
    "TraceClock",
    "chunk_hashes",
    "codec",
    "model_fingerprint",
    "open_store",
]
