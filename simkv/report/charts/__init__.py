"""PNG charts for ``simkv report``: matplotlib on the Agg canvas, no pyplot global state.

:mod:`.style` holds the shared look, :mod:`.run` the charts of a run, :mod:`.sweep` those of
a sweep. A chart that does not apply (no archive, zero service time, nothing swept) is
skipped with the reason, never drawn empty.
"""

from simkv.report.charts.run import run_charts
from simkv.report.charts.style import Chart, tick_decimals
from simkv.report.charts.sweep import sweep_charts

__all__ = ["Chart", "run_charts", "sweep_charts", "tick_decimals"]
