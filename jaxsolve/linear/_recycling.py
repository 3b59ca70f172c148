"""Krylov subspace recycling across a sequence of systems: GCRO-DR(m, k) (Parks, de Sturler,
Mackey, Johnson & Maiti 2006), as used by SKR (Wang et al., ICLR 2024)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._checks import check_max_steps, check_tol
from .._solution import Solution
from .._tree import tree_ravel
from ._arnoldi import arnoldi_solution
from ._common import (
    DEFAULT_MAX_STEPS,
    LinearProblem,
    initial_status,
    linear_default_tol,
    run_iteration,
)
from ._krylov import KrylovCycles
from ._solve import as_vector, flat_system


class RecycleSpace(eqx.Module):
    """The `k` vectors carried from one solve to the next (rows of `U`, shaped like `b`
    flattened), and whether they hold anything yet. A pytree: carry it through `lax.scan`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    space = js.linear.GCRODR(restart=10, recycle=3).init(jnp.ones(8))
    assert space.U.shape == (3, 8) and not bool(space.valid)
    ```
    """

    U: Array  # (k, n)
    valid: Array  # bool


class _Recycled(eqx.Module):
    U: Array  # (k, n), A U = C
    C: Array  # (k, n), orthonormal rows
    valid: Array
    pending: Array  # (n,): the projection onto U found by `init`, added at the first restart


def _harmonic_update(Vhat, What, G, WV, k):
    """New recycle space from the Arnoldi-like relation `A V̂ᵀ = Ŵᵀ G`: the `k` harmonic Ritz
    vectors of smallest harmonic Ritz value, `Gᵀ G z = θ Gᵀ (Ŵ V̂ᵀ) z`."""
    GtG = G.T @ G
    GtWV = G.T @ WV
    M = jnp.linalg.solve(GtG + 1e-14 * jnp.trace(GtG) * jnp.eye(GtG.shape[0]), GtWV)
    mu, Z = jnp.linalg.eig(M)  # mu = 1/θ; keep the largest |mu|
    idx = jnp.argsort(-jnp.abs(mu))[:k]
    P = jnp.real(Z[:, idx]).astype(G.dtype)
    Q, R = jnp.linalg.qr(G @ P)
    C = Q.T @ What
    Y = P.T @ Vhat
    U = jax.scipy.linalg.solve_triangular(R, Y, trans="T", lower=False)
    return U, C


class _GCRODRIteration(KrylovCycles):
    """GCRO-DR(m, k) on a `LinearProblem` of flat vectors: `KrylovCycles` (the same Arnoldi
    process, with each new vector also orthogonalised against `C`), whose restart step also
    updates the recycled space. `init` prepares the carried space (`options["space"]`) for
    this operator: `k` matvecs to re-orthonormalise `A U = C`."""

    k: int = eqx.field(static=True, default=1)
    keep_h = True

    def init(self, problem, y, options):
        space = options["space"]
        mv = problem.operator.mv
        r = problem.b - mv(y)
        U = space.U
        AU = jax.vmap(mv)(U)
        Q, R = jnp.linalg.qr(AU.T)
        Rd = jnp.where(jnp.abs(jnp.diag(R)) > 0, 0, 1)
        R = R + jnp.diag(Rd.astype(R.dtype))
        C = jnp.where(space.valid, Q.T, 0)
        U = jnp.where(space.valid, jax.scipy.linalg.solve_triangular(R, U, trans="T"), 0)
        cr = C @ r
        r = r - cr @ C
        recycled = _Recycled(U, C, space.valid, cr @ U)
        k_mv = jnp.where(space.valid, self.k, 0).astype(jnp.int32)
        status = initial_status(jnp.array(True))
        # The iterate still lacks its projection on U (added by the first cycle): not final.
        return self._state(r, jnp.array(0, jnp.int32), 1 + k_mv, status, recycled, ~space.valid)

    def project(self, s):
        return s.recycled.C

    def coefficients(self, s):
        return jnp.zeros((self.k, self.m), s.r.dtype)

    def update(self, problem, y, s, a, B):
        m, k = self.m, self.k
        rec = s.recycled
        dtype = y.dtype
        V, H = a.V, a.H
        z = arnoldi_solution(a)
        y = y + rec.pending + z @ V[:m] - (B @ z) @ rec.U
        e1 = jnp.zeros(m + 1, dtype).at[0].set(a.beta)
        r_cycle = (e1 - H @ z) @ V  # the residual in exact arithmetic

        # Update the recycle space from the augmented relation A [Ũ; V_m]ᵀ = [C; V_{m+1}]ᵀ G.
        unorm = jnp.sqrt(jnp.sum(rec.U**2, axis=1))
        dinv = jnp.where(rec.valid, 1 / jnp.where(unorm > 0, unorm, 1), jnp.ones_like(unorm))
        Ut = rec.U * jnp.where(unorm > 0, 1 / jnp.where(unorm > 0, unorm, 1), 0)[:, None]
        G = jnp.zeros((k + m + 1, k + m), dtype)
        G = G.at[:k, :k].set(jnp.diag(dinv)).at[:k, k:].set(B).at[k:, k:].set(H)
        Vhat = jnp.concatenate([Ut, V[:m]])
        What = jnp.concatenate([rec.C, V])
        WV = jnp.zeros((k + m + 1, k + m), dtype)
        WV = WV.at[:k, :k].set(rec.C @ Ut.T).at[k:, :k].set(V @ Ut.T)
        WV = WV.at[k : k + m, k:].set(jnp.eye(m, dtype=dtype))
        U, C = _harmonic_update(Vhat, What, G, WV, k)
        ok = jnp.all(jnp.isfinite(U)) & jnp.all(jnp.isfinite(C))
        U, C = jnp.where(ok, U, rec.U), jnp.where(ok, C, rec.C)
        cr = C @ r_cycle
        y = y + cr @ U
        return y, _Recycled(U, C, rec.valid | ok, jnp.zeros_like(rec.pending))

    def residual(self, problem, y, recycled):
        # The TRUE residual, kept orthogonal to C (a correction of rounding size, A U = C).
        r = problem.b - problem.operator.mv(y)
        cr = recycled.C @ r
        return y + cr @ recycled.U, r - cr @ recycled.C


class GCRODR(eqx.Module):
    """GCRO-DR(m, k): restarted GMRES that carries a `k`-dimensional subspace — harmonic Ritz
    vectors for the eigenvalues nearest zero — from cycle to cycle and from one system to the
    next (Parks et al. 2006). Over a sequence of related systems (the SKR setting of Wang et
    al., ICLR 2024: PDE instances generated as training data), the recycled space deflates the
    slow part of the spectrum, so later systems need far fewer matrix–vector products.

    Pure: `space = gcrodr.init(b)` then `sol, space = gcrodr.solve(A, b, space)` for each
    system, in a Python loop or `lax.scan`. For each new `A` the `k` recycled vectors cost `k`
    matvecs (to re-orthonormalise `A U`); a cycle costs at most `m` (it stops as soon as the
    Arnoldi least-squares residual meets `tol`). `sol.stats` has `num_steps`
    (iterations: Arnoldi steps, as for `GMRES`), `num_matvecs` and `error` (the true
    `‖b − Ax‖/‖b‖`). Derivatives are not provided here
    (use `js.linear.solve` for a differentiable solve); order similar systems next to each
    other with `js.linear.order_by_similarity`.

    **Arguments:**

    - `tol`: tolerance on the relative residual (`None`: 1e-6 in float64, 1e-5 in float32).
    - `max_steps`: the most iterations per system (Arnoldi steps; a cycle is `restart`).
    - `restart`: `m`, Arnoldi steps per cycle.
    - `recycle`: `k`, vectors carried (`k < m`, and `k <` the system size; a `restart`
      larger than the system size is reduced to it).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    gcrodr = js.linear.GCRODR(tol=1e-6, restart=10, recycle=4)
    b = jnp.ones((6, 6))
    space = gcrodr.init(b)
    for c in [0.0, 0.01]:
        A = js.linear.Stencil5.poisson((6, 6), shift=c)
        sol, space = gcrodr.solve(A, b, space)
        assert jnp.allclose(A.mv(sol.value), b, atol=1e-5)
    assert bool(space.valid) and space.U.shape == (4, 36)
    ```
    """

    tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=DEFAULT_MAX_STEPS)
    restart: int = eqx.field(static=True, default=40)
    recycle: int = eqx.field(static=True, default=20)

    def __check_init__(self):
        if self.tol is not None:
            check_tol(self.tol)
        check_max_steps(self.max_steps)
        if not (isinstance(self.recycle, int) and isinstance(self.restart, int)):
            raise TypeError("`restart` and `recycle` must be Python ints.")
        if not 1 <= self.recycle < self.restart:
            raise ValueError(
                f"GCRODR needs 1 <= recycle < restart; got recycle={self.recycle}, "
                f"restart={self.restart}."
            )

    def init(self, b) -> RecycleSpace:
        """An empty recycle space for systems with right-hand sides shaped like `b` (an array
        or a pytree of arrays)."""
        bf = tree_ravel(as_vector(b))[0]
        return RecycleSpace(jnp.zeros((self.recycle, bf.size), bf.dtype), jnp.array(False))

    @eqx.filter_jit
    def solve(self, A, b, space: RecycleSpace, x0=None) -> tuple[Solution, RecycleSpace]:
        """Solve `A x = b` starting from the recycled `space`; return the solution and the
        updated space. `A`: a matrix, lineax operator or matvec callable, as in `solve`; `b`
        an array or a pytree of arrays."""
        _, flat, b, x, unravel = flat_system(A, b, x0)
        if space.U.shape != (self.recycle, b.size):
            raise ValueError(
                f"`space` holds vectors of size {space.U.shape[1:]} x {space.U.shape[0]}; "
                f"expected {self.recycle} vectors of size {b.size} (use gcrodr.init(b))."
            )
        if self.recycle >= b.size:
            raise ValueError(
                f"GCRODR needs `recycle` < the system size {b.size}; got recycle={self.recycle}."
            )
        bf = b
        tol = jnp.asarray(linear_default_tol(b.dtype) if self.tol is None else self.tol, b.dtype)
        # A cycle longer than the system cannot grow the Krylov space further.
        m = min(self.restart, b.size)
        iteration = _GCRODRIteration(tol, m, self.max_steps, k=self.recycle)
        problem = LinearProblem(flat, bf)
        sol = run_iteration(iteration, problem, x, iteration.loop_steps(), options={"space": space})
        rec = sol.state.recycled
        out = Solution(value=unravel(sol.value), result=sol.result, stats=sol.stats)
        return out, RecycleSpace(rec.U, rec.valid)


def order_by_similarity(features: Array) -> Array:
    """A greedy nearest-neighbour ordering of systems by their features, so that consecutive
    systems are similar (SKR's sorting step before recycling).

    **Arguments:** `features`: `(T, d)` (or `(T,)`) — e.g. the PDE coefficients of each system.

    **Returns:** a permutation of `range(T)` starting at system 0.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    order = js.linear.order_by_similarity(jnp.array([0.0, 0.9, 0.1, 0.5]))
    assert order.tolist() == [0, 2, 3, 1]
    ```
    """
    f = jnp.asarray(features)
    f = f.reshape(f.shape[0], -1)
    T = f.shape[0]
    d = jnp.sum((f[:, None, :] - f[None, :, :]) ** 2, axis=-1)

    def body(i, carry):
        order, visited = carry
        last = order[i - 1]
        dist = jnp.where(visited, jnp.inf, d[last])
        nxt = jnp.argmin(dist)
        return order.at[i].set(nxt.astype(jnp.int32)), visited.at[nxt].set(True)

    order = jnp.zeros(T, jnp.int32)
    visited = jnp.zeros(T, bool).at[0].set(True)
    order, _ = jax.lax.fori_loop(1, T, body, (order, visited))
    return order
