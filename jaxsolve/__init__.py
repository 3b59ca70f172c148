"""jaxsolve: differentiable solvers in JAX."""

from . import (
    bilevel as bilevel,
    linear as linear,
    ot as ot,
    projections as projections,
    prox as prox,
    qp as qp,
)
from ._adjoint import (
    AbstractAdjoint as AbstractAdjoint,
    ImplicitAdjoint as ImplicitAdjoint,
    UnrollAdjoint as UnrollAdjoint,
    custom_fixed_point as custom_fixed_point,
    custom_root as custom_root,
)
from ._constrained import (
    LBFGSB as LBFGSB,
    AbstractConstrainedMinimiser as AbstractConstrainedMinimiser,
    ConstrainedMinimiseProblem as ConstrainedMinimiseProblem,
    ProjectedGradient as ProjectedGradient,
    ProximalGradient as ProximalGradient,
)
from ._iterate import (
    AbstractIterativeSolver as AbstractIterativeSolver,
    converged_by as converged_by,
)
from ._least_squares import (
    AbstractLeastSquaresSolver as AbstractLeastSquaresSolver,
    GaussNewton as GaussNewton,
    LeastSquaresProblem as LeastSquaresProblem,
    LevenbergMarquardt as LevenbergMarquardt,
    least_squares as least_squares,
)
from ._minimise import (
    LBFGS as LBFGS,
    AbstractMinimiser as AbstractMinimiser,
    GradientDescent as GradientDescent,
    OptaxMinimiser as OptaxMinimiser,
    minimise as minimise,
)
from ._neumann import Neumann as Neumann
from ._problem import (
    AbstractProblem as AbstractProblem,
    FixedPointProblem as FixedPointProblem,
    MinimiseProblem as MinimiseProblem,
    RootProblem as RootProblem,
)
from ._root import (
    AbstractFixedPointSolver as AbstractFixedPointSolver,
    AbstractRootFinder as AbstractRootFinder,
    AndersonFixedPoint as AndersonFixedPoint,
    FixedPointIteration as FixedPointIteration,
    Newton as Newton,
    fixed_point as fixed_point,
    root_find as root_find,
)
from ._solution import RESULTS as RESULTS, Solution as Solution
from ._solve import iterative_solve as iterative_solve

__version__ = "0.1.0"
