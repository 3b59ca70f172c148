"""Convex quadratic programs as differentiable layers: `js.qp.solve` with OSQP's ADMM."""

from ._admm import ADMM as ADMM
from ._problem import QPProblem as QPProblem
from ._solve import QPSolution as QPSolution, solve as solve
