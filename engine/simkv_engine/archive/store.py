"""The archive's object store: the interface every store implements (objects by name, a body and
string metadata; every failure an :class:`ArchiveError` of a counted kind) and the local-folder
store. The S3 store is :mod:`simkv_engine.archive.s3`."""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

from simkv.core.errors import SimkvError

#: The kinds an archive error is counted under in ``archive_errors``.
ERROR_KINDS = ("unreachable", "timeout", "corrupt", "missing", "other")


class ArchiveError(Exception):
    """An archive operation failed; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class ArchiveConfigError(SimkvError):
    """The archive's location cannot be used (no such bucket, a bad URL)."""


class ArchiveStore(ABC):
    """Objects by name (``model/hash``) under the store's root: a body and string metadata.
    Every failure is an :class:`ArchiveError`."""

    location = ""

    @abstractmethod
    def put(self, name: str, body: bytes, meta: dict[str, str]) -> None: ...

    @abstractmethod
    def get(self, name: str) -> tuple[bytes, dict[str, str]]: ...

    @abstractmethod
    def head(self, name: str) -> tuple[int, dict[str, str]]:
        """Stored size and metadata."""

    @abstractmethod
    def set_meta(self, name: str, meta: dict[str, str]) -> None:
        """Replace an object's metadata (S3: a COPY onto itself, a new object)."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def list(self, folder: str) -> Iterator[str]:
        """Names of the objects under ``folder``."""

    def check(self) -> None:  # noqa: B027 - most stores have nothing to check
        """Refuse a location that cannot exist (a missing bucket); transient errors pass."""

    def close(self) -> None:  # noqa: B027 - most stores hold no connections
        """Release connections."""


class LocalStore(ArchiveStore):
    """A folder: ``ROOT/model/hash`` (the body) and ``ROOT/model/hash.meta.json``; each file is
    written to a temporary name and renamed, the metadata last, so a reader never sees a
    body without its metadata."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def put(self, name: str, body: bytes, meta: dict[str, str]) -> None:
        try:
            self._write(self.root / name, body)
            self._write(self.root / f"{name}.meta.json", json.dumps(meta).encode())
        except OSError as exc:
            raise ArchiveError("other", f"{self.root / name}: {exc}") from None

    def _meta(self, name: str) -> dict[str, str]:
        try:
            return json.loads((self.root / f"{name}.meta.json").read_text())
        except FileNotFoundError:
            raise ArchiveError("missing", f"{self.root / name}: no such object") from None
        except (OSError, ValueError) as exc:
            raise ArchiveError("corrupt", f"{self.root / name}.meta.json: {exc}") from None

    def get(self, name: str) -> tuple[bytes, dict[str, str]]:
        meta = self._meta(name)
        try:
            return (self.root / name).read_bytes(), meta
        except FileNotFoundError:
            raise ArchiveError("missing", f"{self.root / name}: no such object") from None
        except OSError as exc:
            raise ArchiveError("other", f"{self.root / name}: {exc}") from None

    def head(self, name: str) -> tuple[int, dict[str, str]]:
        meta = self._meta(name)
        try:
            return (self.root / name).stat().st_size, meta
        except FileNotFoundError:
            raise ArchiveError("missing", f"{self.root / name}: no such object") from None

    def set_meta(self, name: str, meta: dict[str, str]) -> None:
        if not (self.root / name).exists():
            raise ArchiveError("missing", f"{self.root / name}: no such object")
        try:
            self._write(self.root / f"{name}.meta.json", json.dumps(meta).encode())
        except OSError as exc:
            raise ArchiveError("other", f"{self.root / name}: {exc}") from None

    def delete(self, name: str) -> None:
        for path in (self.root / f"{name}.meta.json", self.root / name):
            path.unlink(missing_ok=True)

    def list(self, folder: str) -> Iterator[str]:
        base = self.root / folder
        if not base.is_dir():
            return
        for path in sorted(base.glob("*.meta.json")):
            name = path.name.removesuffix(".meta.json")
            if (base / name).exists():
                yield f"{folder}/{name}"
