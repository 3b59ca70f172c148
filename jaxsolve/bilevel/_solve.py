"""`js.bilevel.solve`: the outer loop (a `lax.scan`) with an optax optimiser and an algorithm."""

from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jaxtyping import Array, PyTree

from .._checks import check_float_tree, floats_to_arrays
from .._functions import function_as_data, functions_as_data
from .._iterate import (
    AbstractIterativeSolver,
    apply_throw,
    end_progress,
    make_progress,
    tree_all_finite,
    tree_norm,
)
from .._problem import AbstractProblem
from .._solution import RESULTS
from ._algorithm import AbstractBilevelAlgorithm
from ._hypergradient import check_objective
from ._problem import Problem
from ._solution import BilevelSolution


class _OuterProblem(AbstractProblem):
    """The outer loop's problem: the objectives and the data
    (`batched`: step `t` sees slice `t` of every leaf). Its error measure is the outer loss."""

    error_name: ClassVar[str] = "outer_loss"
    problem: Problem
    outer_args: Any
    inner_args: Any
    batched: bool = eqx.field(static=True)

    def args_at(self, t):
        if not self.batched:
            return self.outer_args, self.inner_args
        pick = lambda tree: jtu.tree_map(lambda x: x[t], tree)
        return pick(self.outer_args), pick(self.inner_args)


class _OuterState(eqx.Module):
    t: Array
    opt_state: Any
    state: Any
    metrics: dict[str, Array]
    # running summaries, so that `terminate` and `error` cost O(1) per step
    finite: Array
    inner_ok: Array
    adjoint_ok: Array
    outer_loss: Array
    hypergrad_norm: Array


class _OuterLoop(AbstractIterativeSolver):
    """The outer loop of `js.bilevel.solve` as a core solver: one step asks the algorithm for
    a direction and gives it to the optax optimiser; the per-step metrics are written into
    arrays of length `num_steps`; done after exactly `num_steps` steps."""

    algorithm: AbstractBilevelAlgorithm
    # A new optax optimiser with the same settings is the same static key (its functions are
    # closures, new ones per `optax.adam(...)` call).
    optimiser: optax.GradientTransformation = eqx.field(converter=functions_as_data)
    num_steps: int = eqx.field(static=True)
    # User functions as data (their closed-over arrays are leaves): see `function_as_data`.
    metrics_fn: Callable | None = eqx.field(converter=function_as_data)
    project: Callable | None = eqx.field(converter=function_as_data)

    def _step(self, problem, theta, t, opt_state, state):
        oa, ia = problem.args_at(t)
        direction, state, metrics = self.algorithm.step(problem.problem, theta, state, oa, ia, t)
        metrics = dict(metrics, hypergrad_norm=tree_norm(direction))
        if self.metrics_fn is not None:
            metrics.update(self.metrics_fn(theta, self.algorithm.inner_value(state)))
        updates, opt_state = self.optimiser.update(direction, opt_state, theta)
        theta = optax.apply_updates(theta, updates)
        theta, state = self.algorithm.after_update(problem.problem, theta, state, ia)
        if self.project is not None:
            theta = self.project(theta)
        return theta, opt_state, state, metrics

    def init(self, problem, theta, options):
        oa, ia = problem.args_at(0)
        state = self.algorithm.init(problem.problem, theta, options["y0"], oa, ia)
        opt_state = self.optimiser.init(theta)
        t0 = jnp.array(0, jnp.int32)
        shapes = jax.eval_shape(lambda: self._step(problem, theta, t0, opt_state, state)[3])
        for key in ("outer_loss", "inner_converged"):
            if key not in shapes:
                raise ValueError(
                    f"{type(self.algorithm).__name__}.step must return a metric {key!r} "
                    f"(see js.bilevel.AbstractBilevelAlgorithm); got {sorted(shapes)}."
                )
        metrics = {k: jnp.zeros((self.num_steps, *v.shape), v.dtype) for k, v in shapes.items()}
        loss, norm = (jnp.zeros((), shapes[k].dtype) for k in ("outer_loss", "hypergrad_norm"))
        true = jnp.array(True)
        return _OuterState(t0, opt_state, state, metrics, true, true, true, loss, norm)

    def step(self, problem, theta, loop):
        theta, opt_state, state, metrics = self._step(
            problem, theta, loop.t, loop.opt_state, loop.state
        )
        buffers = {k: v.at[loop.t].set(metrics[k]) for k, v in loop.metrics.items()}
        return theta, _OuterState(
            loop.t + 1,
            opt_state,
            state,
            buffers,
            loop.finite & jnp.isfinite(metrics["outer_loss"]),
            loop.inner_ok & metrics["inner_converged"],
            loop.adjoint_ok & metrics.get("adjoint_converged", True),
            metrics["outer_loss"],
            metrics["hypergrad_norm"],
        )

    def terminate(self, problem, theta, loop):
        result = RESULTS.where(
            loop.finite,
            RESULTS.where(
                loop.inner_ok,
                RESULTS.where(loop.adjoint_ok, RESULTS.successful, RESULTS.adjoint_not_converged),
                RESULTS.inner_not_converged,
            ),
            RESULTS.nonfinite,
        )
        return loop.t >= self.num_steps, result

    def error(self, problem, theta, loop):
        return loop.outer_loss

    def postprocess(self, problem, theta, loop):
        return theta, {"hypergrad_norm": loop.hypergrad_norm}


def solve(
    outer_fn: Callable,
    inner_fn: Callable,
    theta0: PyTree[Array],
    y0: PyTree[Array],
    *,
    algorithm: AbstractBilevelAlgorithm,
    optimiser: optax.GradientTransformation,
    num_steps: int,
    outer_args: Any = None,
    inner_args: Any = None,
    batched_args: bool = False,
    metrics_fn: Callable | None = None,
    project: Callable | None = None,
    progress: bool | Callable = False,
    throw: bool = True,
) -> BilevelSolution:
    """Solve `min_θ F(θ, y*(θ))`, `y*(θ) = argmin_y G(θ, y)`, with an optax optimiser.

    Each outer step asks `algorithm` for a direction (a hypergradient or its estimate) and
    gives it to `optimiser` as the gradient of `θ`, for exactly `num_steps` steps. The loop is
    one `lax.scan` over the steps of a core solver (init / step / terminate / postprocess), so
    the whole run is one compiled function and the per-step metrics come back as arrays of
    length `num_steps`. It is pure: `jax.vmap` over `theta0` (or over data) works, each
    member with its own `result`.

    Algorithms (objects, with their own settings): `js.bilevel.AID()` (implicit
    hypergradient, warm-started inner and adjoint solves), `js.bilevel.ITD()` (unrolled),
    `js.bilevel.Penalty()` (first order), `js.bilevel.BOREP()` (normalised momentum, periodic
    lower-level updates), `js.bilevel.LVHBA(...)` (constrained lower level, Hessian-free).

    **Arguments:**

    - `outer_fn`: `F(theta, y, outer_args) -> scalar`.
    - `inner_fn`: `G(theta, y, inner_args) -> scalar`.
    - `theta0`, `y0`: starting outer and inner variables.
    - `algorithm`: one of the algorithms above.
    - `optimiser`: any `optax.GradientTransformation` (e.g. `optax.adam(1e-2)`).
    - `num_steps`: the number of outer steps (Python int).
    - `outer_args`, `inner_args`: data. With `batched_args=True` every array leaf has a
      leading axis of length `num_steps` and step `t` sees slice `t` (mini-batches).
    - `metrics_fn`: optional `(theta, y) -> dict of scalars`, recorded every step (e.g. a test
      accuracy).
    - `project`: optional `theta -> theta` applied after every update (e.g. a box).
    - `progress`: `True` for a progress bar on stderr, or a callback `fn(step, outer_loss)`.
    - `throw`: raise, with the result's message, if the run is not `successful` (an inner
      or adjoint solve did not converge at some step, or a non-finite loss or `θ`). With
      `False` nothing raises: read `result` and `metrics` (use under `vmap`).

    **Returns:** a `js.bilevel.BilevelSolution`: `value` (also `theta`), `y`, `metrics`,
    `result`, `stats` (`num_steps`, the last `outer_loss` and `hypergrad_norm`), `state`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, optax
    import jaxsolve as js

    # learn a per-coordinate shrinkage θ so that ridge solutions fit a validation target
    inner = lambda th, y, t: 0.5 * jnp.sum((y - t) ** 2) + 0.5 * jnp.sum(jnp.exp(th) * y**2)
    outer = lambda th, y, tv: 0.5 * jnp.sum((y - tv) ** 2)
    t, tv = jnp.array([1.0, 2.0]), jnp.array([0.5, 1.0])      # optimum: exp(θ) = 1
    sol = js.bilevel.solve(outer, inner, jnp.zeros(2) + 1.0, jnp.zeros(2),
                           algorithm=js.bilevel.AID(js.GradientDescent(0.25)),
                           optimiser=optax.adam(0.1),
                           num_steps=150, outer_args=tv, inner_args=t)
    assert jnp.allclose(sol.value, 0.0, atol=1e-2)
    ```
    """
    if not isinstance(algorithm, AbstractBilevelAlgorithm):
        raise TypeError(
            "`algorithm` must be a bilevel algorithm object: js.bilevel.AID(), ITD(), Penalty(), "
            f"BOREP() or LVHBA(...); got {type(algorithm).__name__}."
        )
    if not isinstance(optimiser, optax.GradientTransformation):
        raise TypeError(
            "`optimiser` must be an optax.GradientTransformation, e.g. optax.adam(1e-2); got "
            f"{type(optimiser).__name__}."
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive Python int; got {num_steps!r}.")
    check_float_tree(theta0, "theta0")
    check_float_tree(y0, "y0")
    if batched_args:
        for name, tree in (("outer_args", outer_args), ("inner_args", inner_args)):
            for leaf in jtu.tree_leaves(tree):
                if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != num_steps:
                    raise ValueError(
                        f"With batched_args=True every leaf of `{name}` needs a leading axis of "
                        f"length num_steps={num_steps}; got shape {jnp.shape(leaf)}."
                    )
        first = lambda tree: jtu.tree_map(lambda x: x[0], tree)
        oa0, ia0 = first(outer_args), first(inner_args)
    else:
        oa0, ia0 = outer_args, inner_args
    check_objective(outer_fn, "outer_fn", theta0, y0, oa0)
    check_objective(inner_fn, "inner_fn", theta0, y0, ia0)
    callback = make_progress(progress, num_steps, "bilevel")
    # Python floats become arrays here, so that new values do not recompile.
    theta0 = jtu.tree_map(jnp.asarray, theta0)
    y0 = jtu.tree_map(jnp.asarray, y0)
    problem = _OuterProblem(
        Problem(outer_fn, inner_fn),
        floats_to_arrays(outer_args),
        floats_to_arrays(inner_args),
        batched_args,
    )
    loop = _OuterLoop(algorithm, optimiser, num_steps, metrics_fn, project)
    return _solve(problem, loop, theta0, y0, throw, callback)


def _run_steps(problem, loop, theta0, y0, callback):
    """The core's `run_loop` for a loop that always runs exactly `loop.num_steps` steps, as a
    `lax.scan` (measurably cheaper per step than a while loop here, and reverse-mode
    differentiable): the same protocol calls, progress reports, result and stats."""
    num_steps = loop.num_steps
    every = max(1, num_steps // 100)

    def body(carry, _):
        theta, state = carry
        theta, state = loop.step(problem, theta, state)
        if callback is not None:
            jax.lax.cond(
                (state.t % every == 0) | (state.t == num_steps),
                lambda: jax.debug.callback(callback, state.t, loop.error(problem, theta, state)),
                lambda: None,
            )
        return (theta, state), None

    state0 = loop.init(problem, theta0, {"y0": y0})
    (theta, state), _ = jax.lax.scan(body, (theta0, state0), None, length=num_steps)
    end_progress(callback, state.t)
    _, result = loop.terminate(problem, theta, state)
    theta, extra = loop.postprocess(problem, theta, state)
    err = loop.error(problem, theta, state)
    result = RESULTS.where(tree_all_finite(theta) & jnp.isfinite(err), result, RESULTS.nonfinite)
    stats = {"num_steps": state.t, problem.error_name: err, **extra}
    return theta, state, result, jax.lax.stop_gradient(stats)


@eqx.filter_jit
def _solve(problem, loop, theta0, y0, throw, callback):
    theta0 = jtu.tree_map(jnp.asarray, theta0)
    theta, state, result, stats = _run_steps(problem, loop, theta0, y0, callback)
    solution = BilevelSolution(
        value=theta,
        result=result,
        stats=stats,
        state=state.state,
        y=loop.algorithm.inner_value(state.state),
        metrics=state.metrics,
    )
    return apply_throw(solution, throw)
