"""What the commands share: the consoles, option types, the progress bar, the error line and
the interrupt handler."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from simkv.errors import Interrupted

# emoji=False: a user string such as "trace.jsonl:100:" must not print as an emoji.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a parameter: key=value (repeatable)."),
]
TraceOpt = Annotated[
    Path | None,
    typer.Option("--trace", "-t", help="Parquet trace (default: the scenario's 'trace')."),
]


@contextmanager
def progress_bar(label: str, *, step: int = 2048,
                 total: Callable[[], int | None] | None = None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``, drawn every ``step`` units;
    ``total()`` (if given) is read on each draw, so it may become known after the start.
    Only on a terminal: elsewhere (logs, pipes) rich would leave a blank line behind."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    if not err_console.is_terminal:
        yield lambda n: None
        return
    with Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed:,}"),
                  TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        pending = [0]

        def advance(n: int) -> None:
            pending[0] += n
            if pending[0] >= step:
                if total is not None:
                    bar.update(task, total=total())
                bar.advance(task, pending[0])
                pending[0] = 0

        yield advance


def print_error(message: str) -> None:
    """One line on stderr: ``error: <message>``, the message printed verbatim (no markup,
    no emoji codes)."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False,
                      soft_wrap=True)


def interrupt(signum: int, frame: object) -> None:
    """Signal handler (SIGINT, and SIGTERM during a sweep): raise :class:`Interrupted`."""
    raise Interrupted
