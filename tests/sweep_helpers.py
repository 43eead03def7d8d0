"""The scenario and the 4-cell grid the sweep tests run (as a dict and as ``--grid`` options)."""

from __future__ import annotations

from tests.conftest import ROOT

SCENARIO = ROOT / "scenarios" / "three-tier-adaptive.yaml"
GRID = {"ttl.params.alpha": [0.5, 2.0], "ttl.params.base_ttl": [60, 600]}
GRID_ARGS = ["--grid", "ttl.params.alpha=0.5,2.0", "--grid", "ttl.params.base_ttl=60,600"]
