"""Euclidean projections onto convex sets: `projection(x, hyperparams)`."""

from ._projections import (
    box as box,
    box_section as box_section,
    halfspace as halfspace,
    hyperplane as hyperplane,
    l1_ball as l1_ball,
    l2_ball as l2_ball,
    nonnegative as nonnegative,
    simplex as simplex,
)
