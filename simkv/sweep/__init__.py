"""Parameter sweeps: a scenario over a grid of overrides, locally or on Ray, resumable.

    from simkv.sweep import sweep, select_winner, write_winner
    df = sweep("scenarios/three-tier-adaptive.yaml", "traces/small.parquet",
               {"ttl.params.alpha": [0.5, 1, 2], "ttl.params.base_ttl": [300, 600]},
               out_dir="runs/sweep", workers=2)
    best = select_winner(df, "cost_saved", ["ttft_p90<2.0"])
    write_winner("runs/sweep", best)
"""

from simkv.sweep.core import (
    SweepOptions,
    SweepPlan,
    SweepProgress,
    cell_scenario,
    plan_sweep,
    run_plan,
    sweep,
    write_winner,
)
from simkv.sweep.grid import Axis, Cell, Grid, cell_id
from simkv.sweep.results import CellRecord
from simkv.sweep.winner import Constraint, NoFeasibleCell, Objective, Winner, select_winner

__all__ = [
    "Axis",
    "Cell",
    "CellRecord",
    "Constraint",
    "Grid",
    "NoFeasibleCell",
    "Objective",
    "SweepOptions",
    "SweepPlan",
    "SweepProgress",
    "Winner",
    "cell_id",
    "cell_scenario",
    "plan_sweep",
    "run_plan",
    "select_winner",
    "sweep",
    "write_winner",
]
