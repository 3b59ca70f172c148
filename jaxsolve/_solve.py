"""`iterative_solve`: the loop and the adjoint put together, for every entry point."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
from jaxtyping import Array, PyTree

from ._adjoint import AbstractAdjoint, check_adjoint
from ._checks import check_float_tree, check_max_steps, check_tol, floats_to_arrays
from ._iterate import AbstractIterativeSolver, apply_throw, iterate, make_progress
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


def run_entry_point(
    solver, fn, y0, args, *, tol, max_steps, adjoint, throw, progress, optimality, tags, name, check
):
    """The body of `minimise`, `root_find` and `fixed_point`: argument checks, then one jitted
    solve. Python floats in `args` and `tol` become arrays, so new values never recompile."""
    check_tol(tol)
    check_max_steps(max_steps)
    args, tol = floats_to_arrays((args, tol))
    return _run_jitted(
        solver,
        fn,
        y0,
        args,
        tol,
        max_steps,
        adjoint,
        throw,
        progress,
        optimality=optimality,
        tags=tags,
        name=name,
        check=check,
    )


@eqx.filter_jit
def _run_jitted(
    solver, fn, y0, args, tol, max_steps, adjoint, throw, progress, *, optimality, tags, name, check
):
    # Checks of `fn` run at trace time only: once per compilation, never on a cache hit.
    check_float_tree(y0, "y0")
    if not callable(fn):
        raise TypeError(f"{name}'s `fn` must be callable as fn(y, args); got {type(fn).__name__}.")
    check(fn, y0, args)
    fn = closure_convert(fn, y0, args)
    sol = iterative_solve(
        solver,
        fn,
        y0,
        args,
        optimality=optimality,
        tags=tags,
        tol=tol,
        max_steps=max_steps,
        adjoint=adjoint,
        progress=progress,
        name=name,
    )
    return apply_throw(sol, throw)
