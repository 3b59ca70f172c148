"""Conjugate gradients, optionally preconditioned: THE CG recurrence of jaxsolve (`CG` and
`RecycledCG` run it; `FlexibleCG` shares its line-search update `descend`)."""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Scalar

from .._solution import RESULTS
from .._tree import tree_axpy, tree_dtype, tree_scale, tree_sub
from ._common import (
    DEFAULT_MAX_STEPS,
    AbstractIterativeLinearSolver,
    AbstractLinearIteration,
    LinearProblem,
    check_square,
    dot,
    initial_status,
    status_of,
)
from ._preconditioners import AbstractPreconditioner, as_preconditioner


def descend(y, r, p, ap, num):
    """The exact line search along a conjugate direction `p` (`ap = A p`): `α = num / pᵀAp`,
    `y + α p`, `r − α A p`. A curvature `pᵀAp ≤ 0` takes no step (`ok` False); `finite` says
    whether `pᵀAp` is finite (NaN data: `nonfinite`, not a curvature failure)."""
    pap = dot(p, ap)
    ok = pap > 0
    alpha = jnp.where(ok, num / jnp.where(ok, pap, 1), 0)
    return tree_axpy(alpha, p, y), tree_sub(r, tree_scale(alpha, ap)), pap, ok, jnp.isfinite(pap)


class _CGState(eqx.Module):
    r: Any  # vectors: arrays, or pytrees of arrays
    p: Any
    rz: Scalar
    res_norm: Scalar
    num_matvecs: Array
    status: RESULTS
    P: Array | None  # (harvest, n): the first search directions (RecycledCG), else None
    AP: Array | None


class CGIteration(AbstractLinearIteration):
    """Preconditioned CG on a `LinearProblem`. `precond`: `r -> M⁻¹ r` or None; `valid`: the
    preconditioner's parameters are valid; `harvest`: keep the first `harvest` directions and
    their images (no extra matvec) for a Rayleigh-Ritz step afterwards."""

    tol: Any
    precond: Any = None
    valid: Any = True
    harvest: int = eqx.field(static=True, default=0)

    def _m(self, r):
        return r if self.precond is None else self.precond(r)

    def init(self, problem, y, options):
        r = tree_sub(problem.b, problem.operator.mv(y))
        z = self._m(r)
        rz = dot(r, z)
        rr = rz if self.precond is None else dot(r, r)
        P = AP = None
        if self.harvest:  # flat vectors only (RecycledCG flattens its systems)
            P = AP = jnp.zeros((self.harvest, r.size), r.dtype)
        status = initial_status(jnp.asarray(self.valid))
        return _CGState(r, z, rz, jnp.sqrt(rr), jnp.array(1, jnp.int32), status, P, AP)

    def step(self, problem, y, s):
        ap = problem.operator.mv(s.p)
        y, r, _, ok, finite = descend(y, s.r, s.p, ap, s.rz)
        # rᵀM⁻¹r ≤ 0 with r ≠ 0: the preconditioner is not positive definite.
        ok = ok & (s.rz > 0)
        finite = finite & jnp.isfinite(s.rz)
        z = self._m(r)
        rz = dot(r, z)
        rr = rz if self.precond is None else dot(r, r)
        beta = rz / jnp.where(ok, s.rz, 1)
        P, AP = s.P, s.AP
        if self.harvest:
            # A one-row update in place (a `where` over the whole buffer would copy it).
            j = s.num_matvecs - 1
            jj = jnp.minimum(j, self.harvest - 1)
            keep = j < self.harvest
            P = P.at[jj].set(jnp.where(keep, s.p.reshape(-1), P[jj]))
            AP = AP.at[jj].set(jnp.where(keep, ap.reshape(-1), AP[jj]))
        res = jnp.where(ok, jnp.sqrt(rr), s.res_norm)
        status = status_of(finite, ok, RESULTS.not_positive_definite)
        return y, _CGState(r, tree_axpy(beta, s.p, z), rz, res, s.num_matvecs + 1, status, P, AP)


class CG(AbstractIterativeLinearSolver):
    """Conjugate gradients for symmetric positive definite `A`, with an optional preconditioner.

    Runs in jaxsolve's loop (so `sol.stats` has `num_steps` (iterations, one matvec each),
    `error`, `num_matvecs`, and failure is a result). The error measure is the relative
    residual `‖b − Ax‖ / ‖b‖`; the iteration stops when its recursive residual is at most
    `tol`, then the TRUE residual is checked with one more matvec (`stats["error"]` is the true
    one; a true residual that misses `tol` is `RESULTS.inaccurate_residual`). A non-positive
    curvature `pᵀAp ≤ 0` (an operator or preconditioner that is not positive definite) stops
    the solve with `RESULTS.not_positive_definite` instead of producing NaN; NaN in the data
    gives `RESULTS.nonfinite`; a traced invalid preconditioner parameter (SSOR's ω outside
    (0, 2)) gives `RESULTS.invalid_input`, per member under `vmap`.
    It is a `lineax.AbstractLinearSolver`, so it also serves as the adjoint solver of other
    families: `js.ImplicitAdjoint(linear_solver=js.linear.CG(...))`.

    **Arguments:**

    - `tol`: tolerance on the relative residual (`None`: 1e-6 in float64, 1e-5 in float32).
    - `max_steps`: the largest number of iterations (one matvec each).
    - `preconditioner`: `None`, `js.linear.JacobiPreconditioner()`,
      `js.linear.SSORPreconditioner(omega)`, a lineax operator applying `M⁻¹`, or any callable
      `r -> M⁻¹ r` (symmetric positive definite).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    sol = js.linear.solve(A, jnp.array([1.0, 2.0]), solver=js.linear.CG(tol=1e-6))
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, jnp.array([1.0, 2.0])))
    assert sol.stats["num_steps"] <= 2
    ```
    """

    tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=DEFAULT_MAX_STEPS)
    preconditioner: AbstractPreconditioner | None = eqx.field(
        default=None, converter=as_preconditioner
    )

    def init(self, operator, options):
        check_square(operator, "CG")
        if self.preconditioner is None:
            return operator, None, True
        p = self.preconditioner
        return operator, p.build(operator), p.valid(operator)

    def iteration(self, state, vector):
        operator, precond, valid = state
        tol = self.resolved_tol(tree_dtype(vector))
        return CGIteration(tol, precond, valid), LinearProblem(operator, vector)

    def transpose(self, state, options):
        # CG assumes a symmetric operator: Aᵀ = A, and M⁻¹ is symmetric too.
        return state, options

    def conj(self, state, options):
        operator, precond, valid = state
        return (lx.conj(operator), precond, valid), options
