"""Conjugate gradients, optionally preconditioned, run by the core loop."""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Scalar

from .._checks import check_max_steps, check_tol
from .._solution import RESULTS
from ._common import LinearIteration, check_square, dot, run_iteration
from ._preconditioners import AbstractPreconditioner, as_preconditioner


class _CGState(eqx.Module):
    r: Array
    z: Array
    p: Array
    rz: Scalar
    res_norm: Scalar
    num_matvecs: Array


class _CGIteration(LinearIteration):
    precond: Any  # r -> M⁻¹ r, or None

    def _m(self, r):
        return r if self.precond is None else self.precond(r)

    def init(self, fn, y, args):
        b, _ = args
        r = b - fn.mv(y)
        z = self._m(r)
        rz = dot(r, z)
        rr = rz if self.precond is None else dot(r, r)
        return _CGState(r, z, z, rz, jnp.sqrt(rr), jnp.array(1, jnp.int32))

    def step(self, fn, y, args, state):
        ap = fn.mv(state.p)
        pap = dot(state.p, ap)
        # pᵀAp ≤ 0 (A not positive definite) or rᵀM⁻¹r ≤ 0 (M not positive definite): breakdown.
        ok = (pap > 0) & (state.rz > 0)
        alpha = jnp.where(ok, state.rz / jnp.where(ok, pap, 1), 0)
        y = y + alpha * state.p
        r = state.r - alpha * ap
        z = self._m(r)
        rz = dot(r, z)
        rr = rz if self.precond is None else dot(r, r)
        beta = rz / jnp.where(ok, state.rz, 1)
        p = z + beta * state.p
        new = _CGState(r, z, p, rz, jnp.sqrt(rr), state.num_matvecs + 1)
        new = eqx.tree_at(lambda s: s.res_norm, new, jnp.where(ok, new.res_norm, state.res_norm))
        result = RESULTS.where(ok, RESULTS.successful, RESULTS.breakdown)
        return y, new, result


class CG(lx.AbstractLinearSolver):
    """Conjugate gradients for symmetric positive definite `A`, with an optional preconditioner.

    Runs in jaxsolve's loop (so `sol.stats` has `num_steps`, `error`, `num_matvecs`, and
    failure is a result). The error measure is the relative residual `‖b − Ax‖ / ‖b‖`; the
    solve stops when it is at most `tol`. A non-positive curvature `pᵀAp ≤ 0` (a matrix that is
    not positive definite) stops the solve with `RESULTS.breakdown` instead of producing NaN.
    It is a `lineax.AbstractLinearSolver`, so it also serves as the adjoint solver of other
    families: `js.ImplicitAdjoint(linear_solver=js.linear.CG(...))`.

    **Arguments:**

    - `tol`: tolerance on the relative residual.
    - `max_steps`: the largest number of iterations (one matvec each).
    - `preconditioner`: `None`, `js.linear.JacobiPreconditioner()`,
      `js.linear.SSORPreconditioner(omega)`, a lineax operator applying `M⁻¹`, or any callable
      `r -> M⁻¹ r` (symmetric positive definite).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    sol = js.linear.solve(A, jnp.array([1.0, 2.0]), solver=js.linear.CG(tol=1e-10))
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, jnp.array([1.0, 2.0])))
    assert sol.stats["num_steps"] <= 2
    ```
    """

    tol: float | Array = 1e-6
    max_steps: int = eqx.field(static=True, default=10_000)
    preconditioner: AbstractPreconditioner | None = eqx.field(
        default=None, converter=as_preconditioner
    )

    def __check_init__(self):
        check_tol(self.tol)
        check_max_steps(self.max_steps)

    def init(self, operator, options):
        check_square(operator, "CG")
        precond = None if self.preconditioner is None else self.preconditioner.build(operator)
        return operator, precond

    def compute(self, state, vector, options):
        operator, precond = state
        return run_iteration(
            _CGIteration(precond), operator, vector, options, self.tol, self.max_steps
        )

    def transpose(self, state, options):
        # CG assumes a symmetric operator: Aᵀ = A, and M⁻¹ is symmetric too.
        return state, options

    def conj(self, state, options):
        operator, precond = state
        return (lx.conj(operator), precond), options

    def assume_full_rank(self):
        return True
