"""`iterative_solve`: the one place that runs the loop, applies the adjoint and `throw`,
assembles `stats` and reports progress, for every family."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from ._adjoint import AbstractAdjoint, ImplicitAdjoint, check_adjoint
from ._checks import check_float_tree, check_max_steps, check_tol, floats_to_arrays
from ._iterate import AbstractIterativeSolver, apply_throw, make_progress, run_loop
from ._problem import AbstractProblem, float_dtype
from ._solution import RESULTS, Solution


def iterative_solve(
    problem: AbstractProblem,
    solver: AbstractIterativeSolver,
    y0: PyTree[Array],
    *,
    max_steps: int,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    throw: bool = True,
    progress: bool | Callable = False,
    options: dict[str, Any] | None = None,
    name: str | None = None,
) -> Solution:
    """Run `solver` on `problem` from `y0`, differentiably, and return a `js.Solution`.

    The loop runs until `solver.terminate` says done, or `max_steps` loop steps. The value is
    differentiated by `adjoint`: `js.ImplicitAdjoint()` differentiates `problem.optimality`
    at the solution (default; its linear solver defaults to `problem.adjoint_solver`),
    `js.UnrollAdjoint()` the loop. `problem.validate()` (value checks of the data) takes
    precedence over the loop's result; `throw=True` turns a failure into an error with the
    result's message, `throw=False` never raises, derivative solves included.

    **Arguments:**

    - `problem`: a problem (`js.MinimiseProblem`, `js.RootProblem`, `js.FixedPointProblem`,
      `js.ot.OTProblem`, ...), a pytree whose array leaves are differentiable inputs.
    - `solver`: an `AbstractIterativeSolver` for that problem.
    - `y0`: the starting point (gets no derivative).
    - `max_steps`: the most loop steps (a Python int).
    - `adjoint`, `throw`, `progress`: as in `js.minimise`.
    - `options`: a dict handed to `solver.init`.
    - `name`: the progress bar's label (default: the solver's class name).

    **Returns:** a `js.Solution` with `stats = {"num_steps", <error measure>, ...}`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    def solve(a):
        problem = js.RootProblem(lambda y, a: y**3 - a, a)
        return js.iterative_solve(problem, js.Newton(tol=1e-10), jnp.array(1.0), max_steps=50)

    assert jnp.allclose(solve(8.0).value, 2.0)
    assert jnp.allclose(jax.grad(lambda a: solve(a).value)(8.0), 1 / 12)  # d a^(1/3)/da
    ```
    """
    adjoint = check_adjoint(adjoint)
    if not isinstance(solver, AbstractIterativeSolver):
        raise TypeError(
            f"`solver` must be a js.AbstractIterativeSolver; got {type(solver).__name__}."
        )
    callback = make_progress(progress, max_steps, name or type(solver).__name__)

    def fn_primal(inputs):
        problem_, solver_, y0_, options_ = inputs
        y, state, result, stats = run_loop(
            problem_,
            solver_,
            y0_,
            max_steps=max_steps,
            options=options_,
            kind=adjoint.loop_kind,
            progress=callback,
        )
        return y, (state, result, stats)

    def fn_rewrite(y, inputs):
        return inputs[0].optimality(y)

    options = {} if options is None else options
    y0 = jax.lax.stop_gradient(y0)
    inputs = (problem, solver, y0, jax.lax.stop_gradient(options))
    default_solver = problem.adjoint_solver(y0)
    y, (state, result, stats) = adjoint.apply(
        fn_primal, fn_rewrite, inputs, problem.tags, default_solver, throw
    )
    checked = problem.validate()
    result = RESULTS.where(checked == RESULTS.successful, result, checked)
    return apply_throw(Solution(value=y, result=result, stats=stats, state=state), throw)


def closure_convert(fn: Callable, y0: PyTree[Array], args: Any) -> Callable:
    """Hoist the arrays `fn(y, args)` closes over into leaves, so they get derivatives and
    are not baked into the compiled program as constants."""
    if not callable(fn):
        raise TypeError(f"`fn` must be callable as fn(y, args); got {type(fn).__name__}.")
    return eqx.filter_closure_convert(fn, y0, args)


def with_tol(solver: Any, tol: Any, default: float) -> Any:
    """`solver` with its `tol` set: the entry point's `tol` when given, else the solver's own,
    else the family's default for the dtype. Called inside the jitted entry point, with
    Python floats already arrays (new values do not recompile)."""
    tol = solver.tol if tol is None else tol
    tol = default if tol is None else tol
    return eqx.tree_at(lambda s: s.tol, solver, jnp.asarray(tol), is_leaf=lambda x: x is None)


def run_entry_point(
    problem_cls, solver, fn, y0, args, *, tol, max_steps, adjoint, throw, progress, name, check
):
    """The body of `minimise`, `root_find` and `fixed_point`: argument checks, then one jitted
    solve. Python floats in `args` and `tol` become arrays, so new values never recompile."""
    check_max_steps(max_steps)
    check_float_tree(y0, "y0")
    check_tol(tol)
    check_tol(getattr(solver, "tol", None))
    # Python floats (in the data, `tol`, and the solver's fields: learning rates, mixing, ...)
    # become arrays: new values are new data, never a recompilation.
    y0, args, tol, solver = floats_to_arrays((y0, args, tol, solver))
    return _run_jitted(
        problem_cls, solver, fn, y0, args, tol, max_steps, adjoint, throw, progress, name, check
    )


@eqx.filter_jit
def _run_jitted(
    problem_cls, solver, fn, y0, args, tol, max_steps, adjoint, throw, progress, name, check
):
    # Checks of `fn` run at trace time only: once per compilation, never on a cache hit.
    solver = with_tol(solver, tol, problem_cls.default_tol(float_dtype(y0)))
    if not callable(fn):
        raise TypeError(f"{name}'s `fn` must be callable as fn(y, args); got {type(fn).__name__}.")
    check(fn, y0, args)
    problem = problem_cls(closure_convert(fn, y0, args), args)
    return iterative_solve(
        problem,
        solver,
        y0,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=throw,
        progress=progress,
        name=name,
    )
