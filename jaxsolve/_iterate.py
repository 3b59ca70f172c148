"""The solver protocol, and the one loop that runs every jaxsolve solver.

A solver is an `AbstractIterativeSolver` over a typed problem (`MinimiseProblem`,
`RootProblem`, `FixedPointProblem`, `OTProblem`, `LinearProblem`, ...):

- `init(problem, y0, options) -> state`
- `step(problem, y, state) -> (y, state)`
- `terminate(problem, y, state) -> (done, result)`: the solver decides when it has finished,
  and why (`successful`, or a failure such as `line_search_failed`).
- `postprocess(problem, y, state) -> (y, stats)`: the value returned and the solver's own
  counts (default: `y` unchanged, no counts).
- `error(problem, y, state) -> scalar`: the family's error measure (for `stats` and
  progress; default `‖problem.optimality(y)‖₂`; solvers read it from their state).

`run_loop` runs it; `js.iterative_solve` (in `_solve.py`) puts the loop, the adjoint, `throw`
and the stats together. Nothing here raises on values: failure is a result.
"""

import abc
import dataclasses
import sys
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, PyTree, Scalar

from ._solution import RESULTS

LoopKind = Literal["lax", "checkpointed", "bounded"]

_Problem = TypeVar("_Problem")
_Y = TypeVar("_Y")
_State = TypeVar("_State")


def tree_all_finite(tree: PyTree) -> Bool[Array, ""]:
    """True when every inexact leaf of `tree` is finite."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_inexact_array(x)]
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def tree_norm(tree: PyTree) -> Scalar:
    """Euclidean norm of all the leaves of `tree` together."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.abs(x) ** 2) for x in leaves))


def converged_by(err: Scalar, tol: Any) -> tuple[Bool[Array, ""], RESULTS]:
    """The common stopping rule for `terminate`: done once `err <= tol` (successful) or `err`
    is not finite (`nonfinite`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    done, result = js.converged_by(jnp.array(1e-9), 1e-8)
    assert done and result == js.RESULTS.successful
    done, result = js.converged_by(jnp.array(jnp.nan), 1e-8)
    assert done and result == js.RESULTS.nonfinite
    ```
    """
    finite = jnp.isfinite(err)
    done = (err <= tol) | ~finite
    return done, RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite)


class AbstractIterativeSolver(eqx.Module, Generic[_Problem, _Y, _State]):
    """The protocol every jaxsolve solver implements (optimistix's is the model).

    Implement `init`, `step` and `terminate`; `postprocess` and `error` have defaults. The
    loop, the derivative (implicit or unrolled), `throw`, `stats` and progress reports are
    `js.iterative_solve`'s job, never the solver's. Family bases (`js.AbstractMinimiser`,
    `js.AbstractRootFinder`, `js.AbstractFixedPointSolver`, `js.ot.AbstractOTSolver`) add
    their family's stopping rule; subclass those to plug a solver into an entry point.

    **Example:** a solver for `js.iterative_solve` on a `js.FixedPointProblem`.

    ```python
    import equinox as eqx, jax.numpy as jnp
    import jaxsolve as js

    class Halving(js.AbstractIterativeSolver):   # y <- (y + T(y)) / 2
        tol: float = 1e-8

        def init(self, problem, y, options):
            return problem.fn(y, problem.args)

        def step(self, problem, y, ty):
            y = 0.5 * (y + ty)
            return y, problem.fn(y, problem.args)

        def terminate(self, problem, y, ty):
            return js.converged_by(jnp.linalg.norm(ty - y), self.tol)

    problem = js.FixedPointProblem(lambda y, a: jnp.cos(y) * a, 1.0)
    sol = js.iterative_solve(problem, Halving(), jnp.array(0.0), max_steps=200)
    assert abs(sol.value - jnp.cos(sol.value)) < 1e-7
    ```
    """

    @abc.abstractmethod
    def init(self, problem: _Problem, y0: _Y, options: dict[str, Any]) -> _State:
        """The state before the first step."""

    @abc.abstractmethod
    def step(self, problem: _Problem, y: _Y, state: _State) -> tuple[_Y, _State]:
        """One iteration."""

    @abc.abstractmethod
    def terminate(self, problem: _Problem, y: _Y, state: _State) -> tuple[Bool[Array, ""], RESULTS]:
        """`(done, result)`: whether to stop, and why (meaningful only when `done`)."""

    def postprocess(self, problem: _Problem, y: _Y, state: _State) -> tuple[_Y, dict[str, Array]]:
        """The value to return and the solver's own counts for `Solution.stats`."""
        return y, {}

    def error(self, problem: _Problem, y: _Y, state: _State) -> Scalar:
        """The family's error measure at `(y, state)`; reported in `stats` and progress."""
        return tree_norm(problem.optimality(y))  # pyright: ignore[reportAttributeAccessIssue]


@dataclasses.dataclass(frozen=True)
class ProgressBar:
    """A one-line progress bar on stderr, called on the host as `bar(step, error)`. Equal
    settings compare equal, so passing it to a jitted function again does not recompile."""

    max_steps: int
    name: str

    def __call__(self, step, error) -> None:
        step = int(step)
        width = 30
        filled = min(width, (width * step) // max(self.max_steps, 1))
        bar = "#" * filled + "." * (width - filled)
        msg = f"\r{self.name} [{bar}] step {step:>7d}/{self.max_steps}  error {float(error):.3e}"
        sys.stderr.write(msg)
        sys.stderr.flush()


def make_progress(
    progress: bool | Callable[[Array, Array], Any], max_steps: int, name: str
) -> Callable | None:
    """Normalise the `progress` argument of the entry points to a host callback or `None`.

    `True` prints a one-line bar to stderr; a callable is called as `fn(step, error)` on the
    host (with batched arrays under `vmap`).
    """
    if progress is False or progress is None:
        return None
    if progress is True:
        return ProgressBar(max_steps, name)
    if callable(progress):
        return progress
    raise TypeError(
        f"`progress` must be True, False or a callable `fn(step, error)`; got {type(progress)}."
    )


def _newline(*_) -> None:
    sys.stderr.write("\n")


def end_progress(callback: Callable | None, token: Array) -> None:
    """End the progress bar's line once the loop is over (no-op without progress)."""
    if callback is not None:
        jax.debug.callback(_newline, token)


def run_loop(
    problem: Any,
    solver: AbstractIterativeSolver,
    y0: PyTree[Array],
    *,
    max_steps: int,
    options: dict[str, Any],
    kind: LoopKind = "lax",
    progress: Callable | None = None,
) -> tuple[PyTree[Array], Any, RESULTS, dict[str, Array]]:
    """Run `solver` on `problem` from `y0` until it terminates or `max_steps` loop steps.

    **Returns:** `(y, state, result, stats)`; `result` is the solver's when it terminated,
    `max_steps_reached` when the loop ran out, `nonfinite` when the value is not finite;
    `stats = {"num_steps", "error", ...solver counts}` (the solver's counts may redefine
    `num_steps`, e.g. sweeps, and the error's name, e.g. `marginal_error`).
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"`max_steps` must be a non-negative Python int; got {max_steps!r}.")
    state0 = solver.init(problem, y0, options)
    done0, result0 = solver.terminate(problem, y0, state0)
    every = max(1, max_steps // 100)

    def cond_fun(carry):
        return ~carry[3]

    def body_fun(carry):
        y, state, num_steps, _, _ = carry
        y, state = solver.step(problem, y, state)
        done, result = solver.terminate(problem, y, state)
        num_steps = num_steps + 1
        if progress is not None:
            report = progress
            jax.lax.cond(
                (num_steps % every == 0) | done,
                lambda: jax.debug.callback(report, num_steps, solver.error(problem, y, state)),
                lambda: None,
            )
        return y, state, num_steps, done, result

    carry0 = (y0, state0, jnp.array(0, jnp.int32), jnp.asarray(done0), result0)
    y, state, num_steps, done, result = eqxi.while_loop(
        cond_fun, body_fun, carry0, max_steps=max_steps, kind=kind
    )
    end_progress(progress, num_steps)
    result = RESULTS.where(done, result, RESULTS.max_steps_reached)
    y, solver_stats = solver.postprocess(problem, y, state)
    err = solver.error(problem, y, state)
    finite = tree_all_finite(y) & jnp.isfinite(err)
    result = RESULTS.where(finite, result, RESULTS.nonfinite)
    error_name = getattr(problem, "error_name", "error")
    stats = {"num_steps": num_steps, error_name: err, **solver_stats}
    return y, state, result, jax.lax.stop_gradient(stats)


def apply_throw(solution, throw: bool):
    """Apply `throw=True` inside a jitted entry point: a failed solve (any member of a batch)
    raises an error carrying the result's message. `throw=False` returns `solution` as is."""
    if not throw:
        return solution
    value = solution.result.error_if(solution.value, solution.result != RESULTS.successful)
    return eqx.tree_at(lambda s: s.value, solution, value)
