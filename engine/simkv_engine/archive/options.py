"""Where the engine's archive lives and how it is reached: the engine's archive options, and
:func:`open_store`, which opens the store a location names (an S3 bucket or a local folder)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from simkv.core.errors import ScenarioError
from simkv_engine.archive.s3 import S3Store
from simkv_engine.archive.store import ArchiveConfigError, ArchiveStore, LocalStore

#: Scenario storage classes the engine can PUT into (the others need a restore before a GET).
S3_STORAGE_CLASSES = {"standard": None, "standard_ia": "STANDARD_IA", "glacier_ir": "GLACIER_IR"}


def open_store(location: str | Path, *, endpoint_url: str | None = None, region: str | None = None,
               timeout_s: float = 2.0, storage_class: str = "standard") -> ArchiveStore:
    """``s3://bucket/prefix`` → :class:`S3Store`; anything else is a local folder."""
    text = str(location)
    if text.startswith("s3://"):
        if storage_class not in S3_STORAGE_CLASSES:
            raise ScenarioError(f"tiers.archive.storage_class: {storage_class!r} objects must be restored "
                                f"before a GET; the engine archives to {', '.join(S3_STORAGE_CLASSES)}")
        return S3Store(text, endpoint_url=endpoint_url, region=region, timeout_s=timeout_s,
                       storage_class=S3_STORAGE_CLASSES[storage_class])
    if endpoint_url:
        raise ArchiveConfigError(f"archive {text!r}: an endpoint URL needs an s3://bucket location")
    return LocalStore(text.removeprefix("file://"))


@dataclass(frozen=True)
class ArchiveOptions:
    """Where the engine's archive lives and how it is reached: engine options, like LMCache's
    disk folder, so that one scenario file (what the archive does: codec, interval, TTLs)
    serves the simulator and the engine unchanged and keeps its ``scenario_sha256``.

    ``location``: ``s3://bucket/prefix`` or a local folder; ``endpoint_url`` / ``region``: the
    S3 endpoint (any S3 API; boto3's defaults when ``None``); ``timeout_s``: each connect and read
    (one retry); ``clock_scale``: engine time runs this many times faster than the wall clock
    (TTLs and ``interval_s`` shrink with it; a replay at speed k sets k); ``clock``: a clock of
    epoch seconds to use instead (tests); ``worker_thread``: run passes in the background (off:
    the caller calls ``engine.archive.run_pass()``)."""

    location: str | Path
    endpoint_url: str | None = None
    region: str | None = None
    timeout_s: float = 2.0
    clock_scale: float = 1.0
    clock: Callable[[], float] | None = None
    worker_thread: bool = True
