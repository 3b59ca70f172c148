"""`EpsilonScaling`: anneal epsilon from large to the target, warm-starting the potentials."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array


class EpsilonScaling(eqx.Module):
    """Epsilon scaling (annealing): solve with `ε_k = max(ε, ε_0 · decay^k)` at loop step
    `k`, each stage warm-started from the last (Schmitzer 2019). Iterations of Sinkhorn grow
    like `1/ε`; starting large and shrinking reaches a small `ε` in far fewer sweeps. Only the
    final `ε` counts for convergence and derivatives.

    **Arguments:**

    - `decay`: the factor per stage, in `(0, 1)` (default 0.5).
    - `init`: `ε_0`; `None` (default) uses the mean of the cost matrix.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (40, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (40, 2)) + 1.0
    geom = js.ot.PointCloud(x, y, epsilon=0.05)
    solver = js.ot.Sinkhorn(tol=1e-5, epsilon_scaling=js.ot.EpsilonScaling(decay=0.5))
    sol = js.ot.solve(geom, solver=solver)
    assert sol.stats["marginal_error"] <= 1e-5
    ```
    """

    decay: float | Array = 0.5
    init: float | None = None

    def __check_init__(self):
        if isinstance(self.decay, (int, float)) and not 0 < self.decay < 1:
            raise ValueError(f"EpsilonScaling's `decay` must be in (0, 1); got {self.decay}.")
        if isinstance(self.init, (int, float)) and not self.init > 0:
            raise ValueError(f"EpsilonScaling's `init` must be positive; got {self.init}.")

    def epsilon(self, eps_target, eps0, k):
        return jnp.maximum(eps_target, eps0 * jnp.asarray(self.decay, eps_target.dtype) ** k)
