"""Linear systems: differentiable Krylov and relaxation solvers, and solvers that learn over
sequences of related systems."""

from ._cg import CG as CG
from ._krylov import BiCGStab as BiCGStab, GMRES as GMRES
from ._preconditioners import (
    AbstractPreconditioner as AbstractPreconditioner,
    JacobiPreconditioner as JacobiPreconditioner,
    SSORPreconditioner as SSORPreconditioner,
)
from ._relaxation import SOR as SOR, SSOR as SSOR, Jacobi as Jacobi
from ._solve import solve as solve
