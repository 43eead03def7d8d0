"""The archive's codecs: ``(compress, decompress)`` by the name in ``tiers.archive.codec`` (and in
each object's ``codec`` metadata), implementing the scenario's list of codecs."""

from __future__ import annotations

import zlib
from collections.abc import Callable

from simkv.core.errors import ScenarioError
from simkv.core.scenario import ARCHIVE_CODECS


def _zstd() -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    import zstandard

    # Contexts are not thread-safe: one per call (cheap next to a chunk's bytes).
    return (lambda b: zstandard.ZstdCompressor(level=3).compress(b),
            lambda b: zstandard.ZstdDecompressor().decompress(b))


CODECS: dict[str, Callable[[], tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]]] = {
    "zstd": _zstd,
    "zlib": lambda: (lambda b: zlib.compress(b, 1), zlib.decompress),
    "none": lambda: (bytes, bytes),
}


def codec(name: str, key: str = "tiers.archive.codec") -> tuple[Callable[[bytes], bytes],
                                                                  Callable[[bytes], bytes]]:
    """``(compress, decompress)`` of a codec name; an unknown name is a :class:`ScenarioError`."""
    if name not in ARCHIVE_CODECS:  # the scenario's list, which CODECS implements
        raise ScenarioError(f"{key}: {name!r} is not one of {list(ARCHIVE_CODECS)}")
    return CODECS[name]()
