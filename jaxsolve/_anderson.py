"""The Anderson mixer: one implementation of Anderson acceleration (type II, regularised),
used by `js.AndersonFixedPoint` and by Sinkhorn's `js.ot.AndersonSinkhorn`."""

import equinox as eqx
import jax.numpy as jnp
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

    def update(self, hist, x: Array, tx: Array, mixing=1.0):
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
        scale = jnp.max(jnp.diag(gram))
        rel = self.regularisation
        if rel is None:
            rel = 1e-4 if jnp.finfo(x.dtype).bits <= 32 else 1e-10
        # All residuals zero (at a fixed point): any α works; use the identity so that the
        # solve, and its derivative, stay finite.
        degenerate = ~(scale > jnp.finfo(x.dtype).tiny)
        reg = jnp.asarray(rel, x.dtype) * scale
        eye = jnp.eye(m, dtype=x.dtype)
        gram = jnp.where(degenerate, eye, gram + reg * eye)
        gram = jnp.where(valid[:, None] & valid[None, :], gram, eye)
        alpha = jnp.linalg.solve(gram, valid.astype(x.dtype))
        alpha = jnp.where(valid, alpha, 0.0)
        alpha = alpha / jnp.sum(alpha)
        x_new = alpha @ images - (1 - mixing) * (alpha @ residuals)
        return x_new, (images, residuals, count)

    def restart(self, hist, cond):
        """Empty the history where `cond` (e.g. the error stopped decreasing)."""
        images, residuals, count = hist
        return images, residuals, jnp.where(cond, 0, count)
