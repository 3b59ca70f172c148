"""`AndersonSinkhorn`: Anderson acceleration of the Sinkhorn map, with the core mixer."""

import equinox as eqx
import jax.numpy as jnp

from .._anderson import AndersonMixer
from ._acceleration import AbstractSinkhornAcceleration


class AndersonSinkhorn(AbstractSinkhornAcceleration):
    """Anderson acceleration of Sinkhorn (Walker & Ni 2011; for Sinkhorn e.g. Chizat 2020).

    The sweep `v ↦ T(v)` (on Sinkhorn's second scaling) is treated as a fixed-point map; each
    sweep, the next `v` is the combination `Σ α_i T(v_i)` of the last `memory` images whose
    residuals `T(v_i) − v_i` have the smallest (regularised) norm under `Σ α_i = 1` (the
    core `AndersonMixer`, shared with `js.AndersonFixedPoint`). Near the solution this is a
    Krylov method on the linearised map: it cures the slow, sublinear tail of Sinkhorn at
    small epsilon. Used only at the target epsilon; a step that would be non-finite, or move a
    scaling out of range, falls back to the plain sweep; the history is emptied when the error
    stops decreasing.

    **Arguments:**

    - `memory`: how many past iterates are combined (default 8).
    - `regularisation`: Tikhonov term on the Jacobi-scaled Gram matrix of the residuals
      (default `None`: 1e-12 in float64, 1e-4 in float32).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (40, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (40, 2)) + 1.0
    geom = js.ot.PointCloud(x, y, epsilon=0.05)
    plain = js.ot.solve(geom, solver=js.ot.Sinkhorn(1e-5, acceleration=None, max_steps=100_000))
    fast = js.ot.solve(geom, solver=js.ot.Sinkhorn(1e-5, acceleration=js.ot.AndersonSinkhorn()))
    assert fast.stats["num_steps"] < plain.stats["num_steps"]
    assert jnp.allclose(fast.plan, plain.plan, atol=1e-5)
    ```
    """

    memory: int = eqx.field(static=True, default=8)
    regularisation: float | None = None

    def __check_init__(self):
        if isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory < 1:
            raise ValueError(
                f"AndersonSinkhorn's `memory` must be a positive int; got {self.memory!r}."
            )

    @property
    def mixer(self) -> AndersonMixer:
        return AndersonMixer(self.memory, self.regularisation)

    def init(self, v):
        return self.mixer.init(v)

    def extrapolate(self, state, v, tv, active, centre, limit):
        v_new, (images, residuals, count) = self.mixer.update(state, v, tv)
        ok = active & jnp.all(jnp.isfinite(v_new))
        ok = ok & (jnp.max(jnp.abs(v_new - tv)) <= limit)  # keep the scalings in range
        if centre is not None:
            ok = ok & (jnp.max(jnp.abs(v_new - centre)) <= limit)
        v_new = jnp.where(ok, v_new, tv)
        # Inactive: keep the history empty so that it starts afresh at the target epsilon.
        return v_new, (images, residuals, jnp.where(active, count, 0))

    def forget(self, state):
        return self.mixer.restart(state, True)

    def recentre(self, state, shift):
        images, residuals, count = state
        return images + shift, residuals, count

    def after_check(self, state, err, err_prev, at_target, checks_at_target, check_every):
        # Anderson can stagnate: restart it when the error stopped decreasing.
        return self.mixer.restart(state, at_target & ~(err < 0.9 * err_prev))
