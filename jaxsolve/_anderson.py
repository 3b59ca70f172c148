"""The Anderson mixer: one implementation of Anderson acceleration (type II, regularised),
used by `js.AndersonFixedPoint` and by Sinkhorn's `js.ot.AndersonSinkhorn`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg
from jaxtyping import Array


class AndersonMixer(eqx.Module):
    """Anderson acceleration of a fixed-point map `x ↦ T(x)` (Walker & Ni 2011).

    The history holds the last `memory` images `T(x_i)` and residuals `r_i = T(x_i) − x_i`
    (flat vectors). The next iterate is `Σ α_i (T(x_i) − (1 − β) r_i)` with
    `α = argmin ‖Σ α_i r_i‖² + λ‖α‖²` under `Σ α_i = 1` (the regularised normal equations of
    the Gram matrix, `λ` relative to its largest diagonal entry); `β` is the mixing. With no
    history, or residuals that all vanish, it is the plain (mixed) step. Every operation is
    smooth where it is used, so unrolled derivatives are finite.
    """

    memory: int = eqx.field(static=True, default=5)
    regularisation: float | Array | None = None

    def init(self, x: Array) -> tuple[Array, Array, Array]:
        shape = (self.memory,) + x.shape
        return jnp.zeros(shape, x.dtype), jnp.zeros(shape, x.dtype), jnp.array(0, jnp.int32)

    def update(self, hist, x: Array, tx: Array, mixing: float | Array = 1.0):
        """Record `(x, T(x))`; return the extrapolated next iterate and the new history."""
        images, residuals, count = hist
        m = self.memory
        slot = count % m
        r = tx - x
        images = images.at[slot].set(tx)
        residuals = residuals.at[slot].set(r)
        count = count + 1
        valid = jnp.arange(m) < count
        R = jnp.where(valid[:, None], residuals, 0.0)
        gram = R @ R.T
        # Jacobi scaling: residual norms span many orders of magnitude along a solve, and the
        # scaled Gram matrix keeps only the conditioning of their directions.
        d = jnp.diag(gram)
        live = valid & (d > jnp.finfo(x.dtype).tiny)
        s = jnp.where(live, 1 / jnp.sqrt(jnp.where(live, d, 1.0)), 0.0)
        rel = self.regularisation
        if rel is None:
            rel = 1e-4 if jnp.finfo(x.dtype).bits <= 32 else 1e-12
        eye = jnp.eye(m, dtype=x.dtype)
        both = live[:, None] & live[None, :]
        scaled = jnp.where(both, s[:, None] * gram * s[None, :], eye)
        # No live residual (at a fixed point, or no history): the plain step. Masked entries
        # are the identity, so the solve and its derivative stay finite.
        # SPD (a Jacobi-scaled Gram matrix plus a ridge): Cholesky, which lowers to one
        # factorisation and two triangular solves (LU's pivoting adds a loop to the program).
        beta = jax.scipy.linalg.cho_solve(
            jax.scipy.linalg.cho_factor(scaled + jnp.asarray(rel, x.dtype) * eye), s
        )
        alpha = jnp.where(live, s * beta, 0.0)
        total = jnp.sum(alpha)
        plain = (jnp.arange(m) == slot).astype(x.dtype)
        ok = jnp.any(live) & (total != 0)
        alpha = jnp.where(ok, alpha / jnp.where(ok, total, 1.0), plain)
        x_new = alpha @ images - (1 - mixing) * (alpha @ residuals)
        return x_new, (images, residuals, count)

    def restart(self, hist, cond):
        """Empty the history where `cond` (e.g. the error stopped decreasing)."""
        images, residuals, count = hist
        return images, residuals, jnp.where(cond, 0, count)
