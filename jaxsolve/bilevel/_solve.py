"""`js.bilevel.solve`: the outer loop (a `lax.scan`) with an optax optimiser and an algorithm."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jaxtyping import Array, PyTree

from .._checks import check_float_tree
from .._iterate import make_progress, tree_norm
from .._solution import RESULTS
from ._algorithm import AbstractBilevelAlgorithm, Problem
from ._hypergradient import check_objective


class BilevelSolution(eqx.Module):
    """What `js.bilevel.solve` returns.

    **Attributes:**

    - `theta`: the outer variables after the last step.
    - `y`: the algorithm's inner variable after the last step.
    - `metrics`: a dict of arrays with one entry per outer step: `outer_loss` (`F` at the
      step's iterate), `inner_residual` (‖∇_y G‖, or the method's own lower-level measure),
      `hypergrad_norm` (norm of the direction given to the optimiser), `inner_converged`
      (bool), method-specific entries, and whatever `metrics_fn` returned.
    - `result`: `js.RESULTS.successful`, or `js.RESULTS.inner_not_converged` if any step's
      inner problem did not converge (see `metrics["inner_converged"]`), or
      `js.RESULTS.nonfinite`.
    - `state`: the algorithm's final state (to continue a run, or for inspection).

    **Example:**

    ```python
    import jax.numpy as jnp, optax
    import jaxsolve as js

    inner = lambda th, y, _: 0.5 * jnp.sum((y - th) ** 2)
    outer = lambda th, y, _: jnp.sum((y - 2.0) ** 2)
    sol = js.bilevel.solve(outer, inner, jnp.zeros(1), jnp.zeros(1),
                           algorithm=js.bilevel.AID(js.GradientDescent(0.5)),
                           optimiser=optax.sgd(0.1), num_steps=30)
    assert sol.metrics["outer_loss"].shape == (30,)
    assert sol.metrics["outer_loss"][-1] < sol.metrics["outer_loss"][0]
    ```
    """

    theta: PyTree[Array]
    y: PyTree[Array]
    metrics: dict[str, Array]
    result: RESULTS
    state: Any


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
) -> BilevelSolution:
    """Solve `min_θ F(θ, y*(θ))`, `y*(θ) = argmin_y G(θ, y)`, with an optax optimiser.

    Each outer step asks `algorithm` for a direction (a hypergradient or its estimate) and
    gives it to `optimiser` as the gradient of `θ`. The loop is a `lax.scan`, so the whole run
    is one compiled function and the per-step metrics come back as arrays. It is pure:
    `jax.vmap` over `theta0` (or over data) works.

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

    **Returns:** a `js.bilevel.BilevelSolution`.

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
    assert jnp.allclose(sol.theta, 0.0, atol=1e-2)
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
    return _solve(
        Problem(outer_fn, inner_fn),
        algorithm,
        optimiser,
        theta0,
        y0,
        outer_args,
        inner_args,
        num_steps,
        batched_args,
        metrics_fn,
        project,
        callback,
    )


@eqx.filter_jit
def _solve(
    problem,
    algorithm,
    optimiser,
    theta0,
    y0,
    outer_args,
    inner_args,
    num_steps,
    batched,
    metrics_fn,
    project,
    callback,
):
    theta0 = jtu.tree_map(jnp.asarray, theta0)
    y0 = jtu.tree_map(jnp.asarray, y0)
    pick = (
        (lambda tree, t: jtu.tree_map(lambda x: x[t], tree)) if batched else (lambda tree, t: tree)
    )
    state0 = algorithm.init(problem, theta0, y0, pick(outer_args, 0), pick(inner_args, 0))
    opt_state0 = optimiser.init(theta0)
    every = max(1, num_steps // 100)

    def body(carry, t):
        theta, opt_state, state = carry
        oa, ia = pick(outer_args, t), pick(inner_args, t)
        direction, state, metrics = algorithm.step(problem, theta, state, oa, ia, t)
        metrics = dict(metrics, hypergrad_norm=tree_norm(direction))
        if metrics_fn is not None:
            metrics.update(metrics_fn(theta, algorithm.inner_value(state)))
        updates, opt_state = optimiser.update(direction, opt_state, theta)
        theta = optax.apply_updates(theta, updates)
        theta, state = algorithm.after_update(problem, theta, state, ia)
        if project is not None:
            theta = project(theta)
        if callback is not None:
            jax.lax.cond(
                ((t + 1) % every == 0) | (t + 1 == num_steps),
                lambda: jax.debug.callback(callback, t + 1, metrics["outer_loss"]),
                lambda: None,
            )
        return (theta, opt_state, state), metrics

    (theta, _, state), metrics = jax.lax.scan(
        body, (theta0, opt_state0, state0), jnp.arange(num_steps)
    )
    if callback is not None:
        jax.debug.callback(lambda *_: __import__("sys").stderr.write("\n"), num_steps)
    finite = jnp.all(jnp.isfinite(metrics["outer_loss"])) & jnp.isfinite(tree_norm(theta))
    result = RESULTS.where(
        ~finite,
        RESULTS.nonfinite,
        RESULTS.where(
            jnp.all(metrics["inner_converged"]), RESULTS.successful, RESULTS.inner_not_converged
        ),
    )
    return BilevelSolution(
        theta=theta, y=algorithm.inner_value(state), metrics=metrics, result=result, state=state
    )
