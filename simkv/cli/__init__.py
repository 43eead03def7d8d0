"""The ``simkv`` command line: a thin typer layer over the Python API.

One module per command group (:mod:`.trace`, :mod:`.run`, :mod:`.sweep`, :mod:`.replay`,
:mod:`.validate`, :mod:`.calibrate`, :mod:`.engine`); what they share is in :mod:`.console`.
User errors (:class:`simkv.core.errors.SimkvError`) are printed as one red line and exit with status
2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from simkv.cli.calibrate import calibrate_cmd
from simkv.cli.console import console, err_console, interrupt, print_error, progress_bar
from simkv.cli.engine import engine_app
from simkv.cli.replay import replay_cmd
from simkv.cli.run import curve_cmd, regress_cmd, report_cmd, run_cmd
from simkv.cli.sweep import sweep_cmd
from simkv.cli.trace import trace_app
from simkv.cli.validate import validate_cmd
from simkv.core.errors import Interrupted, SimkvError

__all__ = ["app", "console", "err_console", "main", "print_error", "progress_bar"]

Command = TyperCommand | TyperGroup

app = typer.Typer(
    name="simkv",
    help="Simulate tiered KV-cache policies on LLM inference traces.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(trace_app, name="trace")
app.add_typer(engine_app, name="engine")
app.command("run")(run_cmd)
app.command("curve")(curve_cmd)
app.command("sweep")(sweep_cmd)
app.command("report")(report_cmd)
app.command("regress")(regress_cmd)
app.command("replay")(replay_cmd)
app.command("validate")(validate_cmd)
app.command("calibrate")(calibrate_cmd)


def _print_version(value: bool) -> None:
    if value:
        from simkv.version import __version__

        console.print(f"simkv {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Simulate tiered KV-cache policies on LLM inference traces."""


def plain_flags(cmd: Command) -> Command:
    """Show every on/off flag (``--json``, ``--gate``, ``--help``) without a value in help:
    typer labels them ``<bool>``, which reads as if ``--json true`` were accepted."""
    for param in cmd.get_params(typer.Context(cmd)):
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
    for sub in getattr(cmd, "commands", {}).values():
        plain_flags(sub)
    return cmd


def command() -> Command:
    """The ``simkv`` click command, as :func:`main` runs it."""
    return plain_flags(typer.main.get_command(app))


def main() -> None:
    """Entry point of the ``simkv`` console script: user errors exit 2 with one line, Ctrl-C
    exits 130 with "interrupted" (raised as :class:`Interrupted`, which click does not turn
    into its "Aborted!" and status 1)."""
    signal.signal(signal.SIGINT, interrupt)
    try:
        command()(prog_name="simkv")
    except SimkvError as exc:
        print_error(str(exc))
        sys.exit(exc.exit_code)
    except (Interrupted, KeyboardInterrupt):
        err_console.print("interrupted", style="yellow", highlight=False)
        sys.exit(130)
