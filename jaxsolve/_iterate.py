"""The one iteration loop that every jaxsolve solver runs.

A solver is an `AbstractIterativeSolver`: `init` builds a state, `step` advances the iterate,
`error` reads the solver's own error measure from the state. `iterate` runs the loop until
`error <= tol`, `max_steps` is reached, a non-finite value appears, or a step reports a
failure, and returns the final iterate with a `RESULTS` code and stats. It never raises on
values: failure is a result; `throw=True` is applied by the entry points.
"""

import abc
import sys
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree, Scalar

from ._solution import RESULTS

LoopKind = Literal["lax", "checkpointed", "bounded"]


class AbstractIterativeSolver(eqx.Module):
    """Base class of the solvers run by `iterate`.

    Subclasses implement three methods; `fn` and `args` are whatever the entry point passes
    (an objective, a map, a geometry), `y` the iterate:

    - `init(fn, y, args) -> state`
    - `step(fn, y, args, state) -> (y, state, result)`; `result` is `RESULTS.successful`
      unless the step itself failed (a line search, a breakdown), which stops the loop.
    - `error(fn, y, args, state) -> scalar`, the error measure compared against `tol`.

    `stats(state)` may add solver-specific counts to `Solution.stats`.
    """

    @abc.abstractmethod
    def init(self, fn: Any, y: PyTree[Array], args: Any) -> Any: ...

    @abc.abstractmethod
    def step(
        self, fn: Any, y: PyTree[Array], args: Any, state: Any
    ) -> tuple[Any, Any, RESULTS]: ...

    @abc.abstractmethod
    def error(self, fn: Any, y: PyTree[Array], args: Any, state: Any) -> Scalar: ...

    def stats(self, state: Any) -> dict[str, Array]:
        return {}


def tree_all_finite(tree: PyTree) -> Array:
    """True when every inexact leaf of `tree` is finite."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_inexact_array(x)]
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def tree_norm(tree: PyTree) -> Scalar:
    """Euclidean norm of all the leaves of `tree` together."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.abs(x) ** 2) for x in leaves))


def _print_progress(step, error, max_steps, name):
    step = int(step)
    width = 30
    filled = min(width, (width * step) // max(max_steps, 1))
    bar = "#" * filled + "." * (width - filled)
    sys.stderr.write(f"\r{name} [{bar}] step {step:>7d}/{max_steps}  error {float(error):.3e}")
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
        return lambda step, error: _print_progress(step, error, max_steps, name)
    if callable(progress):
        return progress
    raise TypeError(
        f"`progress` must be True, False or a callable `fn(step, error)`; got {type(progress)}."
    )


def iterate(
    solver: AbstractIterativeSolver,
    fn: Any,
    y0: PyTree[Array],
    args: Any,
    *,
    tol: float | Array,
    max_steps: int,
    kind: LoopKind = "lax",
    progress: Callable | None = None,
    progress_every: int | None = None,
) -> tuple[PyTree[Array], Any, RESULTS, dict[str, Array]]:
    """Run `solver` from `y0` until its error is at most `tol`.

    **Arguments:**

    - `solver`, `fn`, `y0`, `args`: see `AbstractIterativeSolver`.
    - `tol`: absolute tolerance on `solver.error`.
    - `max_steps`: the largest number of steps (a Python int).
    - `kind`: the loop's kind, chosen by the adjoint: `"lax"` (not reverse-differentiable,
      memory independent of the steps), `"checkpointed"` (reverse mode through the
      iterations with recursive checkpointing) or `"bounded"` (forward and reverse mode).
    - `progress`: `None`, or a host callback `fn(step, error)` (see `make_progress`).
    - `progress_every`: call `progress` every this many steps (default: ~100 calls per solve).

    **Returns:** `(y, state, result, stats)` with `stats = {"num_steps", "error", ...}`.
    """
    if not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"`max_steps` must be a non-negative Python int; got {max_steps!r}.")
    state0 = solver.init(fn, y0, args)
    err0 = jnp.asarray(solver.error(fn, y0, args, state0))
    carry0 = (y0, state0, jnp.array(0, dtype=jnp.int32), err0, RESULTS.successful)
    every = progress_every or max(1, max_steps // 100)

    def cond_fun(carry):
        _, _, num_steps, err, res = carry
        return (err > tol) & jnp.isfinite(err) & (res == RESULTS.successful)

    def body_fun(carry):
        y, state, num_steps, _, _ = carry
        y, state, res = solver.step(fn, y, args, state)
        err = jnp.asarray(solver.error(fn, y, args, state))
        num_steps = num_steps + 1
        if progress is not None:
            jax.lax.cond(
                (num_steps % every == 0) | (err <= tol),
                lambda: jax.debug.callback(progress, num_steps, err),
                lambda: None,
            )
        return y, state, num_steps, err, res

    y, state, num_steps, err, res = eqxi.while_loop(
        cond_fun, body_fun, carry0, max_steps=max_steps, kind=kind
    )
    finite = jnp.isfinite(err) & tree_all_finite(y)
    result = RESULTS.where(
        ~finite,
        RESULTS.nonfinite,
        RESULTS.where(
            res != RESULTS.successful,
            res,
            RESULTS.where(err <= tol, RESULTS.successful, RESULTS.max_steps_reached),
        ),
    )
    if progress is not None:
        jax.debug.callback(lambda *_: sys.stderr.write("\n"), num_steps)
    stats = {"num_steps": num_steps, "error": err, **solver.stats(state)}
    return y, state, result, jax.lax.stop_gradient(stats)


def apply_throw(solution, throw: bool):
    """Apply `throw=True` inside a jitted entry point: a failed solve (any member of a batch)
    raises an error carrying the result's message. `throw=False` returns `solution` as is."""
    if not throw:
        return solution
    value = solution.result.error_if(solution.value, solution.result != RESULTS.successful)
    return eqx.tree_at(lambda s: s.value, solution, value)
