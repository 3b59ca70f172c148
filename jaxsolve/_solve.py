"""`iterative_solve`: the loop and the adjoint put together, for every entry point."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
from jaxtyping import Array, PyTree

from ._adjoint import AbstractAdjoint, check_adjoint
from ._iterate import AbstractIterativeSolver, iterate, make_progress
from ._solution import Solution


def iterative_solve(
    solver: AbstractIterativeSolver,
    fn: Any,
    y0: PyTree[Array],
    args: Any,
    *,
    optimality: Callable[[Any, PyTree[Array], Any], PyTree[Array]],
    tags: frozenset,
    tol: float | Array,
    max_steps: int,
    adjoint: AbstractAdjoint,
    progress: bool | Callable = False,
    name: str = "jaxsolve",
) -> Solution:
    """Run `solver` on `(fn, y0, args)` and differentiate the result with `adjoint`.

    `optimality(fn, y, args)` is zero exactly at a solution; `ImplicitAdjoint` differentiates
    it, `UnrollAdjoint` differentiates the loop. `fn` must already be closure-converted when it
    is a user function, so that the arrays it closes over are differentiable inputs. Returns a
    `Solution` without applying `throw` (the entry point does, see `apply_throw`).
    """
    adjoint = check_adjoint(adjoint)
    callback = make_progress(progress, max_steps, name)

    def fn_primal(inputs):
        fn_, solver_, y0_, args_, tol_ = inputs
        y, state, result, stats = iterate(
            solver_,
            fn_,
            y0_,
            args_,
            tol=tol_,
            max_steps=max_steps,
            kind=adjoint.loop_kind,
            progress=callback,
        )
        return y, (state, result, stats)

    def fn_rewrite(y, inputs):
        fn_, _, _, args_, _ = inputs
        return optimality(fn_, y, args_)

    # The starting point and the tolerance never carry derivatives.
    inputs = (fn, solver, jax.lax.stop_gradient(y0), args, jax.lax.stop_gradient(tol))
    y, (state, result, stats) = adjoint.apply(fn_primal, fn_rewrite, inputs, tags)
    return Solution(value=y, result=result, stats=stats, state=state, aux=None)


def closure_convert(fn: Callable, y0: PyTree[Array], args: Any) -> Callable:
    """Hoist the arrays `fn(y, args)` closes over into leaves, so they get derivatives."""
    if not callable(fn):
        raise TypeError(f"`fn` must be callable as fn(y, args); got {type(fn).__name__}.")
    return eqx.filter_closure_convert(fn, y0, args)
