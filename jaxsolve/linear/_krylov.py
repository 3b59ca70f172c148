"""Restarted GMRES and BiCGStab for general (non-symmetric) systems, on the core protocol.

`KrylovCycles` is the restarted Arnoldi iteration that GMRES runs and GCRO-DR extends: a loop
step is one cycle of Arnoldi iterations (the one Arnoldi process, `_arnoldi.py`), stopped early
as soon as the least-squares residual meets `tol`; the cycle ends by moving the iterate and
computing the TRUE residual `b − Ax` with one matvec, which is what the solve stops on, so
`successful` always means the true residual met `tol`. Iterations, not cycles, are counted."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Scalar

from .._problem import tree_size
from .._solution import RESULTS
from .._tree import (
    tree_add,
    tree_axpy,
    tree_dtype,
    tree_ravel,
    tree_scale,
    tree_sub,
    tree_where,
    zeros_like,
)
from ._arnoldi import arnoldi_residual, arnoldi_solution, arnoldi_start, arnoldi_step
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


class CycleState(eqx.Module):
    r: Array  # the TRUE residual b − Ax (flattened), computed with a matvec at each restart
    res_norm: Scalar
    ready: Array  # the iterate is final for this residual (GCRO-DR: its projection is added)
    num_iters: Array
    num_matvecs: Array
    status: RESULTS
    recycled: Any = None  # GCRO-DR's recycled space


class KrylovCycles(AbstractLinearIteration):
    """Restarted GMRES(m) on a `LinearProblem` (vectors of any shape, or pytrees, flattened
    inside: the Arnoldi basis is a matrix). One
    loop step is one cycle: Arnoldi iterations (an inner loop, one matvec each) until `m` of
    them, the least-squares residual meets `tol`, the Krylov space is invariant, or the budget
    of `max_iters` iterations is spent; then the iterate moves and the true residual is
    computed (one matvec). `num_steps` reports iterations, not cycles."""

    tol: Any
    m: int = eqx.field(static=True)
    max_iters: int = eqx.field(static=True)
    exact_residual = True
    keep_h = False  # GCRO-DR's update needs the raw Hessenberg matrix

    def loop_steps(self) -> int:
        return self.max_iters + 1  # every cycle does at least one iteration

    def _mv(self, problem):
        _, unravel = tree_ravel(problem.b)
        return lambda v: tree_ravel(problem.operator.mv(unravel(v)))[0]

    def _state(self, r, num_iters, num_matvecs, status, recycled, ready=True):
        res = jnp.sqrt(dot(r, r))
        return CycleState(r, res, jnp.asarray(ready), num_iters, num_matvecs, status, recycled)

    def init(self, problem, y, options):
        r = tree_ravel(tree_sub(problem.b, problem.operator.mv(y)))[0]
        status = initial_status(jnp.array(True))
        return self._state(r, jnp.array(0, jnp.int32), jnp.array(1, jnp.int32), status, None)

    def project(self, s) -> Array | None:
        """Rows every new Arnoldi vector is orthogonalised against (GCRO-DR's C)."""
        return None

    def coefficients(self, s) -> Array | None:
        """GCRO-DR's (k, m) coefficients of the Arnoldi images on C."""
        return None

    def step(self, problem, y, s):
        mv, C = self._mv(problem), self.project(s)
        target = self.tol * problem.norm_b
        a0 = arnoldi_start(s.r, s.res_norm, self.m, keep_h=self.keep_h)
        one = jnp.ones((), s.res_norm.dtype)

        def more(carry):
            a, _, hn, iters = carry
            ls = arnoldi_residual(a)
            return (a.j < self.m) & (ls > target) & (hn > 0) & (iters < self.max_iters)

        def arnoldi(carry):
            a, B, _, iters = carry
            j = a.j
            a, coef, hn = arnoldi_step(mv, a, C)
            if B is not None:
                B = B.at[:, j].set(coef)
            return a, B, hn, iters + 1

        carry = (a0, self.coefficients(s), one, s.num_iters)
        a, B, _, iters = jax.lax.while_loop(more, arnoldi, carry)
        y, recycled = self.update(problem, y, s, a, B)
        y, r = self.residual(problem, y, recycled)
        new = self._state(
            tree_ravel(r)[0], iters, s.num_matvecs + (iters - s.num_iters) + 1, s.status, recycled
        )
        # No progress over a whole cycle: restarted GMRES has stagnated (e.g. a singular A).
        eps = jnp.finfo(new.res_norm.dtype).eps
        stalled = (new.res_norm >= s.res_norm * (1 - 1e3 * eps)) & (s.res_norm > 0) & s.ready
        stalled = stalled & ~(new.res_norm <= target)
        status = status_of(jnp.isfinite(new.res_norm), ~stalled, RESULTS.krylov_stagnation)
        return y, eqx.tree_at(lambda q: q.status, new, status)

    def update(self, problem, y, s, a, B) -> tuple[Any, Any]:
        """The iterate at the end of a cycle (and GCRO-DR's new recycled space)."""
        z = arnoldi_solution(a)
        _, unravel = tree_ravel(y)
        return tree_add(y, unravel(z @ a.V[: self.m])), s.recycled

    def residual(self, problem, y, recycled):
        return y, tree_sub(problem.b, problem.operator.mv(y))

    def converged(self, problem, y, s):
        err = s.res_norm / problem.norm_b
        finite = jnp.isfinite(err)
        conv = s.ready & (err <= self.tol)
        out = s.num_iters >= self.max_iters
        result = RESULTS.where(
            ~finite,
            RESULTS.nonfinite,
            RESULTS.where(conv, RESULTS.successful, RESULTS.max_steps_reached),
        )
        return conv | out | ~finite, result

    def postprocess(self, problem, y, s):
        return y, {"num_steps": s.num_iters, "num_matvecs": s.num_matvecs}


class _AbstractKrylov(AbstractIterativeLinearSolver):
    """GMRES and BiCGStab: their state is the operator itself (no symmetry assumed)."""

    def transpose(self, state, options):
        return state.transpose(), options

    def conj(self, state, options):
        return lx.conj(state), options


class GMRES(_AbstractKrylov):
    """Restarted GMRES(m) for general square systems.

    Each iteration is one Arnoldi step (one matvec); a cycle is `restart` iterations, after
    which (or as soon as the least-squares residual meets `tol`) the iterate is updated and the
    TRUE residual `b − Ax` is computed (one more matvec) to restart from. `num_steps` counts
    iterations, `num_matvecs` every product with `A`. The error measure is the relative
    residual `‖b − Ax‖ / ‖b‖`, and `successful` means the true residual met `tol`. A cycle that
    makes no progress stops with `RESULTS.krylov_stagnation`. Its transpose (for reverse-mode
    derivatives) is GMRES on `Aᵀ`. A `restart` larger than the system size `n` is reduced to
    `n` (the Krylov space cannot grow further).

    **Arguments:**

    - `tol`: tolerance on the relative residual (`None`: 1e-6 in float64, 1e-5 in float32).
    - `max_steps`: the most iterations (Arnoldi steps; a cycle is `restart` of them).
    - `restart`: the Krylov dimension `m` of a cycle (a Python int).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    A = jnp.array([[3.0, 1.0, 0.0], [-1.0, 2.0, 0.5], [0.0, 1.0, 4.0]])
    b = jnp.array([1.0, 0.0, 2.0])
    sol = js.linear.solve(A, b, solver=js.linear.GMRES(tol=1e-6, restart=3))
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, b), atol=1e-5)
    assert sol.stats["num_steps"] <= 3
    ```
    """

    tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=DEFAULT_MAX_STEPS)
    restart: int = eqx.field(static=True, default=20)

    def __check_init__(self):
        if isinstance(self.restart, bool) or not isinstance(self.restart, int) or self.restart < 1:
            raise ValueError(f"GMRES `restart` must be a positive int; got {self.restart!r}.")

    def init(self, operator, options):
        check_square(operator, "GMRES")
        return operator

    def _iteration(self, vector):
        m = min(self.restart, tree_size(vector))
        return KrylovCycles(self.resolved_tol(tree_dtype(vector)), m, self.max_steps)

    def loop_steps(self, vector):
        return self._iteration(vector).loop_steps()

    def iteration(self, state, vector):
        return self._iteration(vector), LinearProblem(state, vector)


class _BiCGStabState(eqx.Module):
    r: Any  # vectors: arrays, or pytrees of arrays
    r_hat: Any
    p: Any
    v: Any
    rho: Scalar
    alpha: Scalar
    omega: Scalar
    res_norm: Scalar
    num_matvecs: Array
    status: RESULTS


class _BiCGStabIteration(AbstractLinearIteration):
    tol: Any

    def init(self, problem, y, options):
        r = tree_sub(problem.b, problem.operator.mv(y))
        one = jnp.ones((), tree_dtype(y))
        zero = zeros_like(r)
        status = initial_status(jnp.array(True))
        return _BiCGStabState(
            r, r, zero, zero, one, one, one, jnp.sqrt(dot(r, r)), jnp.array(1, jnp.int32), status
        )

    def step(self, problem, y, s):
        mv = problem.operator.mv
        tiny = jnp.finfo(tree_dtype(y)).tiny
        rho = dot(s.r_hat, s.r)
        beta = (rho / _nz(s.rho)) * (s.alpha / _nz(s.omega))
        p = tree_axpy(beta, tree_sub(s.p, tree_scale(s.omega, s.v)), s.r)
        v = mv(p)
        rv = dot(s.r_hat, v)
        alpha = rho / _nz(rv)
        h = tree_sub(s.r, tree_scale(alpha, v))
        t = mv(h)
        tt = dot(t, t)
        omega = dot(t, h) / _nz(tt)
        y_new = tree_axpy(omega, h, tree_axpy(alpha, p, y))
        r = tree_sub(h, tree_scale(omega, t))
        # rho = 0 or r̂ᵀv = 0 (the shadow residual became orthogonal), or ω = 0: breakdown.
        ok = (jnp.abs(rho) > tiny) & (jnp.abs(rv) > tiny)
        # ‖h‖² only when ω vanished (rare): not a pass over the vectors every iteration.
        omega_ok = jax.lax.cond(
            jnp.abs(omega) > tiny, lambda: jnp.array(True), lambda: dot(h, h) <= tiny
        )
        ok = ok & omega_ok
        finite = jnp.isfinite(rho) & jnp.isfinite(rv) & jnp.isfinite(omega)
        y = tree_where(ok & finite, y_new, y)
        res = jnp.where(ok & finite, jnp.sqrt(dot(r, r)), s.res_norm)
        status = status_of(finite, ok, RESULTS.krylov_breakdown)
        new = _BiCGStabState(r, s.r_hat, p, v, rho, alpha, omega, res, s.num_matvecs + 2, status)
        return y, new


def _nz(x):
    return jnp.where(x == 0, jnp.ones_like(x), x)


class BiCGStab(_AbstractKrylov):
    """BiCGStab (van der Vorst 1992) for general square systems: two matvecs per iteration,
    short recurrences, no restarts.

    The error measure is the relative residual `‖b − Ax‖ / ‖b‖`. The iteration stops on its
    recursive residual; the TRUE residual is then checked (one matvec): if it misses `tol` the
    result is `RESULTS.inaccurate_residual`. A vanishing inner product (the method's breakdown)
    stops with `RESULTS.krylov_breakdown` instead of producing NaN; NaN in the data gives
    `RESULTS.nonfinite`.

    **Arguments:**

    - `tol`: tolerance on the relative residual (`None`: 1e-6 in float64, 1e-5 in float32).
    - `max_steps`: the most iterations (two matvecs each).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    A = jnp.array([[3.0, 1.0, 0.0], [-1.0, 2.0, 0.5], [0.0, 1.0, 4.0]])
    b = jnp.array([1.0, 0.0, 2.0])
    sol = js.linear.solve(A, b, solver=js.linear.BiCGStab(tol=1e-6))
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, b), atol=1e-5)
    ```
    """

    tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=DEFAULT_MAX_STEPS)

    def init(self, operator, options):
        check_square(operator, "BiCGStab")
        return operator

    def iteration(self, state, vector):
        tol = self.resolved_tol(tree_dtype(vector))
        return _BiCGStabIteration(tol), LinearProblem(state, vector)
