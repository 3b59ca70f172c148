"""Optimal transport."""

from ._smooth import (
    QuadraticOT as QuadraticOT,
    SmoothOTOutput as SmoothOTOutput,
    SparsityConstrainedOT as SparsityConstrainedOT,
    solve_smooth as solve_smooth,
)
