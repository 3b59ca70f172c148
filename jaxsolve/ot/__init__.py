"""jaxsolve.ot: differentiable entropic optimal transport.

`Geometry` / `PointCloud` describe the cost, `solve` runs an `AbstractOTSolver` (`Sinkhorn`,
`SparseNewton`, ...) on an `OTProblem` and returns an `OTSolution` (a `js.Solution`);
derivatives come from the implicit function theorem on `OTProblem.optimality`
(`ot_optimality`), shared by every solver.

To add a solver, subclass `AbstractOTSolver` (see `jaxsolve/ot/_base.py`): implement the core
protocol (`init`, `step`, `terminate`, `error`) over the potentials `(f, g)` and an
`OTProblem`; `solve` does the rest (validation, loop, implicit derivative, throw, output).
To add a Sinkhorn acceleration, subclass `AbstractSinkhornAcceleration`.
"""

from ._acceleration import AbstractSinkhornAcceleration as AbstractSinkhornAcceleration
from ._anderson import AndersonSinkhorn as AndersonSinkhorn
from ._barycenter import (
    BarycenterProblem as BarycenterProblem,
    BarycenterSolution as BarycenterSolution,
    IterativeBregman as IterativeBregman,
    barycenter as barycenter,
)
from ._base import AbstractOTSolver as AbstractOTSolver
from ._costs import (
    AbstractCost as AbstractCost,
    Cosine as Cosine,
    PNorm as PNorm,
    SqEuclidean as SqEuclidean,
)
from ._coupling import coupling as coupling
from ._divergence import sinkhorn_divergence as sinkhorn_divergence
from ._epsilon_scaling import EpsilonScaling as EpsilonScaling
from ._geometry import (
    AbstractGeometry as AbstractGeometry,
    Geometry as Geometry,
    PointCloud as PointCloud,
)
from ._gw import (
    GromovWasserstein as GromovWasserstein,
    GWProblem as GWProblem,
    GWSolution as GWSolution,
    solve_gw as solve_gw,
)
from ._low_rank import (
    LowRankOTProblem as LowRankOTProblem,
    LowRankOTSolution as LowRankOTSolution,
    LowRankSinkhorn as LowRankSinkhorn,
)
from ._momentum import Momentum as Momentum
from ._output import OTSolution as OTSolution
from ._problem import OTProblem as OTProblem, ot_optimality as ot_optimality
from ._sinkhorn import Sinkhorn as Sinkhorn
from ._smooth import (
    QuadraticOT as QuadraticOT,
    SmoothOTOutput as SmoothOTOutput,
    SparsityConstrainedOT as SparsityConstrainedOT,
    solve_smooth as solve_smooth,
)
from ._solve import solve as solve
from ._sparse_newton import SparseNewton as SparseNewton
from ._univariate import (
    sliced_wasserstein as sliced_wasserstein,
    wasserstein_1d as wasserstein_1d,
)
