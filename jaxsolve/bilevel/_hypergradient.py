"""`hypergradient`: `∇θ F(θ, y*(θ))` with `y*(θ) = argmin_y G(θ, y)`, by a chosen estimator."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree, Scalar

from .._checks import (
    check_float_tree,
    check_max_steps,
    check_same_structure,
    check_tol,
    floats_to_arrays,
)
from .._iterate import apply_throw
from .._minimise import LBFGS, AbstractMinimiser
from ._estimators import AbstractEstimator, Implicit
from ._problem import HypergradientProblem, Problem
from ._solution import Hypergradient

_ESTIMATOR_MSG = (
    "`estimator` must be a js.bilevel.AbstractEstimator such as js.bilevel.Implicit(...), "
    "js.bilevel.TruncatedNeumann(...), js.bilevel.Unrolled(...) or a subclass of your own; "
)


def compute_hypergradient(
    problem: HypergradientProblem,
    estimator: AbstractEstimator,
    theta: PyTree[Array],
    y0: PyTree[Array],
    adjoint0: PyTree[Array] | None = None,
) -> Hypergradient:
    """`hypergradient` without argument checks or `throw` (used inside the bilevel algorithms):
    the estimator's own `hypergradient` method."""
    if not isinstance(estimator, AbstractEstimator):
        raise TypeError(_ESTIMATOR_MSG + f"got {type(estimator).__name__}.")
    out = estimator.hypergradient(problem, theta, y0, adjoint0)
    if not isinstance(out, Hypergradient):
        raise TypeError(
            f"{type(estimator).__name__}.hypergradient must return a js.bilevel.Hypergradient "
            f"(see Hypergradient.from_inner); got {type(out).__name__}."
        )
    return out


def check_objective(fn, name, theta, y, args):
    if not callable(fn):
        raise TypeError(
            f"`{name}` must be callable as {name}(theta, y, args); got {type(fn).__name__}."
        )
    out = jax.eval_shape(fn, theta, y, args)
    if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        raise ValueError(
            f"`{name}(theta, y, args)` must return a floating-point scalar; got "
            f"{getattr(out, 'shape', type(out))} {getattr(out, 'dtype', '')}. Reduce it, e.g. "
            "with jnp.sum or jnp.mean."
        )


def hypergradient(
    outer_fn: Callable[[Any, PyTree[Array], Any], Scalar],
    inner_fn: Callable[[Any, PyTree[Array], Any], Scalar],
    theta: PyTree[Array],
    y0: PyTree[Array],
    outer_args: Any = None,
    inner_args: Any = None,
    *,
    estimator: AbstractEstimator = Implicit(),
    inner_solver: AbstractMinimiser | None = None,
    inner_tol: float | None = None,
    inner_max_steps: int = 1000,
    adjoint0: PyTree[Array] | None = None,
    throw: bool = True,
) -> Hypergradient:
    """The hypergradient `∇θ F(θ, y*(θ))` of a bilevel problem, `y*(θ) = argmin_y G(θ, y)`.

    The inner problem is solved by the core's `js.minimise` from `y0`; the derivative of `y*`
    comes from the chosen `estimator`: `Implicit(linear_solver)` (implicit function theorem,
    the default, CG on Hessian–vector products), `TruncatedNeumann(steps, alpha)` or
    `Unrolled(truncate)`. For stochastic (mini-batch) use pass this step's batches as
    `outer_args` / `inner_args`; shapes stay fixed, so nothing recompiles.

    Warm starts: pass the previous `Hypergradient.y` as `y0` (inner solution), and the previous
    `Hypergradient.adjoint` as `adjoint0` (adjoint vector; with an implicit estimator the
    adjoint system `(∇²_yy G) v = ∇_y F` is then solved by the Krylov solver starting from it).
    To start an adjoint warm-start chain pass zeros shaped like `y0`.

    **Arguments:**

    - `outer_fn`: `F(theta, y, outer_args) -> scalar`.
    - `inner_fn`: `G(theta, y, inner_args) -> scalar`, smooth and (locally) strongly convex in
      `y` for the implicit estimators.
    - `theta`: the outer variables (pytree of floating arrays).
    - `y0`: the inner starting point.
    - `outer_args`, `inner_args`: data (e.g. the validation and training batches).
    - `estimator`: `js.bilevel.Implicit(...)`, `TruncatedNeumann(...)`, `Unrolled(...)`, or
      a subclass of `js.bilevel.AbstractEstimator` of your own.
    - `inner_solver`: a `js.minimise` solver (default `js.LBFGS()`; for `Unrolled`
      `js.GradientDescent(lr)` is the usual choice).
    - `inner_tol`, `inner_max_steps`: the inner solve's tolerance on `‖∇_y G‖` and step bound
      (`inner_tol=None`: the inner solver's, else `js.minimise`'s default for the dtype,
      1e-6 in float64 and 1e-4 in float32, in float32 at least `1e-6 ‖∇_y G(θ, y0)‖₂`:
      float32 cannot reach an absolute 1e-4 on a loss summed over many samples).
    - `adjoint0`: a warm start of the adjoint vector (implicit estimators), or `None`.
    - `throw`: raise, with the result's message, if the hypergradient is not `successful`
      (inner or adjoint solve not converged, non-finite values). With `False` nothing raises,
      under `jit`, `vmap` and `grad` alike (derivative solves included): read `result`, one
      per member under `vmap`.

    **Returns:** a `js.bilevel.Hypergradient`, a `js.Solution` whose `value` (also `grad`) is
    the hypergradient; `loss`, `y`, `adjoint`, `inner`, `result`, `stats`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    # Ridge regression with one regularisation weight per feature, validation loss outside.
    kx, kv = jax.random.split(jax.random.PRNGKey(0))
    X, Xv = jax.random.normal(kx, (40, 5)), jax.random.normal(kv, (20, 5))
    w_true = jnp.arange(5.0); t, tv = X @ w_true, Xv @ w_true
    inner = lambda th, w, _: 0.5 * jnp.sum((X @ w - t) ** 2) + 0.5 * jnp.sum(jnp.exp(th) * w**2)
    outer = lambda th, w, _: 0.5 * jnp.sum((Xv @ w - tv) ** 2)
    theta = jnp.zeros(5)
    hg = js.bilevel.hypergradient(outer, inner, theta, jnp.zeros(5))
    # closed form: w* = (XᵀX + D)⁻¹ Xᵀt, dF/dθ = -e^θ w* ⊙ (XᵀX + D)⁻¹ ∇_w F
    H = X.T @ X + jnp.diag(jnp.exp(theta)); w = jnp.linalg.solve(H, X.T @ t)
    v = jnp.linalg.solve(H, Xv.T @ (Xv @ w - tv))
    assert jnp.allclose(hg.grad, -jnp.exp(theta) * w * v, rtol=1e-4, atol=1e-6)
    ```
    """
    inner_solver = LBFGS() if inner_solver is None else inner_solver
    _check_common(outer_fn, inner_fn, theta, y0, outer_args, inner_args, estimator, inner_solver)
    check_tol(inner_tol)
    check_max_steps(inner_max_steps)
    estimator.check_adjoint0(adjoint0)
    if adjoint0 is not None:
        check_same_structure(adjoint0, y0, "`adjoint0`")
    # Python floats become arrays here (in the data, in the inner solver's settings such as its
    # learning rate, in the estimator's such as its step), so that new values do not recompile.
    theta = jtu.tree_map(jnp.asarray, theta)
    y0 = jtu.tree_map(jnp.asarray, y0)
    estimator = floats_to_arrays(estimator)
    problem = Problem(outer_fn, inner_fn).with_data(
        floats_to_arrays(outer_args),
        floats_to_arrays(inner_args),
        floats_to_arrays(inner_solver),
        None if inner_tol is None else jnp.asarray(inner_tol),
        inner_max_steps,
    )
    return _hypergradient_jit(problem, estimator, theta, y0, adjoint0, throw)


def _check_common(outer_fn, inner_fn, theta, y0, outer_args, inner_args, estimator, inner_solver):
    check_float_tree(theta, "theta")
    check_float_tree(y0, "y0")
    if not isinstance(estimator, AbstractEstimator):
        raise TypeError(_ESTIMATOR_MSG + f"got {type(estimator).__name__}.")
    if not isinstance(inner_solver, AbstractMinimiser):
        raise TypeError(
            "`inner_solver` must be a js.minimise solver: js.LBFGS(), js.GradientDescent(lr) or "
            f"js.OptaxMinimiser(optax...); got {type(inner_solver).__name__}."
        )
    check_objective(outer_fn, "outer_fn", theta, y0, outer_args)
    check_objective(inner_fn, "inner_fn", theta, y0, inner_args)


@eqx.filter_jit
def _hypergradient_jit(problem, estimator, theta, y0, adjoint0, throw):
    return apply_throw(compute_hypergradient(problem, estimator, theta, y0, adjoint0), throw)
