"""Proximal operators `prox_{step·g}(x) = argmin_p ½‖p − x‖² + step · g(p, hyperparams)`.

Every operator is `prox(x, hyperparams, step)` (JAXopt's `prox_lasso(x, l1reg, scaling)`
convention), the signature `js.ProximalGradient(prox)` calls as `prox(y, args, step)`. They are
closed forms written with `where`, so automatic differentiation gives their derivative almost
everywhere, with respect to `x`, the hyperparameters (penalty strengths) and `step`. Penalties
may be scalars or pytrees of `x`'s structure (one strength per coordinate).
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, PyTree

from ..projections._projections import _broadcast_tree, _like, _tree_norm


def _soft(v: Array, t: Array) -> Array:
    # NaN propagates (a NaN input is never thresholded to a clean 0).
    return jnp.where(jnp.abs(v) <= t, jnp.zeros_like(v), v - jnp.where(v > 0, t, -t))


def l1(x: PyTree[Array], l1reg: Any = 1.0, step: ArrayLike = 1.0) -> PyTree[Array]:
    """Soft thresholding: the prox of `g(p) = l1reg · ‖p‖₁` (the Lasso penalty).

    **Arguments:**

    - `x`: a pytree of arrays.
    - `l1reg`: the penalty strength `λ ≥ 0`, a scalar or a pytree of `x`'s structure.
    - `step`: the prox's step `η` (the threshold is `η λ`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    p = js.prox.l1(jnp.array([3.0, -0.5, -2.0]), 1.0, 1.0)
    assert jnp.allclose(p, jnp.array([2.0, 0.0, -1.0]))
    ```
    """
    lam = _broadcast_tree(l1reg, x)
    return jtu.tree_map(lambda v, lm: _soft(v, _like(lm, v) * _like(step, v)), x, lam)


def nonnegative_l1(x: PyTree[Array], l1reg: Any = 1.0, step: ArrayLike = 1.0) -> PyTree[Array]:
    """The prox of `g(p) = l1reg · Σ p` on `p ≥ 0` (+inf elsewhere): `max(x − η λ, 0)`.

    **Arguments:** as `js.prox.l1`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    p = js.prox.nonnegative_l1(jnp.array([3.0, -0.5, 0.5]), 1.0, 1.0)
    assert jnp.allclose(p, jnp.array([2.0, 0.0, 0.0]))
    ```
    """
    lam = _broadcast_tree(l1reg, x)

    def one(v, lm):
        t = _like(lm, v) * _like(step, v)
        return jnp.where(v <= t, jnp.zeros_like(v), v - t)  # NaN propagates

    return jtu.tree_map(one, x, lam)


def elastic_net(
    x: PyTree[Array], hyperparams: tuple[Any, Any] = (1.0, 1.0), step: ArrayLike = 1.0
) -> PyTree[Array]:
    """The prox of the elastic net `g(p) = l1reg · ‖p‖₁ + l2reg/2 · ‖p‖₂²`:
    `soft(x, η l1reg) / (1 + η l2reg)`.

    (JAXopt's `prox_elastic_net(x, (a, b), s)` penalises `a‖p‖₁ + a·b/2‖p‖²`: pass
    `(a, a * b)` here. scikit-learn's `ElasticNet(alpha, l1_ratio)` is
    `(alpha * l1_ratio, alpha * (1 - l1_ratio))`.)

    **Arguments:**

    - `x`: a pytree of arrays.
    - `hyperparams`: `(l1reg, l2reg)`, each `≥ 0`, a scalar or a pytree of `x`'s structure.
    - `step`: the prox's step `η`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    p = js.prox.elastic_net(jnp.array([3.0, -0.5]), (1.0, 1.0), 1.0)
    assert jnp.allclose(p, jnp.array([1.0, 0.0]))
    ```
    """
    l1reg, l2reg = hyperparams
    lam1 = _broadcast_tree(l1reg, x)
    lam2 = _broadcast_tree(l2reg, x)

    def one(v, a, b):
        eta = _like(step, v)
        return _soft(v, _like(a, v) * eta) / (1 + _like(b, v) * eta)

    return jtu.tree_map(one, x, lam1, lam2)


def group_l2(x: PyTree[Array], l2reg: ArrayLike = 1.0, step: ArrayLike = 1.0) -> PyTree[Array]:
    """Block soft thresholding: the prox of `g(p) = l2reg · ‖p‖₂` (one group: all of `x`),
    `x · max(0, 1 − η λ / ‖x‖₂)`. For the group Lasso's several groups, `jax.vmap` it over
    the groups (or apply it to each leaf of a pytree of groups).

    **Arguments:**

    - `x`: a pytree of arrays (one group).
    - `l2reg`: the penalty strength `λ ≥ 0` (a scalar).
    - `step`: the prox's step `η`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    p = js.prox.group_l2(jnp.array([3.0, 4.0]), 2.5, 1.0)     # ‖x‖ = 5: scaled by 1/2
    assert jnp.allclose(p, jnp.array([1.5, 2.0]))
    assert jnp.allclose(js.prox.group_l2(jnp.array([3.0, 4.0]), 6.0), 0.0)
    ```
    """
    norm = _tree_norm(x)
    t = jnp.asarray(l2reg) * jnp.asarray(step)
    keep = ~(norm <= t)  # NaN propagates
    factor = jnp.where(keep, 1 - t / jnp.where(keep, norm, 1.0), 0.0)
    return jtu.tree_map(lambda v: (v * factor.astype(v.dtype)).astype(v.dtype), x)


class _Indicator(eqx.Module):
    projection: Callable = eqx.field(static=True)

    def __call__(self, x, hyperparams=None, step=1.0):
        del step
        return self.projection(x, hyperparams)


def indicator(projection: Callable[[Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
    """The prox of the indicator of a convex set (0 on the set, +inf off it): the set's
    projection, whatever the step. Turns `projection(x, hyperparams)` into
    `prox(x, hyperparams, step)`, e.g. to hand a constraint to `js.ProximalGradient`.

    **Arguments:** `projection`, e.g. `js.projections.simplex`.

    **Returns:** `prox(x, hyperparams, step) = projection(x, hyperparams)`; equal projections
    give equal (hash-equal) proxes, so building it again does not recompile.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    prox = js.prox.indicator(js.projections.box)
    assert jnp.allclose(prox(jnp.array([-1.0, 2.0]), (0.0, 1.0), 0.3), jnp.array([0.0, 1.0]))
    ```
    """
    if not callable(projection):
        raise TypeError(
            "js.prox.indicator takes a projection `projection(x, hyperparams)`, e.g. "
            f"js.projections.simplex; got {type(projection).__name__}."
        )
    return _Indicator(projection)
