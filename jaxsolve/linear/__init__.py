"""Linear systems: differentiable Krylov and relaxation solvers, solvers that learn over
sequences of related systems, and learned search directions (DCDM)."""

from ._bandit import BanditState as BanditState, RelaxationBandit as RelaxationBandit
from ._cg import CG as CG
from ._common import LinearProblem as LinearProblem
from ._dcdm import (
    dcdm_loss as dcdm_loss,
    low_frequency_rhs as low_frequency_rhs,
    train_dcdm as train_dcdm,
)
from ._flexible_cg import FlexibleCG as FlexibleCG
from ._grid_net import GridUNet as GridUNet
from ._krylov import GMRES as GMRES, BiCGStab as BiCGStab
from ._preconditioners import (
    AbstractPreconditioner as AbstractPreconditioner,
    JacobiPreconditioner as JacobiPreconditioner,
    SSORPreconditioner as SSORPreconditioner,
)
from ._recycled_cg import RecycledCG as RecycledCG, RitzSpace as RitzSpace
from ._recycling import (
    GCRODR as GCRODR,
    RecycleSpace as RecycleSpace,
    order_by_similarity as order_by_similarity,
)
from ._relaxation import SOR as SOR, SSOR as SSOR, Jacobi as Jacobi
from ._solve import solve as solve
from ._stencil import Stencil5 as Stencil5
