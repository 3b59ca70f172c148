"""Restarted GMRES and BiCGStab for general (non-symmetric) systems, run by the core loop."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Scalar

from .._checks import check_max_steps, check_tol
from .._solution import RESULTS
from ._common import LinearIteration, check_square, dot, run_iteration


class _GMRESState(eqx.Module):
    r: Array
    res_norm: Scalar
    num_matvecs: Array


class _GMRESIteration(LinearIteration):
    restart: int = eqx.field(static=True)

    def init(self, fn, y, args):
        b, _ = args
        r = b - fn.mv(y)
        return _GMRESState(r, jnp.sqrt(dot(r, r)), jnp.array(1, jnp.int32))

    def step(self, fn, y, args, state):
        # One cycle: `restart` Arnoldi steps (modified Gram-Schmidt, applied twice for
        # orthogonality), then the small least-squares problem min ‖βe₁ − H z‖.
        b, _ = args
        m = self.restart
        beta = state.res_norm
        shape = y.shape
        v0 = (state.r / jnp.where(beta > 0, beta, 1)).reshape(-1)
        V = jnp.zeros((m + 1, v0.size), y.dtype).at[0].set(v0)
        H = jnp.zeros((m + 1, m), y.dtype)

        def arnoldi(j, carry):
            V, H = carry
            w = fn.mv(V[j].reshape(shape)).reshape(-1)
            mask = (jnp.arange(m + 1) <= j).astype(y.dtype)
            h = (V @ w) * mask
            # `h @ V`, not `V.T @ h`: XLA's CPU product with a transposed matrix is 2-5x slower.
            w = w - h @ V
            h2 = (V @ w) * mask
            w = w - h2 @ V
            h = h + h2
            hn = jnp.sqrt(jnp.sum(w * w))
            # A happy breakdown (hn = 0) leaves the next basis vector zero: the least-squares
            # solve below then ignores it.
            V = V.at[j + 1].set(w / jnp.where(hn > 0, hn, 1))
            H = H.at[:, j].set(h.at[j + 1].set(hn))
            return V, H

        V, H = jax.lax.fori_loop(0, m, arnoldi, (V, H))
        e1 = jnp.zeros(m + 1, y.dtype).at[0].set(beta)
        z = jnp.linalg.lstsq(H, e1)[0]
        y = y + (z @ V[:m]).reshape(shape)
        r = b - fn.mv(y)
        res_norm = jnp.sqrt(dot(r, r))
        # No progress over a whole cycle: GMRES(m) has stagnated (e.g. a singular A).
        stalled = res_norm >= beta * (1 - 1e3 * jnp.finfo(y.dtype).eps)
        result = RESULTS.where(stalled & (beta > 0), RESULTS.stagnation, RESULTS.successful)
        return y, _GMRESState(r, res_norm, state.num_matvecs + m + 1), result


class _AbstractKrylov(lx.AbstractLinearSolver):
    """GMRES and BiCGStab: their state is the operator itself (no symmetry assumed)."""

    def transpose(self, state, options):
        return state.transpose(), options

    def conj(self, state, options):
        return lx.conj(state), options

    def assume_full_rank(self):
        return True


class GMRES(_AbstractKrylov):
    """Restarted GMRES(m) for general square systems.

    Each step of the loop is one restart cycle of `restart` Arnoldi steps (so `num_steps`
    counts cycles; `num_matvecs` counts products with `A`). The error measure is the relative
    residual `‖b − Ax‖ / ‖b‖`. A cycle that makes no progress stops with
    `RESULTS.stagnation`. Its transpose (for reverse-mode derivatives) is GMRES on `Aᵀ`.

    **Arguments:**

    - `tol`: tolerance on the relative residual.
    - `max_steps`: the largest number of restart cycles.
    - `restart`: the Krylov dimension `m` of a cycle (a Python int).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    A = jnp.array([[3.0, 1.0, 0.0], [-1.0, 2.0, 0.5], [0.0, 1.0, 4.0]])
    b = jnp.array([1.0, 0.0, 2.0])
    sol = js.linear.solve(A, b, solver=js.linear.GMRES(tol=1e-10, restart=3))
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, b), atol=1e-8)
    ```
    """

    tol: float | Array = 1e-6
    max_steps: int = eqx.field(static=True, default=1_000)
    restart: int = eqx.field(static=True, default=20)

    def __check_init__(self):
        check_tol(self.tol)
        check_max_steps(self.max_steps)
        if not isinstance(self.restart, int) or self.restart < 1:
            raise ValueError(f"GMRES `restart` must be a positive int; got {self.restart!r}.")

    def init(self, operator, options):
        check_square(operator, "GMRES")
        return operator

    def compute(self, state, vector, options):
        n = vector.size
        iteration = _GMRESIteration(min(self.restart, n))
        return run_iteration(iteration, state, vector, options, self.tol, self.max_steps)


class _BiCGStabState(eqx.Module):
    r: Array
    r_hat: Array
    p: Array
    v: Array
    rho: Scalar
    alpha: Scalar
    omega: Scalar
    res_norm: Scalar
    num_matvecs: Array


class _BiCGStabIteration(LinearIteration):
    def init(self, fn, y, args):
        b, _ = args
        r = b - fn.mv(y)
        one = jnp.ones((), y.dtype)
        zero = jnp.zeros_like(r)
        return _BiCGStabState(
            r, r, zero, zero, one, one, one, jnp.sqrt(dot(r, r)), jnp.array(1, jnp.int32)
        )

    def step(self, fn, y, args, s):
        tiny = jnp.finfo(y.dtype).tiny
        rho = dot(s.r_hat, s.r)
        beta = (rho / _nz(s.rho)) * (s.alpha / _nz(s.omega))
        p = s.r + beta * (s.p - s.omega * s.v)
        v = fn.mv(p)
        rv = dot(s.r_hat, v)
        alpha = rho / _nz(rv)
        h = s.r - alpha * v
        t = fn.mv(h)
        tt = dot(t, t)
        omega = dot(t, h) / _nz(tt)
        y_new = y + alpha * p + omega * h
        r = h - omega * t
        # rho = 0 or r̂ᵀv = 0 (the shadow residual became orthogonal), or ω = 0: breakdown.
        ok = (jnp.abs(rho) > tiny) & (jnp.abs(rv) > tiny)
        ok = ok & ((jnp.abs(omega) > tiny) | (dot(h, h) <= tiny))
        y = jnp.where(ok, y_new, y)
        new = _BiCGStabState(
            r, s.r_hat, p, v, rho, alpha, omega, jnp.sqrt(dot(r, r)), s.num_matvecs + 2
        )
        new = eqx.tree_at(lambda q: q.res_norm, new, jnp.where(ok, new.res_norm, s.res_norm))
        return y, new, RESULTS.where(ok, RESULTS.successful, RESULTS.breakdown)


def _nz(x):
    return jnp.where(x == 0, jnp.ones_like(x), x)


class BiCGStab(_AbstractKrylov):
    """BiCGStab (van der Vorst 1992) for general square systems: two matvecs per iteration,
    short recurrences, no restarts.

    The error measure is the relative residual `‖b − Ax‖ / ‖b‖`. A vanishing inner product
    (the method's breakdown) stops with `RESULTS.breakdown` instead of producing NaN.

    **Arguments:**

    - `tol`: tolerance on the relative residual.
    - `max_steps`: the largest number of iterations.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    A = jnp.array([[3.0, 1.0, 0.0], [-1.0, 2.0, 0.5], [0.0, 1.0, 4.0]])
    b = jnp.array([1.0, 0.0, 2.0])
    sol = js.linear.solve(A, b, solver=js.linear.BiCGStab(tol=1e-10))
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, b), atol=1e-8)
    ```
    """

    tol: float | Array = 1e-6
    max_steps: int = eqx.field(static=True, default=10_000)

    def __check_init__(self):
        check_tol(self.tol)
        check_max_steps(self.max_steps)

    def init(self, operator, options):
        check_square(operator, "BiCGStab")
        return operator

    def compute(self, state, vector, options):
        return run_iteration(_BiCGStabIteration(), state, vector, options, self.tol, self.max_steps)
