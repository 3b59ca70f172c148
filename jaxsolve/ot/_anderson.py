"""`Anderson`: Anderson acceleration of the Sinkhorn map (type II, regularised)."""

import equinox as eqx
import jax.numpy as jnp


class Anderson(eqx.Module):
    """Anderson acceleration of Sinkhorn (Walker & Ni 2011; for Sinkhorn e.g. Chizat 2020).

    The sweep `g ↦ T(g)` is treated as a fixed-point map; each sweep, the next `g` is the
    combination `Σ α_i T(g_i)` of the last `memory` images whose residuals `T(g_i) − g_i`
    have the smallest (regularised) norm under `Σ α_i = 1`. Near the solution this is a
    Krylov method on the linearised map: it cures the slow, sublinear tail of Sinkhorn at
    small epsilon. Used only at the target epsilon; a step that would be non-finite falls
    back to plain sweeps.

    **Arguments:**

    - `memory`: how many past iterates are combined (default 8).
    - `regularisation`: Tikhonov term, relative to the largest residual norm² (default
      `None`: 1e-10 in float64, 1e-4 in float32).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (40, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (40, 2)) + 1.0
    geom = js.ot.PointCloud(x, y, epsilon=0.05)
    plain = js.ot.solve(geom, solver=js.ot.Sinkhorn(acceleration=None, max_steps=100_000))
    fast = js.ot.solve(geom, solver=js.ot.Sinkhorn(acceleration=js.ot.Anderson()))
    assert fast.stats["num_steps"] < plain.stats["num_steps"]
    assert jnp.allclose(fast.plan, plain.plan, atol=1e-6)
    ```
    """

    memory: int = eqx.field(static=True, default=8)
    regularisation: float | None = None

    def __check_init__(self):
        if not isinstance(self.memory, int) or self.memory < 1:
            raise ValueError(f"Anderson's `memory` must be a positive int; got {self.memory!r}.")

    def init(self, v):
        m = self.memory
        return (
            jnp.zeros((m,) + v.shape, v.dtype),  # images T(g_i)
            jnp.zeros((m,) + v.shape, v.dtype),  # residuals T(g_i) − g_i
            jnp.array(0, jnp.int32),
        )

    def update(self, hist, v, Tv, active, center=None, limit=None):
        """Record `(v, T(v))` and return the extrapolated next iterate (or `T(v)` when not
        `active`), with the new history."""
        images, residuals, count = hist
        m = self.memory
        slot = count % m
        r = Tv - v
        images = images.at[slot].set(Tv)
        residuals = residuals.at[slot].set(r)
        count = count + 1
        valid = jnp.arange(m) < count
        R = jnp.where(valid[:, None], residuals, 0.0)
        gram = R @ R.T
        scale = jnp.max(jnp.diag(gram))
        rel = self.regularisation
        if rel is None:
            rel = 1e-4 if jnp.finfo(v.dtype).bits <= 32 else 1e-10
        reg = jnp.asarray(rel, v.dtype) * scale + jnp.finfo(v.dtype).tiny
        gram = gram + jnp.diag(jnp.where(valid, reg, 1.0))
        alpha = jnp.linalg.solve(gram, valid.astype(v.dtype))
        alpha = jnp.where(valid, alpha, 0.0)
        alpha = alpha / jnp.sum(alpha)
        v_new = alpha @ images
        ok = active & jnp.all(jnp.isfinite(v_new))
        if limit is not None:  # keep scalings in range (else use the plain image)
            ok = ok & (jnp.max(jnp.abs(v_new - Tv)) <= limit)
            if center is not None:
                ok = ok & (jnp.max(jnp.abs(v_new - center)) <= limit)
        v_new = jnp.where(ok, v_new, Tv)
        # Inactive: keep the history empty so it starts fresh at the target epsilon.
        count = jnp.where(active, count, 0)
        return v_new, (images, residuals, count)

    def restart(self, hist, stalled):
        """Empty the history when the error stopped decreasing (AA can stagnate)."""
        images, residuals, count = hist
        return images, residuals, jnp.where(stalled, 0, count)
