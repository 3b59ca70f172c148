"""Euclidean projections `argmin_{p ∈ C} ½‖p − x‖²` onto convex sets.

Every projection is `projection(x, hyperparams)`: the point `x` (a pytree of arrays, or one
array where the set is defined on arrays) and the set's parameters. That is JAXopt's
convention (`projection_box(x, (lower, upper))` becomes `js.projections.box(x, (lower, upper))`)
and the shape of `js.ProjectedGradient`'s `projection(y, args)`: a projection whose
hyperparameters are the objective's `args` plugs in as it is, otherwise a two-line function
picks them out of `args`, and either way they are differentiable inputs.

All are closed forms (the simplex and the L1 ball by sorting, exactly; the box section by a
bisection on its dual variable followed by the exact formula on the piece the bisection
found), written so that automatic differentiation gives the derivative of the projection
wherever it is differentiable (everywhere but on a set of measure zero), with respect to `x`
and to the hyperparameters. They vmap and keep the dtype of `x`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, PyTree, Scalar


def _like(h: Any, x: Array) -> Array:
    """A hyperparameter in the dtype of `x` (differentiable: a cast, not a constant)."""
    return jnp.asarray(h).astype(x.dtype)


def _broadcast_tree(h: Any, x: PyTree) -> PyTree:
    """A scalar or a pytree of `x`'s structure, as a pytree of `x`'s structure."""
    if h is None:
        return jtu.tree_map(lambda _: None, x)
    if jtu.tree_structure(h) == jtu.tree_structure(x):
        return h
    if jnp.ndim(h) == 0 or len(jtu.tree_leaves(x)) == 1:
        return jtu.tree_map(lambda _: h, x)
    raise ValueError(
        "A bound must be a scalar or a pytree of the same structure as `x`; got "
        f"{jtu.tree_structure(h)} for x of structure {jtu.tree_structure(x)}."
    )


def _clip(x: Array, lower: Any, upper: Any) -> Array:
    # `where`, not `clip`: at a tie `clip`'s derivative splits between x and the bound.
    if lower is not None:
        lo = _like(lower, x)
        x = jnp.where(x < lo, lo, x)
    if upper is not None:
        hi = _like(upper, x)
        x = jnp.where(x > hi, hi, x)
    return x


def nonnegative(x: PyTree[Array], hyperparams: Any = None) -> PyTree[Array]:
    """Projection onto the non-negative orthant, `max(x, 0)` leaf by leaf.

    **Arguments:** `x`, a pytree of arrays; `hyperparams` is ignored (so that
    `js.ProjectedGradient(js.projections.nonnegative)` works with any `args`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    assert (js.projections.nonnegative(jnp.array([-1.0, 2.0])) == jnp.array([0.0, 2.0])).all()
    ```
    """
    del hyperparams
    return jtu.tree_map(lambda v: jnp.where(v < 0, jnp.zeros_like(v), v), x)  # NaN propagates


def box(x: PyTree[Array], hyperparams: tuple[Any, Any]) -> PyTree[Array]:
    """Projection onto the box `lower ≤ p ≤ upper`, coordinate by coordinate.

    **Arguments:**

    - `x`: a pytree of arrays.
    - `hyperparams`: `(lower, upper)`, each a scalar, an array broadcastable to a leaf, a
      pytree of `x`'s structure, or `None` (unbounded); `±inf` leaves a coordinate free.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    p = js.projections.box(jnp.array([-2.0, 0.5, 3.0]), (0.0, 1.0))
    assert jnp.allclose(p, jnp.array([0.0, 0.5, 1.0]))
    ```
    """
    lower, upper = hyperparams
    lower = _broadcast_tree(lower, x)
    upper = _broadcast_tree(upper, x)
    return jtu.tree_map(_clip, x, lower, upper, is_leaf=lambda v: v is None)


def _check_array(x: Any, name: str) -> Array:
    if isinstance(x, (dict, list, tuple)):
        raise TypeError(
            f"js.projections.{name} projects one array; got a {type(x).__name__}. Use "
            "jax.flatten_util.ravel_pytree to project a pytree as one vector."
        )
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"js.projections.{name} needs a floating-point array; got {x.dtype}.")
    return x


def simplex(x: Array, scale: ArrayLike = 1.0) -> Array:
    """Projection onto the simplex `{p ≥ 0, Σ p = scale}` (all entries of `x` together).

    Exact, by sorting (Held et al. 1974; Condat 2016): `p = max(x − θ, 0)` with the threshold
    `θ` read off the sorted entries. Its derivative is `diag(s) − s sᵀ/|s|` (`s` the support).
    For one simplex per row, `jax.vmap` it.

    **Arguments:**

    - `x`: an array.
    - `scale`: the simplex's total mass (positive; default 1).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    p = js.projections.simplex(jnp.array([0.5, 1.5, -1.0]))
    assert jnp.allclose(p, jnp.array([0.0, 1.0, 0.0]))
    ```
    """
    x = _check_array(x, "simplex")
    s = _like(scale, x)
    flat = x.ravel()
    u = jnp.sort(flat)[::-1]
    cssv = jnp.cumsum(u) - s
    ind = jnp.arange(1, flat.size + 1, dtype=x.dtype)
    # u_k − (Σ_{j≤k} u_j − s)/k > 0 holds for k = 1..ρ and fails after: count it.
    rho = jnp.sum(u - cssv / ind > 0) - 1
    rho = jnp.maximum(rho, 0)
    theta = cssv[rho] / (rho + 1).astype(x.dtype)
    out = jnp.where(flat <= theta, 0.0, flat - theta)  # NaN propagates
    return out.astype(x.dtype).reshape(x.shape)


def l1_ball(x: Array, radius: ArrayLike = 1.0) -> Array:
    """Projection onto the L1 ball `{‖p‖₁ ≤ radius}`, exactly (through `simplex`).

    **Arguments:**

    - `x`: an array.
    - `radius`: positive (default 1).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    p = js.projections.l1_ball(jnp.array([2.0, -1.0]), 1.0)
    assert jnp.allclose(p, jnp.array([1.0, 0.0]))
    ```
    """
    x = _check_array(x, "l1_ball")
    r = _like(radius, x)
    inside = jnp.sum(jnp.abs(x)) <= r
    onto = jnp.sign(x) * simplex(jnp.abs(x), r)
    return jnp.where(inside, x, onto)


def _tree_norm(x: PyTree) -> Scalar:
    return jnp.sqrt(sum(jnp.sum(v * v) for v in jtu.tree_leaves(x)))


def l2_ball(x: PyTree[Array], radius: ArrayLike = 1.0) -> PyTree[Array]:
    """Projection onto the L2 ball `{‖p‖₂ ≤ radius}` (the norm of all leaves together).

    **Arguments:**

    - `x`: a pytree of arrays.
    - `radius`: positive (default 1).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    p = js.projections.l2_ball(jnp.array([3.0, 4.0]), 1.0)
    assert jnp.allclose(p, jnp.array([0.6, 0.8]))
    ```
    """
    norm = _tree_norm(x)
    outside = ~(norm <= radius)  # NaN propagates
    # The safe norm keeps the derivative finite at x = 0 (where the projection is x).
    factor = jnp.where(outside, radius / jnp.where(outside, norm, 1.0), 1.0)
    return jtu.tree_map(lambda v: (v * factor.astype(v.dtype)).astype(v.dtype), x)


def _dot(a: Array, x: Array) -> Array:
    return jnp.sum(a * x)


def hyperplane(x: Array, hyperparams: tuple[Array, ArrayLike]) -> Array:
    """Projection onto the hyperplane `{p : aᵀp = b}`.

    **Arguments:**

    - `x`: an array.
    - `hyperparams`: `(a, b)`, `a` of the shape of `x` (non-zero), `b` a scalar.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    p = js.projections.hyperplane(jnp.array([1.0, 1.0]), (jnp.array([1.0, 0.0]), 3.0))
    assert jnp.allclose(p, jnp.array([3.0, 1.0]))
    ```
    """
    x = _check_array(x, "hyperplane")
    a, b = hyperparams
    a = _like(a, x)
    return x - (_dot(a, x) - _like(b, x)) / _dot(a, a) * a


def halfspace(x: Array, hyperparams: tuple[Array, ArrayLike]) -> Array:
    """Projection onto the half-space `{p : aᵀp ≤ b}`.

    **Arguments:**

    - `x`: an array.
    - `hyperparams`: `(a, b)`, `a` of the shape of `x` (non-zero), `b` a scalar.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    a = jnp.array([1.0, 0.0])
    p = js.projections.halfspace(jnp.array([5.0, 1.0]), (a, 3.0))
    assert jnp.allclose(p, jnp.array([3.0, 1.0]))
    p = js.projections.halfspace(jnp.array([1.0, 1.0]), (a, 3.0))   # inside: unchanged
    assert jnp.allclose(p, jnp.array([1.0, 1.0]))
    ```
    """
    x = _check_array(x, "halfspace")
    a, b = hyperparams
    a = _like(a, x)
    excess = _dot(a, x) - _like(b, x)
    return x - jnp.where(excess > 0, excess, 0.0) / _dot(a, a) * a


def box_section(x: Array, hyperparams: tuple[Any, Any, Array, ArrayLike]) -> Array:
    """Projection onto the box section `{p : lower ≤ p ≤ upper, wᵀp = c}`.

    The projection is `p(θ) = clip(x − θ w, lower, upper)` where the dual variable `θ` solves
    the monotone piecewise-linear equation `wᵀ p(θ) = c`. A bisection on `θ` (its bracket
    from the breakpoints) finds the linear piece, then `θ` is solved exactly on it; the
    derivative follows the same closed form (correct wherever the active set is locally
    constant). An infeasible set (`wᵀlower > c` or `wᵀupper < c`) gives the box's nearest
    corner in the direction of `w`, not an error: check feasibility where it matters.

    **Arguments:**

    - `x`: an array.
    - `hyperparams`: `(lower, upper, w, c)`: bounds broadcastable to `x` (finite), weights `w`
      of the shape of `x` (any sign, not all zero), and the scalar `c`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    # the simplex is the box section 0 <= p <= inf... here 0 <= p <= 1, sum(p) = 1
    x = jnp.array([0.5, 1.5, -1.0])
    p = js.projections.box_section(x, (0.0, 1.0, jnp.ones(3), 1.0))
    assert jnp.allclose(p, js.projections.simplex(x))
    ```
    """
    x = _check_array(x, "box_section")
    lower, upper, w, c = hyperparams
    lo = jnp.broadcast_to(_like(lower, x), x.shape).ravel()
    hi = jnp.broadcast_to(_like(upper, x), x.shape).ravel()
    w = jnp.broadcast_to(_like(w, x), x.shape).ravel()
    c = _like(c, x)
    xf = x.ravel()

    def phi(theta, xf, lo, hi, w):
        return jnp.sum(w * jnp.clip(xf - theta * w, lo, hi))

    # Breakpoints (x − lo)/w and (x − hi)/w bracket θ: beyond them φ is constant.
    safe_w = jnp.where(w == 0, 1.0, w)
    bps = jnp.concatenate([(xf - lo) / safe_w, (xf - hi) / safe_w])
    bps = jnp.where(jnp.concatenate([w, w]) == 0, 0.0, bps)
    sx, slo, shi, sw, sc = jax.lax.stop_gradient((xf, lo, hi, w, c))
    sbps = jax.lax.stop_gradient(bps)
    a0, b0 = jnp.min(sbps), jnp.max(sbps)

    def body(_, ab):  # φ is non-increasing in θ
        a, b = ab
        m = 0.5 * (a + b)
        big = phi(m, sx, slo, shi, sw) > sc
        return jnp.where(big, m, a), jnp.where(big, b, m)

    a, b = jax.lax.fori_loop(0, 2 * jnp.finfo(x.dtype).nmant + 8, body, (a0, b0))
    theta0 = 0.5 * (a + b)
    # The piece at θ: coordinates free, at the lower or at the upper bound; on it φ is
    # linear, so θ has a closed form (differentiable in x, the bounds, w and c).
    z = sx - theta0 * sw
    free = (z > slo) & (z < shi)
    at_lo = z <= slo
    fixed = jnp.sum(jnp.where(at_lo, w * lo, 0.0)) + jnp.sum(jnp.where(free | at_lo, 0.0, w * hi))
    den = jnp.sum(jnp.where(free, w * w, 0.0))
    num = jnp.sum(jnp.where(free, w * xf, 0.0)) + fixed - c
    theta = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), theta0)
    p = jnp.where(free, xf - theta * w, jnp.where(at_lo, lo, hi))
    return p.reshape(x.shape)
