"""The backtracking line search every jaxsolve solver that needs one uses."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool


def backtracking(
    trial: Callable[[Array], Any],
    accept: Callable[[Array, Any], Bool[Array, ""]],
    t0: Array,
    max_backtracks: int,
) -> tuple[Array, Any, Bool[Array, ""], Array]:
    """Try `t0`, then halve the step until `accept(t, trial(t))` or `max_backtracks` halvings.

    `trial(t)` evaluates the step of length `t` (e.g. the new point and its merit);
    `accept(t, out)` is the sufficient-decrease test (Armijo: `φ(t) ≤ φ(0) + c t φ'(0)`).
    Returns `(t, trial(t), accepted, halvings)`.
    """
    out0 = trial(t0)
    carry0 = (t0, out0, accept(t0, out0), jnp.array(0, jnp.int32))

    def cond(c):
        _, _, ok, k = c
        return (~ok) & (k < max_backtracks)

    def body(c):
        t, _, _, k = c
        t = 0.5 * t
        out = trial(t)
        return t, out, accept(t, out), k + 1

    return jax.lax.while_loop(cond, body, carry0)
