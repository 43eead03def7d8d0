"""User-facing errors.

Everything a user can get wrong (a malformed trace row, a bad scenario key, an unreachable
endpoint) raises a :class:`SimkvError`; the CLI prints its message and exits with status 2,
without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class SimkvError(Exception):
    """An error caused by the user's input, reported without a traceback."""

    exit_code = 2


class TraceError(SimkvError):
    """A trace file (or a trace source being imported) is malformed.

    The message always names the file, and where known the line or row and the field.
    """

    def __init__(
        self,
        path: str | Path | None,
        message: str,
        *,
        line: int | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.row = row
        self.field = field
        where = self.path or "<trace>"
        if line is not None:
            where += f":{line}"
        elif row is not None:
            where += f": row {row}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")


class ScenarioError(SimkvError):
    """A scenario file or a --set override is invalid; the message names the key and value."""


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM in the CLI: a BaseException like KeyboardInterrupt, so
    ``except Exception`` (a sweep cell's error record) never swallows it; the CLI prints
    "interrupted" and exits 130."""
