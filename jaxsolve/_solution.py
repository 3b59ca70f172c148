"""Result codes and the `Solution` every solver returns."""

from typing import Any

import equinox as eqx
import lineax as lx
from jaxtyping import Array, PyTree


class RESULTS(lx.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """Why a solver stopped. Each member carries the message shown by `throw=True`.

    Extends `lineax.RESULTS`, so lineax's linear-solve results (`singular`, `breakdown`,
    `stagnation`, ...) are members too. Compare with `sol.result == js.RESULTS.successful`;
    turn a result into its message with `js.RESULTS[sol.result]`.
    """

    nonfinite = (
        "A NaN or inf appeared in the iterates or the error. Check the inputs for NaN/inf "
        "(data, weights, initial point), or make the step smaller (learning rate, damping)."
    )
    line_search_failed = (
        "The line search could not decrease the objective along the search direction. The "
        "problem may be badly scaled or non-smooth; try another solver or a looser `tol`."
    )
    invalid_input = (
        "An input value is invalid (for example a negative weight, a non-positive "
        "regularisation, or marginals of different total mass). See the solver's docstring "
        "for what it expects."
    )
    inner_not_converged = (
        "An inner solve did not converge, so derivatives computed from it are approximate. "
        "Increase the inner `max_steps` or loosen the inner `tol`."
    )


class Solution(eqx.Module):
    """What a jaxsolve solver returns.

    **Attributes:**

    - `value`: the solution (same pytree structure as the initial point).
    - `result`: a `js.RESULTS` member; `js.RESULTS.successful` when the error reached `tol`.
    - `stats`: a dict of scalars: always `num_steps` and `error` (the solver's own error
      measure at `value`), plus solver-specific counts.
    - `state`: the solver's final internal state (for warm starts and inspection).
    - `aux`: auxiliary output of the objective, when `has_aux=True`; else `None`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    sol = js.minimise(lambda y, a: jnp.sum((y - a) ** 2), jnp.zeros(3), jnp.ones(3))
    assert sol.result == js.RESULTS.successful
    print(sol.value, sol.stats["num_steps"])
    ```
    """

    value: PyTree[Array]
    result: RESULTS
    stats: dict[str, Array]
    state: Any = None
    aux: Any = None
