"""Trace-time checks of arguments: wrong kinds, shapes and dtypes raise here, with a message
that says what was expected."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp


def check_float_tree(tree: Any, name: str) -> None:
    """Every leaf of `tree` must be a floating-point array (or Python float)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"`{name}` is empty; expected a pytree of floating-point arrays.")
    for leaf in leaves:
        if isinstance(leaf, float):
            continue
        if not (eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.inexact)):
            what = f"{leaf.dtype} array" if eqx.is_array(leaf) else type(leaf).__name__
            raise TypeError(
                f"`{name}` must hold floating-point arrays; found a {what}. "
                "Convert it, e.g. jnp.asarray(x, dtype=float)."
            )


def check_tol(tol: Any) -> None:
    if isinstance(tol, (int, float)) and not tol > 0:
        raise ValueError(f"`tol` must be positive; got {tol!r}.")


def check_max_steps(max_steps: Any) -> None:
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive Python int; got {max_steps!r}.")


def check_same_structure(tree: Any, y0: Any, what: str) -> None:
    """`tree` (arrays or shape structs) must match `y0`'s pytree structure and leaf shapes."""
    s_out = jax.tree_util.tree_structure(tree)
    s_y = jax.tree_util.tree_structure(y0)
    shapes_out = [jnp.shape(x) for x in jax.tree_util.tree_leaves(tree)]
    shapes_y = [jnp.shape(x) for x in jax.tree_util.tree_leaves(y0)]
    if s_out != s_y or shapes_out != shapes_y:
        raise ValueError(
            f"{what} must have the same structure and shapes as `y0`; got "
            f"{s_out} with shapes {shapes_out}, expected {s_y} with shapes {shapes_y}."
        )


def floats_to_arrays(tree: Any) -> Any:
    """Python floats become arrays, so that new values never retrace a jitted entry point (and
    a closure-converted function sees the same dynamic arguments every time; this also covers
    the `TypedFloat` primals JAX passes for Python floats under `grad`)."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x) if isinstance(x, float) else x, tree)
