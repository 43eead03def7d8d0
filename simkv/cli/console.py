"""What the commands share: the consoles, option types, the progress bar, the error line, the
notes after a run and the interrupt handler."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from simkv.core.errors import Interrupted

if TYPE_CHECKING:
    from simkv.api import Result

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


def run_notes(result: Result, out: Path | None) -> None:
    """Notes on stderr after ``simkv run``: why a configured tier served nothing
    (:func:`simkv.report.tiers.idle_tier_hints`), and that nothing was saved without ``-o``."""
    from simkv.report.tiers import idle_tier_hints

    for line in idle_tier_hints(result.summary, result.scenario):
        err_console.print(f"[yellow]note: {escape(line)}[/]", highlight=False, soft_wrap=True)
    if out is None:
        err_console.print("note: nothing was saved; add -o DIR to write requests.parquet, "
                          "timeline.parquet, summary.json and scenario.yaml (then 'simkv report "
                          "DIR' draws the charts)", highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    """One line on stderr: ``error: <message>``, the message printed verbatim (no markup,
    no emoji codes)."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False,
                      soft_wrap=True)


def interrupt(signum: int, frame: object) -> None:
    """Signal handler (SIGINT, and SIGTERM during a sweep): raise :class:`Interrupted`."""
    raise Interrupted
