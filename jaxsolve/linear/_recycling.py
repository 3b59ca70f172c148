"""Krylov subspace recycling across a sequence of systems: GCRO-DR(m, k) (Parks, de Sturler,
Mackey, Johnson & Maiti 2006), as used by SKR (Wang et al., ICLR 2024)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Scalar

from .._checks import check_max_steps, check_tol
from .._solution import RESULTS, Solution
from ._common import LinearIteration, iterate, safe_norm_b
from ._solve import as_operator


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


class _GCRODRState(eqx.Module):
    r: Array
    U: Array
    C: Array
    valid: Array
    res_norm: Scalar
    num_matvecs: Array


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


class _GCRODRIteration(LinearIteration):
    mv: object
    m: int = eqx.field(static=True)
    k: int = eqx.field(static=True)
    tol: float | Array = 1e-6

    def init(self, fn, y, args):
        raise NotImplementedError  # built by GCRODR.solve

    def step(self, fn, y, args, s):
        m, k = self.m, self.k
        dtype = y.dtype
        n = y.size
        beta = s.res_norm
        V = jnp.zeros((m + 1, n), dtype).at[0].set(s.r / jnp.where(beta > 0, beta, 1))
        H = jnp.zeros((m + 1, m), dtype)
        B = jnp.zeros((k, m), dtype)

        target = self.tol * args[1]
        e1 = jnp.zeros(m + 1, dtype).at[0].set(beta)

        def arnoldi(carry):
            j, V, H, B, _ = carry
            w = self.mv(V[j])
            bj = s.C @ w
            w = w - bj @ s.C
            mask = (jnp.arange(m + 1) <= j).astype(dtype)
            h = (V @ w) * mask
            w = w - h @ V
            h2 = (V @ w) * mask  # second pass: keeps V orthonormal in floating point
            w = w - h2 @ V
            bj2 = s.C @ w
            w = w - bj2 @ s.C
            h = h + h2
            hn = jnp.sqrt(jnp.sum(w * w))
            V = V.at[j + 1].set(w / jnp.where(hn > 0, hn, 1))
            H = H.at[:, j].set(h.at[j + 1].set(hn))
            B = B.at[:, j].set(bj + bj2)
            # The least-squares residual is the GMRES residual norm: stop the cycle early
            # once it meets the tolerance (unused columns of H are zero).
            z = jnp.linalg.lstsq(H, e1)[0]
            res = jnp.sqrt(jnp.sum((e1 - H @ z) ** 2))
            return j + 1, V, H, B, res

        def more(carry):
            j, *_, res = carry
            return (j < m) & (res > target)

        init = (jnp.array(0), V, H, B, beta)
        used, V, H, B, _ = jax.lax.while_loop(more, arnoldi, init)
        z = jnp.linalg.lstsq(H, e1)[0]
        y = y + z @ V[:m] - (B @ z) @ s.U
        r = (e1 - H @ z) @ V

        # Update the recycle space from the augmented relation A [Ũ; V_m]ᵀ = [C; V_{m+1}]ᵀ G.
        unorm = jnp.sqrt(jnp.sum(s.U**2, axis=1))
        dinv = jnp.where(s.valid, 1 / jnp.where(unorm > 0, unorm, 1), jnp.ones_like(unorm))
        Ut = s.U * jnp.where(unorm > 0, 1 / jnp.where(unorm > 0, unorm, 1), 0)[:, None]
        G = jnp.zeros((k + m + 1, k + m), dtype)
        G = G.at[:k, :k].set(jnp.diag(dinv)).at[:k, k:].set(B).at[k:, k:].set(H)
        Vhat = jnp.concatenate([Ut, V[:m]])
        What = jnp.concatenate([s.C, V])
        WV = jnp.zeros((k + m + 1, k + m), dtype)
        WV = WV.at[:k, :k].set(s.C @ Ut.T).at[k:, :k].set(V @ Ut.T)
        WV = WV.at[k : k + m, k:].set(jnp.eye(m, dtype=dtype))
        U, C = _harmonic_update(Vhat, What, G, WV, k)
        # Keep the residual exactly orthogonal to the new C (no matvec needed).
        cr = C @ r
        y = y + cr @ U
        r = r - cr @ C
        res_norm = jnp.sqrt(jnp.sum(r * r))
        ok = jnp.all(jnp.isfinite(U)) & jnp.all(jnp.isfinite(C))
        new = _GCRODRState(
            r,
            jnp.where(ok, U, s.U),
            jnp.where(ok, C, s.C),
            s.valid | ok,
            res_norm,
            s.num_matvecs + used.astype(s.num_matvecs.dtype),
        )
        return y, new, RESULTS.successful


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
    (cycles), `num_matvecs` and `error` (`‖b − Ax‖/‖b‖`). Derivatives are not provided here
    (use `js.linear.solve` for a differentiable solve); order similar systems next to each
    other with `js.linear.order_by_similarity`.

    **Arguments:**

    - `tol`: tolerance on the relative residual.
    - `max_steps`: the largest number of cycles per system.
    - `restart`: `m`, Arnoldi steps per cycle.
    - `recycle`: `k`, vectors carried (`k < m`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    gcrodr = js.linear.GCRODR(tol=1e-8, restart=10, recycle=4)
    b = jnp.ones((6, 6))
    space = gcrodr.init(b)
    for c in [0.0, 0.01]:
        A = js.linear.Stencil5.poisson((6, 6), shift=c)
        sol, space = gcrodr.solve(A, b, space)
        assert jnp.allclose(A.mv(sol.value), b, atol=1e-6)
    assert bool(space.valid) and space.U.shape == (4, 36)
    ```
    """

    tol: float | Array = 1e-6
    max_steps: int = eqx.field(static=True, default=200)
    restart: int = eqx.field(static=True, default=40)
    recycle: int = eqx.field(static=True, default=20)

    def __check_init__(self):
        check_tol(self.tol)
        check_max_steps(self.max_steps)
        if not (isinstance(self.recycle, int) and isinstance(self.restart, int)):
            raise TypeError("`restart` and `recycle` must be Python ints.")
        if not 1 <= self.recycle < self.restart:
            raise ValueError(
                f"GCRODR needs 1 <= recycle < restart; got recycle={self.recycle}, "
                f"restart={self.restart}."
            )

    def init(self, b: Array) -> RecycleSpace:
        """An empty recycle space for systems with right-hand sides shaped like `b`."""
        b = jnp.asarray(b)
        return RecycleSpace(jnp.zeros((self.recycle, b.size), b.dtype), jnp.array(False))

    @eqx.filter_jit
    def solve(self, A, b, space: RecycleSpace, x0=None) -> tuple[Solution, RecycleSpace]:
        """Solve `A x = b` starting from the recycled `space`; return the solution and the
        updated space. `A`: a matrix, lineax operator or matvec callable, as in `solve`."""
        b = jnp.asarray(b)
        op = as_operator(A, b)
        if space.U.shape != (self.recycle, b.size):
            raise ValueError(
                f"`space` holds vectors of size {space.U.shape[1:]} x {space.U.shape[0]}; "
                f"expected {self.recycle} vectors of size {b.size} (use gcrodr.init(b))."
            )
        shape = b.shape
        mv = lambda v: op.mv(v.reshape(shape)).reshape(-1)
        bf = b.reshape(-1)
        x = jnp.zeros_like(bf) if x0 is None else jnp.asarray(x0, b.dtype).reshape(-1)
        r = bf - mv(x)
        # Re-orthonormalise the recycled space for this A: A U = C with C orthonormal.
        U = space.U
        AU = jax.vmap(mv)(U)
        Q, R = jnp.linalg.qr(AU.T)
        Rd = jnp.where(jnp.abs(jnp.diag(R)) > 0, 0, 1)
        R = R + jnp.diag(Rd.astype(R.dtype))
        C = jnp.where(space.valid, Q.T, 0)
        U = jnp.where(space.valid, jax.scipy.linalg.solve_triangular(R, U, trans="T"), 0)
        cr = C @ r
        x = x + cr @ U
        r = r - cr @ C
        k_mv = jnp.where(space.valid, self.recycle, 0).astype(jnp.int32)
        state = _GCRODRState(r, U, C, space.valid, jnp.sqrt(jnp.sum(r * r)), 1 + k_mv)
        iteration = _GCRODRIteration(mv, self.restart, self.recycle, self.tol)
        args = (bf, safe_norm_b(bf))

        # iterate() calls iteration.init; hand it the prepared state instead.
        iteration = _Prepared(iteration, state)
        x, state, result, stats = iterate(
            iteration, None, x, args, tol=self.tol, max_steps=self.max_steps
        )
        sol = Solution(value=x.reshape(shape), result=result, stats=stats)
        return sol, RecycleSpace(state.U, state.valid)


class _Prepared(LinearIteration):
    inner: _GCRODRIteration
    state0: _GCRODRState

    def init(self, fn, y, args):
        return self.state0

    def step(self, fn, y, args, state):
        return self.inner.step(fn, y, args, state)


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
