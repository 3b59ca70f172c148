"""`Raveled`: a lineax solver for array vectors, applied to an operator on pytree vectors (a
network's weights) by flattening them into one vector around each solve."""

from typing import Any

import jax
import jax.flatten_util
import jax.tree_util as jtu
import lineax as lx


def _ravel(tree):
    return jax.flatten_util.ravel_pytree(tree)[0]


def _unraveller(structure):
    zeros = jtu.tree_map(lambda s: jax.numpy.zeros(s.shape, s.dtype), structure)
    return jax.flatten_util.ravel_pytree(zeros)[1]


class Raveled(lx.AbstractLinearSolver):
    """`solver` (which takes operators on one array) on a square operator whose vectors are a
    pytree: the operator becomes one on the flat vector (`jax.flatten_util.ravel_pytree`),
    the right-hand side and a warm start `options["y0"]` are flattened, the solution
    unflattened. The derivative rules, transposes included, pass through: CG's and GMRES's
    own. How the default implicit adjoint of `js.minimise` runs jaxsolve's CG on an equinox
    model's parameters.

    **Example:**

    ```python
    import jax.numpy as jnp, lineax as lx
    import jaxsolve as js
    from jaxsolve._raveled import Raveled

    struct = {"a": jnp.zeros(2), "b": jnp.zeros(())}
    op = lx.FunctionLinearOperator(lambda v: {"a": 2.0 * v["a"], "b": 4.0 * v["b"]}, struct,
                                   tags=lx.positive_semidefinite_tag)
    b = {"a": jnp.ones(2), "b": jnp.array(2.0)}
    x = lx.linear_solve(op, b, Raveled(js.linear.CG(tol=1e-6))).value
    assert jnp.allclose(x["a"], 0.5) and jnp.allclose(x["b"], 0.5)
    ```
    """

    solver: lx.AbstractLinearSolver

    def init(self, operator, options):
        if operator.in_structure() != operator.out_structure():
            raise ValueError(
                "Raveled needs a square operator (same input and output structure); got "
                f"{operator.in_structure()} -> {operator.out_structure()}."
            )
        unravel = _unraveller(operator.in_structure())
        size = sum(int(s.size) for s in jtu.tree_leaves(operator.in_structure()))
        dtype = jtu.tree_leaves(operator.in_structure())[0].dtype
        flat_struct = jax.ShapeDtypeStruct((size,), dtype)
        flat_op = lx.FunctionLinearOperator(
            lambda v: _ravel(operator.mv(unravel(v))), flat_struct, tags=_tags(operator)
        )
        return self.solver.init(flat_op, _flat_options(options))

    def compute(self, state, vector, options):
        flat, unravel = jax.flatten_util.ravel_pytree(vector)
        value, result, stats = self.solver.compute(state, flat, _flat_options(options))
        return unravel(value), result, stats

    def transpose(self, state, options):
        return self.solver.transpose(state, options)

    def conj(self, state, options):
        return self.solver.conj(state, options)

    def assume_full_rank(self):
        return self.solver.assume_full_rank()


def _tags(operator) -> frozenset:
    tags = set()
    for tag, test in (
        (lx.symmetric_tag, lx.is_symmetric),
        (lx.positive_semidefinite_tag, lx.is_positive_semidefinite),
        (lx.negative_semidefinite_tag, lx.is_negative_semidefinite),
    ):
        if test(operator):
            tags.add(tag)
    return frozenset(tags)


def _flat_options(options: dict[str, Any]) -> dict[str, Any]:
    if options.get("y0") is None:
        return options
    return dict(options, y0=_ravel(options["y0"]))


def is_single_array(structure: Any) -> bool:
    """Whether a vector structure is one array (not a container of arrays)."""
    return len(jtu.tree_leaves(structure)) == 1 and jtu.tree_structure(structure).num_nodes == 1


def for_vectors_like(y: Any, solver: lx.AbstractLinearSolver) -> lx.AbstractLinearSolver:
    """`solver` for vectors shaped like `y`: itself for one array, `Raveled(solver)` for a
    pytree of arrays."""
    return solver if is_single_array(y) else Raveled(solver)
