"""THE Arnoldi process of jaxsolve (GMRES and GCRO-DR run it): one iteration at a time, with
the Hessenberg matrix kept both raw (for GCRO-DR's harmonic Ritz update) and reduced to upper
triangular by Givens rotations (for the least-squares residual at every iteration and the
solution at a restart)."""

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array


class Arnoldi(eqx.Module):
    V: Array  # (m+1, n): the orthonormal basis (rows), zero beyond column j
    H: Array | None  # (m+1, m): the Hessenberg matrix, A Vᵀ = Vᵀ H (kept for GCRO-DR only)
    R: Array  # (m+1, m): H rotated to upper triangular, R = Q H
    Q: Array  # (m+1, m+1): the product of the Givens rotations so far
    beta: Array  # the norm of the starting residual: the rotated β e₁ is β Q[:, 0]
    j: Array  # columns done


def arnoldi_start(r: Array, beta, m: int, keep_h: bool = False) -> Arnoldi:
    """A fresh process from the residual `r` (flattened) of norm `beta`; `keep_h`: keep the
    raw Hessenberg matrix too."""
    dtype = r.dtype
    v0 = r / jnp.where(beta > 0, beta, 1)
    V = jnp.zeros((m + 1, r.size), dtype).at[0].set(v0)
    H = jnp.zeros((m + 1, m), dtype)
    Q = jnp.eye(m + 1, dtype=dtype)
    return Arnoldi(
        V, H if keep_h else None, H, Q, jnp.asarray(beta, dtype), jnp.array(0, jnp.int32)
    )


def _project(w, C):
    c = C @ w
    return w - c @ C, c


def arnoldi_step(mv, a: Arnoldi, C: Array | None = None) -> tuple[Arnoldi, Array | None, Array]:
    """One Arnoldi iteration: `w = A v_j`, orthogonalised against the rows of `C` (GCRO-DR's
    recycled images, orthonormal; `None` for GMRES) and against `v_0..v_j` (classical
    Gram-Schmidt applied twice, which keeps `V` orthonormal in floating point); then the new
    column's Givens rotation.

    **Returns:** `(a, b, hn)`: the advanced process, the coefficients of `w` on `C` (or
    `None`), and the norm of the new basis vector before normalisation (0: the Krylov space
    is invariant, the least-squares solution is exact)."""
    m = a.R.shape[1]
    j = a.j
    dtype = a.V.dtype
    w = mv(a.V[j])
    b = None
    if C is not None:
        w, b = _project(w, C)
    mask = (jnp.arange(m + 1) <= j).astype(dtype)
    h = (a.V @ w) * mask
    # `h @ V`, not `V.T @ h`: XLA's CPU product with a transposed matrix is 2-5x slower.
    w = w - h @ a.V
    h2 = (a.V @ w) * mask
    w = w - h2 @ a.V
    h = h + h2
    if C is not None:
        w, b2 = _project(w, C)
        b = b + b2  # pyright: ignore[reportOptionalOperand]
    hn = jnp.sqrt(jnp.sum(w * w))
    V = a.V.at[j + 1].set(w / jnp.where(hn > 0, hn, 1))
    h = h.at[j + 1].set(hn)
    H = None if a.H is None else a.H.at[:, j].set(h)
    # The previous rotations (their product Q, identity beyond j) as one small product, then
    # the new rotation of rows j, j+1, which zeroes h[j+1].
    h = a.Q @ h
    x, y = h[j], h[j + 1]
    rho = jnp.hypot(x, y)
    c = jnp.where(rho > 0, x / jnp.where(rho > 0, rho, 1), 1)
    s = jnp.where(rho > 0, y / jnp.where(rho > 0, rho, 1), 0)
    # Row updates written as one elementwise expression each (one fused kernel, not a chain
    # of scatters: this is the per-iteration overhead of a small system).
    rows = jnp.arange(m + 1)
    R = a.R.at[:, j].set(jnp.where(rows == j, rho, jnp.where(rows == j + 1, 0, h)))
    qj, qk = a.Q[j], a.Q[j + 1]
    r2 = rows[:, None]
    Q = jnp.where(r2 == j, c * qj + s * qk, jnp.where(r2 == j + 1, c * qk - s * qj, a.Q))
    return Arnoldi(V, H, R, Q, a.beta, j + 1), b, hn


def arnoldi_residual(a: Arnoldi) -> Array:
    """The least-squares residual `min_z ‖β e₁ − H z‖` over the columns done."""
    return jnp.abs(a.beta * a.Q[a.j, 0])


def arnoldi_solution(a: Arnoldi) -> Array:
    """The least-squares coefficients `z` (length m, zero beyond the columns done): the
    iterate moves by `z @ V[:m]`. A zero pivot (A singular on the Krylov space) drops that
    direction instead of dividing by zero."""
    m = a.R.shape[1]
    used = jnp.arange(m) < a.j
    Rm = a.R[:m]
    keep = used & (jnp.abs(jnp.diag(Rm)) > jnp.finfo(Rm.dtype).tiny)
    Rm = jnp.where(keep[:, None] & keep[None, :], Rm, 0) + jnp.diag((~keep).astype(Rm.dtype))
    g = a.beta * a.Q[:m, 0]
    return jsl.solve_triangular(Rm, jnp.where(keep, g, 0), lower=False)
