"""Vectors that are pytrees: THE arithmetic (inner product, axpy, select, flatten) of the
solvers whose unknowns may be any pytree of arrays (the Krylov and relaxation solvers of
`js.linear`, the bilevel algorithms).

On a single array every function here traces to exactly the operations of the plain array
expression (no extra add, no reshape): the flat-array path costs nothing for pytree support.
"""

import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree, Scalar


def tree_dot(x: PyTree[Array], y: PyTree[Array]) -> Scalar:
    """The real inner product `Σ_leaves Σ x·y` of two pytrees of the same structure (a grid
    stays a grid: no flattening)."""
    terms = [jnp.sum(a * b) for a, b in zip(jtu.tree_leaves(x), jtu.tree_leaves(y), strict=True)]
    return functools.reduce(operator.add, terms)


def tree_norm_scaled(x: PyTree[Array]) -> Scalar:
    """The Euclidean norm of a pytree, scaled by its largest entry first so that it neither
    overflows nor underflows (a diverged float32 iterate of 1e20 has a finite norm); for the
    once-per-solve true residual, not for the inner loops (it costs one more pass)."""
    s = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(a)) for a in jtu.tree_leaves(x)])
    safe = jnp.where((s > 0) & jnp.isfinite(s), s, jnp.ones_like(s))
    scaled = jtu.tree_map(lambda a: a / safe, x)
    return jnp.where(jnp.isfinite(s), safe * jnp.sqrt(tree_dot(scaled, scaled)), s)


def tree_add(x: PyTree[Array], y: PyTree[Array]) -> PyTree[Array]:
    return jtu.tree_map(operator.add, x, y)


def tree_sub(x: PyTree[Array], y: PyTree[Array]) -> PyTree[Array]:
    return jtu.tree_map(operator.sub, x, y)


def tree_scale(a: Any, x: PyTree[Array]) -> PyTree[Array]:
    """`a * x` leafwise (`a` a scalar)."""
    return jtu.tree_map(lambda xi: a * xi, x)


def tree_axpy(a: Any, x: PyTree[Array], y: PyTree[Array]) -> PyTree[Array]:
    """`a * x + y` leafwise (`a` a scalar)."""
    return jtu.tree_map(lambda xi, yi: a * xi + yi, x, y)


def tree_where(cond: Any, x: PyTree[Array], y: PyTree[Array]) -> PyTree[Array]:
    """`x` where the scalar `cond` holds, else `y`, leafwise."""
    return jtu.tree_map(lambda a, b: jnp.where(cond, a, b), x, y)


def zeros_like(tree: PyTree[Array]) -> PyTree[Array]:
    return jtu.tree_map(jnp.zeros_like, tree)


def tree_dtype(tree: Any) -> Any:
    """The one dtype of the leaves of a vector `tree` (arrays or shape-dtype structs)."""
    return jtu.tree_leaves(tree)[0].dtype


def is_single_array(tree: Any) -> bool:
    """Whether the vector `tree` is one array (or one shape-dtype struct), not a container."""
    return len(jtu.tree_leaves(tree)) == 1 and jtu.tree_structure(tree).num_nodes == 1


def tree_ravel(tree: PyTree[Array]) -> tuple[Array, Callable[[Array], PyTree[Array]]]:
    """`tree` as one flat vector and the map back (a single array is only reshaped). The
    leaves must share one dtype (`check_vector_structure`)."""
    if is_single_array(tree):
        shape = jnp.shape(tree)
        return jnp.reshape(tree, (-1,)), lambda v: jnp.reshape(v, shape)
    return jax.flatten_util.ravel_pytree(tree)


def same_vector_structure(x: Any, y: Any) -> bool:
    """Whether two vector structures (pytrees of arrays or shape-dtype structs) have the same
    tree, shapes and dtypes (weak typing ignored)."""
    if jtu.tree_structure(x) != jtu.tree_structure(y):
        return False
    key = lambda leaf: (tuple(leaf.shape), jnp.dtype(leaf.dtype))
    return all(key(a) == key(b) for a, b in zip(jtu.tree_leaves(x), jtu.tree_leaves(y)))


def check_vector_structure(struct: Any, who: str) -> None:
    """Static check of a vector space's structure (a pytree of arrays or shape-dtype
    structs): at least one leaf, all leaves of one floating dtype."""
    leaves = jtu.tree_leaves(struct)
    if not leaves:
        raise ValueError(f"{who}: the vectors are empty pytrees; there is nothing to solve for.")
    dtypes = {jnp.dtype(leaf.dtype) for leaf in leaves}
    if len(dtypes) > 1:
        raise TypeError(
            f"{who} needs the leaves of a pytree vector to share one dtype; got "
            f"{sorted(str(d) for d in dtypes)}. Cast them to one dtype (e.g. "
            "jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), tree))."
        )
