"""Exact 1-D optimal transport by sorting, and the sliced Wasserstein cost built on it.

In one dimension the optimal plan between `α = Σ aᵢ δ_{uᵢ}` and `β = Σ bⱼ δ_{vⱼ}` is the
monotone rearrangement, and for the cost `|u − v|^p` (p ≥ 1) its value is the integral of the
quantile functions' gap, `∫₀¹ |F_α⁻¹(q) − F_β⁻¹(q)|^p dq`: sort both supports, merge the two
cumulative weights into one grid of levels `q`, and sum `Δq · |F_α⁻¹(q) − F_β⁻¹(q)|^p` over the
grid (Peyré & Cuturi, *Computational Optimal Transport*, 2019, §2.6). O((n + m) log(n + m)),
no regularisation, differentiable almost everywhere in the points and the weights (the sort
and the level lookups are locally constant). The sliced cost averages it over random
directions (Rabin et al. 2011; Bonneel et al. 2015).
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._solution import RESULTS


def _check_points(x, name: str, ndim: int) -> Array:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` must be real; got dtype {x.dtype}.")
    if x.ndim != ndim:
        shape = "(n,)" if ndim == 1 else "(n, d)"
        raise ValueError(f"`{name}` must have shape {shape}; got shape {x.shape}.")
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` is empty; expected at least one point.")
    return x


def _weights(w, n: int, name: str, dtype) -> Array:
    if w is None:
        return jnp.full((n,), 1.0 / n, dtype)
    w = jnp.asarray(w, dtype)
    if w.shape != (n,):
        raise ValueError(f"`{name}` must have shape ({n},), one weight per point; got {w.shape}.")
    return w


def _check_p(p) -> None:
    if isinstance(p, (int, float)) and not p >= 1:
        raise ValueError(f"`p` must be at least 1 (the cost |u − v|^p); got {p!r}.")


def _input_result(values, weights) -> RESULTS:
    """`invalid_input` for a negative weight or a measure of no mass, `nonfinite` for NaN/inf."""
    finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in (*values, *weights)]))
    valid = jnp.all(jnp.array([jnp.all(w >= 0) & (jnp.sum(w) > 0) for w in weights]))
    result = RESULTS.where(valid, RESULTS.successful, RESULTS.invalid_input)
    return RESULTS.where(finite, result, RESULTS.nonfinite)


def _finish(cost, result, throw: bool, return_result: bool):
    if throw:
        cost = result.error_if(cost, result != RESULTS.successful)
    return (cost, result) if return_result else cost


def _cost_1d(u: Array, v: Array, a: Array, b: Array, p) -> Array:
    """`∫₀¹ |F_α⁻¹(q) − F_β⁻¹(q)|^p dq` for weights `a`, `b` normalised to probabilities."""
    iu = jnp.argsort(u)
    iv = jnp.argsort(v)
    u, a = u[iu], a[iu]
    v, b = v[iv], b[iv]
    cu = jnp.cumsum(a) / jnp.sum(a)
    cv = jnp.cumsum(b) / jnp.sum(b)
    levels = jnp.sort(jnp.concatenate([cu, cv]))
    # F⁻¹(q) is the first sorted point whose cumulative weight reaches q; rounding may leave
    # the last level a hair above 1, hence the clip.
    qu = u[jnp.minimum(jnp.searchsorted(cu, levels), u.shape[0] - 1)]
    qv = v[jnp.minimum(jnp.searchsorted(cv, levels), v.shape[0] - 1)]
    dq = jnp.diff(levels, prepend=jnp.zeros((1,), levels.dtype))
    gap = jnp.abs(qu - qv)
    return jnp.sum(dq * (gap if isinstance(p, int) and p == 1 else gap**p))


def wasserstein_1d(
    u: Float[ArrayLike, " n"],
    v: Float[ArrayLike, " m"],
    a: Float[ArrayLike, " n"] | None = None,
    b: Float[ArrayLike, " m"] | None = None,
    *,
    p: float = 2,
    throw: bool = True,
    return_result: bool = False,
):
    """The exact optimal-transport cost between two weighted point sets on the real line.

    `W_p^p(α, β) = min_P Σᵢⱼ Pᵢⱼ |uᵢ − vⱼ|^p`, computed by sorting (the monotone
    rearrangement is optimal in 1-D): O((n + m) log(n + m)), no regularisation. It is the
    p-th power of the Wasserstein distance (as POT's `ot.wasserstein_1d`), so that its
    gradient stays finite when the two measures coincide. Differentiable almost everywhere in
    `u`, `v`, `a` and `b`; jittable and vmappable (batches of pairs of measures).

    **Arguments:**

    - `u`: `(n,)` points and `v`: `(m,)` points.
    - `a`, `b`: nonnegative weights (default uniform), normalised to probabilities.
    - `p`: the exponent of the cost `|u − v|^p`, at least 1.
    - `throw`: raise on a negative weight or a measure of no mass (`invalid_input`) or NaN/inf
      data (`nonfinite`); with `False` nothing raises: ask for `return_result=True`.
    - `return_result`: return `(cost, result)`.

    **Returns:** the cost, a scalar (and its `js.RESULTS` with `return_result=True`).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    u = jnp.array([0.0, 1.0, 3.0])
    v = jnp.array([2.0, 0.5, 1.0])
    # sorted pairs (0, 0.5), (1, 1), (3, 2): (0.25 + 0 + 1) / 3
    assert jnp.allclose(js.ot.wasserstein_1d(u, v), 1.25 / 3)
    # the derivative moves each point towards its partner
    g = jax.grad(js.ot.wasserstein_1d)(u, v)
    assert jnp.allclose(g, 2 * jnp.array([-0.5, 0.0, 1.0]) / 3)

    cost, result = js.ot.wasserstein_1d(u, v, jnp.array([1.0, -1.0, 1.0]), throw=False,
                                        return_result=True)
    assert result == js.RESULTS.invalid_input
    ```
    """
    _check_p(p)
    u = _check_points(u, "u", 1)
    v = _check_points(v, "v", 1)
    dtype = jnp.result_type(u.dtype, v.dtype, jnp.float32)
    u, v = u.astype(dtype), v.astype(dtype)
    a = _weights(a, u.shape[0], "a", dtype)
    b = _weights(b, v.shape[0], "b", dtype)
    result = _input_result((u, v), (a, b))
    return _finish(_cost_1d(u, v, a, b, p), result, throw, return_result)


def sliced_wasserstein(
    x: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, "m d"],
    a: Float[ArrayLike, " n"] | None = None,
    b: Float[ArrayLike, " m"] | None = None,
    *,
    num_projections: int | None = None,
    key: Array | None = None,
    projections: Float[ArrayLike, "d k"] | None = None,
    p: float = 2,
    throw: bool = True,
    return_result: bool = False,
):
    """The sliced Wasserstein cost: the exact 1-D cost averaged over directions.

    `SW_p^p(α, β) = (1/k) Σₗ W_p^p(θₗ#α, θₗ#β)` over `k` unit directions `θₗ`, each term by
    `js.ot.wasserstein_1d`: O(k (n + m) (d + log(n + m))) time and O(k (n + m)) memory, a cheap
    differentiable loss between point clouds of any size. POT's
    `ot.sliced_wasserstein_distance` with the same projections is this value to the power
    `1/p`.

    **Arguments:**

    - `x`: `(n, d)` points, `y`: `(m, d)` points; `a`, `b` weights (default uniform).
    - `num_projections` and `key`: draw `num_projections` directions uniformly on the sphere;
      or `projections`: a `(d, k)` array whose columns are the directions (used as given).
    - `p`, `throw`, `return_result`: as in `js.ot.wasserstein_1d`.

    **Returns:** the cost, a scalar (and its `js.RESULTS` with `return_result=True`).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (100, 3))
    y = x + 1.0
    loss = lambda x: js.ot.sliced_wasserstein(x, y, num_projections=50,
                                              key=jax.random.PRNGKey(1))
    # a translation by t costs (θ·t)² on each direction θ: on average |t|²/d = 1
    assert abs(loss(x) - 1.0) < 0.3
    g = jax.grad(loss)(x)                      # pulls x towards y
    assert jnp.all(g.sum(0) < 0)
    ```
    """
    _check_p(p)
    x = _check_points(x, "x", 2)
    y = _check_points(y, "y", 2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"`x` and `y` must have the same dimension; got {x.shape[1]} and {y.shape[1]}."
        )
    dtype = jnp.result_type(x.dtype, y.dtype, jnp.float32)
    x, y = x.astype(dtype), y.astype(dtype)
    d = x.shape[1]
    if projections is None:
        if key is None or num_projections is None:
            raise ValueError(
                "sliced_wasserstein needs directions: pass `num_projections` and `key` (random "
                "directions) or `projections`, a (d, k) array of directions."
            )
        if not (isinstance(num_projections, int) and num_projections >= 1):
            raise ValueError(f"`num_projections` must be a positive int; got {num_projections!r}.")
        theta = jax.random.normal(key, (d, num_projections), dtype)
        theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
    else:
        theta = jnp.asarray(projections, dtype)
        if theta.ndim != 2 or theta.shape[0] != d or theta.shape[1] == 0:
            raise ValueError(
                f"`projections` must have shape (d, k) = ({d}, k) with k ≥ 1; got {theta.shape}."
            )
    a = _weights(a, x.shape[0], "a", dtype)
    b = _weights(b, y.shape[0], "b", dtype)
    result = _input_result((x, y, theta), (a, b))
    costs = jax.vmap(_cost_1d, in_axes=(1, 1, None, None, None))(x @ theta, y @ theta, a, b, p)
    return _finish(jnp.mean(costs), result, throw, return_result)
