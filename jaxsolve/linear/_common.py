"""Shared pieces of the linear solvers: the iteration adapter around the core loop, inner
products, result conversion."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Scalar

from .._iterate import AbstractIterativeSolver, run_loop
from .._solution import RESULTS


def dot(x: Array, y: Array) -> Scalar:
    """Real inner product of two arrays of the same shape (any shape: grids stay grids)."""
    return jnp.sum(x * y)


def check_square(operator: lx.AbstractLinearOperator, who: str) -> None:
    if operator.in_structure() != operator.out_structure():
        raise ValueError(
            f"{who} needs a square operator (same input and output structure); got "
            f"{operator.in_structure()} -> {operator.out_structure()}."
        )
    leaves = jax.tree_util.tree_leaves(operator.in_structure())
    if len(leaves) != 1:
        raise TypeError(
            f"{who} works on operators whose vectors are single arrays; got the structure "
            f"{operator.in_structure()}. Flatten the vector (e.g. jax.flatten_util.ravel_pytree)."
        )


def to_lx_result(result: RESULTS) -> lx.RESULTS:
    """Map a jaxsolve loop result onto the lineax members that lineax.linear_solve carries."""
    r = lx.RESULTS
    return r.where(
        result == RESULTS.successful,
        r.successful,
        r.where(
            result == RESULTS.max_steps_reached,
            r.max_steps_reached,
            r.where(result == RESULTS.stagnation, r.stagnation, r.breakdown),
        ),
    )


def safe_norm_b(b: Array) -> Scalar:
    nb = jnp.sqrt(dot(b, b))
    return jnp.where(nb > 0, nb, jnp.ones_like(nb))


class LinearIteration(eqx.Module):
    """Base of the inner iterations: `fn` is the operator, `args` is `(b, norm_b)`; the state
    carries the residual norm so the error costs nothing extra.

    TEMPORARY: the old `(fn, y, args, state)` interface, run through `_Legacy` on the new
    protocol until the linear family moves onto it."""

    def error(self, fn, y, args, state) -> Scalar:
        return state.res_norm / args[1]

    def stats(self, state) -> dict[str, Array]:
        return {"num_matvecs": state.num_matvecs}


class _Legacy(AbstractIterativeSolver):
    it: Any
    fn: Any
    args: Any
    tol: Any

    def init(self, problem, y, options):
        return self.it.init(self.fn, y, self.args), RESULTS.successful

    def step(self, problem, y, state):
        y, s, res = self.it.step(self.fn, y, self.args, state[0])
        return y, (s, res)

    def terminate(self, problem, y, state):
        err = self.it.error(self.fn, y, self.args, state[0])
        failed = state[1] != RESULTS.successful
        done = (err <= self.tol) | ~jnp.isfinite(err) | failed
        return done, RESULTS.where(
            failed,
            state[1],
            RESULTS.where(jnp.isfinite(err), RESULTS.successful, RESULTS.nonfinite),
        )

    def error(self, problem, y, state):
        return self.it.error(self.fn, y, self.args, state[0])

    def postprocess(self, problem, y, state):
        return y, self.it.stats(state[0])


def iterate(iteration, fn, y0, args, *, tol, max_steps):
    y, state, result, stats = run_loop(
        None, _Legacy(iteration, fn, args, tol), y0, max_steps=max_steps, options={}
    )
    return y, state[0], result, stats


def run_iteration(
    iteration: LinearIteration,
    operator: lx.AbstractLinearOperator,
    vector: Array,
    options: dict[str, Any],
    tol,
    max_steps: int,
):
    """Run `iteration` with the core loop from `options["y0"]` (or zero); return lineax's
    `(solution, result, stats)` triple."""
    y0 = options.get("y0", None)
    if y0 is None:
        y0 = jnp.zeros_like(vector)
    else:
        y0 = jnp.asarray(y0, dtype=vector.dtype)
    args = (vector, safe_norm_b(vector))
    y, _, result, stats = iterate(iteration, operator, y0, args, tol=tol, max_steps=max_steps)
    return y, to_lx_result(result), stats


def check_omega(omega, who: str):
    if isinstance(omega, (int, float)) and not (0 < omega < 2):
        raise ValueError(
            f"{who} needs a relaxation `omega` strictly between 0 and 2 (it diverges "
            f"otherwise); got {omega!r}. Typical values: 1.0 (Gauss-Seidel) to 1.9."
        )


def checked_omega(omega, dtype):
    omega = jnp.asarray(omega, dtype=dtype)
    return eqx.error_if(
        omega,
        (omega <= 0) | (omega >= 2),
        "The relaxation `omega` must lie strictly between 0 and 2.",
    )
