"""A truncated Neumann series as a lineax linear solver."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, PyTree


class Neumann(lx.AbstractLinearSolver):
    r"""Approximate `A⁻¹ b` by the truncated Neumann series `α Σ_{j<K} (I − αA)^j b`.

    The estimator of Lorraine, Vicol & Duvenaud (AISTATS 2020) for implicit hypergradients: only
    matrix–vector products with `A` (e.g. Hessian–vector products), a fixed cost of `steps`
    products, and a bias that shrinks geometrically when `0 < α < 2 / λ_max(A)` for a positive
    definite `A`. It is a `lineax.AbstractLinearSolver`, so it can be passed wherever a linear
    solver is taken, e.g. `js.ImplicitAdjoint(linear_solver=js.Neumann(steps=50, alpha=0.1))`.

    **Arguments:**

    - `steps`: the number of terms `K` (a Python int).
    - `alpha`: the step `α` (a pytree leaf: it may be an array).

    **Example:**

    ```python
    import jax.numpy as jnp
    import lineax as lx
    import jaxsolve as js

    A = lx.MatrixLinearOperator(jnp.array([[2.0, 0.5], [0.5, 1.0]]))
    x = lx.linear_solve(A, jnp.ones(2), js.Neumann(steps=200, alpha=0.4)).value
    assert jnp.allclose(x, jnp.linalg.solve(A.as_matrix(), jnp.ones(2)), atol=1e-5)
    ```
    """

    steps: int = eqx.field(static=True, default=50)
    alpha: float | Array = 1.0

    def __check_init__(self):
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"Neumann `steps` must be a positive int; got {self.steps!r}.")

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        if operator.in_structure() != operator.out_structure():
            raise ValueError(
                "Neumann needs a square operator (same input and output structure); got "
                f"{operator.in_structure()} -> {operator.out_structure()}."
            )
        return operator

    def compute(self, state, vector: PyTree[Array], options: dict[str, Any]):
        operator = state
        alpha = self.alpha

        def body(_, carry):
            term, total = carry
            a_term = operator.mv(term)
            term = jax.tree_util.tree_map(lambda t, at: t - alpha * at, term, a_term)
            total = jax.tree_util.tree_map(jnp.add, total, term)
            return term, total

        _, total = jax.lax.fori_loop(0, self.steps - 1, body, (vector, vector))
        solution = jax.tree_util.tree_map(lambda t: alpha * t, total)
        return solution, lx.RESULTS.successful, {"num_steps": self.steps}

    def transpose(self, state, options: dict[str, Any]):
        return state.transpose(), options

    def conj(self, state, options: dict[str, Any]):
        return lx.conj(state), options

    def assume_full_rank(self) -> bool:
        return True
