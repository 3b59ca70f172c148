"""`AbstractSinkhornAcceleration`: the one interface through which Sinkhorn is accelerated.

`js.ot.Sinkhorn` calls these methods and nothing else, whatever the acceleration
(`js.ot.AndersonSinkhorn`, `js.ot.Momentum`, or none): a new acceleration is a subclass.
"""

from typing import Any

import equinox as eqx
from jaxtyping import Array, Bool, Scalar


class AbstractSinkhornAcceleration(eqx.Module):
    """Base class of Sinkhorn's accelerations. Every method has a do-nothing default:

    - `init(v) -> state`: the acceleration's state, from the vector it extrapolates (Sinkhorn's
      second scaling, `log v` or `g/ε`).
    - `relaxation(state)`: the relaxation `ω` of the sweeps, `f ← (1 − ω) f + ω T(f)` (default 1).
    - `extrapolate(state, v, tv, active, centre, limit) -> (v_next, state)`: after each sweep,
      `v ↦ tv`; `active` is false before the target epsilon and in the log-domain fallback
      (then it returns `tv` and may forget its history); `v_next` must stay within `limit` of
      `tv` (and of `centre` unless it is `None`), or be `tv`.
    - `forget(state)`: the sweeps ran without it (the log-domain fallback): drop the history.
    - `recentre(state, shift)`: the extrapolated vector was re-centred by `shift` (Sinkhorn's
      kernel was rebuilt at new potentials).
    - `after_check(state, err, err_prev, at_target, checks_at_target, check_every)`: after
      each marginal-error check (every `check_every` sweeps): adapt.

    **Example:** an acceleration that only fixes the relaxation.

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    class Relaxed(js.ot.AbstractSinkhornAcceleration):
        def relaxation(self, state):
            return 1.3

    x = jax.random.normal(jax.random.PRNGKey(0), (20, 2))
    geom = js.ot.PointCloud(x, x + 1.0, epsilon=0.5)
    solve = lambda acc: js.ot.solve(
        geom, solver=js.ot.Sinkhorn(1e-6, acceleration=acc, epsilon_scaling=None)
    )
    plain, fast = solve(None), solve(Relaxed())
    assert fast.stats["num_steps"] <= plain.stats["num_steps"]
    assert jnp.allclose(fast.plan, plain.plan, atol=1e-6)
    ```
    """

    def init(self, v: Array) -> Any:
        return None

    def relaxation(self, state: Any) -> Scalar | float:
        return 1.0

    def extrapolate(
        self, state: Any, v: Array, tv: Array, active: Bool[Array, ""], centre, limit
    ) -> tuple[Array, Any]:
        return tv, state

    def forget(self, state: Any) -> Any:
        return state

    def recentre(self, state: Any, shift: Array) -> Any:
        return state

    def after_check(self, state, err, err_prev, at_target, checks_at_target, check_every) -> Any:
        return state


class NoAcceleration(AbstractSinkhornAcceleration):
    """Plain Sinkhorn sweeps (what `acceleration=None` means)."""
