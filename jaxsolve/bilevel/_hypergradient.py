"""`hypergradient`: `∇θ F(θ, y*(θ))` with `y*(θ) = argmin_y G(θ, y)`, by a chosen estimator."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, PyTree, Scalar

from .._adjoint import ImplicitAdjoint, UnrollAdjoint
from .._checks import check_float_tree, check_max_steps, check_same_structure, check_tol
from .._iterate import tree_all_finite
from .._minimise import LBFGS, AbstractMinimiser, minimise
from .._solution import RESULTS, Solution
from ._estimators import AbstractEstimator, AbstractImplicitEstimator, Implicit, Unrolled

_HESSIAN_TAGS = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})


class Hypergradient(eqx.Module):
    """What `js.bilevel.hypergradient` returns.

    **Attributes:**

    - `grad`: the hypergradient, same structure as `theta`.
    - `value`: the outer loss `F(θ, y)` at the inner solution.
    - `y`: the inner solution (pass it back as `y0` to warm-start the next call).
    - `adjoint`: the adjoint vector `v = (∇²_yy G)⁻¹ ∇_y F` when the adjoint form was used
      (`adjoint0` given), else `None`; pass it back as `adjoint0`.
    - `result`: `js.RESULTS.successful`, or `js.RESULTS.inner_not_converged` when the inner
      solve (or the adjoint linear solve) did not converge: `grad` is then approximate.
    - `inner`: the inner `js.Solution` (its `result` and `stats` say how the inner solve went).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    inner = lambda lam, y, _: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * lam * jnp.sum(y**2)
    outer = lambda lam, y, _: jnp.sum(y)
    hg = js.bilevel.hypergradient(outer, inner, 1.0, jnp.zeros(2), inner_max_steps=1,
                                  inner_solver=js.GradientDescent(0.1), throw=False)
    assert hg.result == js.RESULTS.inner_not_converged      # flagged, not raised
    assert hg.inner.result == js.RESULTS.max_steps_reached
    ```
    """

    grad: PyTree[Array]
    value: Scalar
    y: PyTree[Array]
    adjoint: PyTree[Array] | None
    result: RESULTS
    inner: Solution


def _inner_solve(inner_fn, theta, y0, inner_args, solver, tol, max_steps, adjoint):
    """The inner problem through the core's `minimise`: `min_y inner_fn(theta, y, inner_args)`."""
    return minimise(
        lambda y, a: inner_fn(a[0], y, a[1]),
        y0,
        (theta, inner_args),
        solver=solver,
        tol=tol,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=False,
    )


def _sub(a, b):
    return jtu.tree_map(jnp.subtract, a, b)


def adjoint_form(outer_fn, inner_fn, theta, y, outer_args, inner_args, linear_solver, adjoint0):
    """The implicit hypergradient written in adjoint form, with a warm-started adjoint.

    Solve `(∇²_yy G) v = ∇_y F` (starting Krylov solvers from `adjoint0`), then return
    `∇θF − (∂²G/∂θ∂y)ᵀ v` by one vector–Jacobian product. The same identity that
    `js.ImplicitAdjoint` transposes, written out so that `v` can be kept across outer steps.
    Returns `(value, grad, v, linear_result)`; nothing here is differentiated further.
    """
    y = jax.lax.stop_gradient(y)
    value, (g_theta, g_y) = jax.value_and_grad(outer_fn, argnums=(0, 1))(theta, y, outer_args)
    grad_y = lambda th, yy: jax.grad(inner_fn, argnums=1)(th, yy, inner_args)
    _, hvp = jax.linearize(lambda yy: grad_y(theta, yy), y)
    operator = lx.FunctionLinearOperator(hvp, jax.eval_shape(lambda: y), tags=_HESSIAN_TAGS)
    options = {} if adjoint0 is None else {"y0": adjoint0}
    lin = lx.linear_solve(operator, g_y, linear_solver, options=options, throw=False)
    v = lin.value
    _, vjp = jax.vjp(lambda th: grad_y(th, y), theta)
    (cross,) = vjp(v)
    return value, _sub(g_theta, cross), v, lin.result


def compute_hypergradient(
    outer_fn,
    inner_fn,
    theta,
    y0,
    outer_args,
    inner_args,
    estimator: AbstractEstimator,
    inner_solver: AbstractMinimiser,
    inner_tol,
    inner_max_steps: int,
    adjoint0=None,
) -> Hypergradient:
    """`hypergradient` without argument checks or `throw` (used inside the bilevel algorithms)."""
    if isinstance(estimator, Unrolled):
        unroll = UnrollAdjoint(kind=estimator.kind)
        if estimator.truncate is not None and estimator.truncate < inner_max_steps:
            head = _inner_solve(
                inner_fn,
                jax.lax.stop_gradient(theta),
                y0,
                inner_args,
                inner_solver,
                inner_tol,
                inner_max_steps - estimator.truncate,
                ImplicitAdjoint(),
            )
            y_start, tail_steps = jax.lax.stop_gradient(head.value), estimator.truncate
        else:
            y_start, tail_steps = y0, inner_max_steps

        def loss(th):
            sol = _inner_solve(
                inner_fn, th, y_start, inner_args, inner_solver, inner_tol, tail_steps, unroll
            )
            return outer_fn(th, sol.value, outer_args), sol

        (value, sol), grad = jax.value_and_grad(loss, has_aux=True)(theta)
        # Unrolling differentiates whatever the loop computed; only a non-finite inner solve
        # makes its gradient meaningless.
        ok = (sol.result == RESULTS.successful) | (sol.result == RESULTS.max_steps_reached)
        v, lin_ok = None, True
    elif isinstance(estimator, AbstractImplicitEstimator):
        linear_solver = estimator.get_linear_solver()
        if adjoint0 is None:
            # The core's implicit adjoint: reverse mode through `minimise`'s custom_jvp rule.
            adjoint = ImplicitAdjoint(linear_solver=linear_solver)

            def loss(th):
                sol = _inner_solve(
                    inner_fn, th, y0, inner_args, inner_solver, inner_tol, inner_max_steps, adjoint
                )
                return outer_fn(th, sol.value, outer_args), sol

            (value, sol), grad = jax.value_and_grad(loss, has_aux=True)(theta)
            v, lin_ok = None, True
        else:
            sol = _inner_solve(
                inner_fn,
                jax.lax.stop_gradient(theta),
                y0,
                inner_args,
                inner_solver,
                inner_tol,
                inner_max_steps,
                ImplicitAdjoint(),
            )
            value, grad, v, lin_result = adjoint_form(
                outer_fn,
                inner_fn,
                theta,
                sol.value,
                outer_args,
                inner_args,
                linear_solver,
                adjoint0,
            )
            lin_ok = RESULTS.promote(lin_result) == RESULTS.successful
        ok = sol.result == RESULTS.successful
    else:
        raise TypeError(
            "`estimator` must be js.bilevel.Implicit(...), js.bilevel.TruncatedNeumann(...) or "
            f"js.bilevel.Unrolled(...); got {type(estimator).__name__}."
        )
    finite = tree_all_finite(grad) & jnp.isfinite(value)
    result = RESULTS.where(
        ~finite,
        RESULTS.nonfinite,
        RESULTS.where(ok & lin_ok, RESULTS.successful, RESULTS.inner_not_converged),
    )
    return Hypergradient(
        grad=grad,
        value=value,
        y=jax.lax.stop_gradient(sol.value),
        adjoint=v,
        result=result,
        inner=sol,
    )


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
    inner_tol: float = 1e-8,
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
    - `estimator`: `js.bilevel.Implicit(...)`, `TruncatedNeumann(...)` or `Unrolled(...)`.
    - `inner_solver`: a `js.minimise` solver (default `js.LBFGS()`; for `Unrolled`
      `js.GradientDescent(lr)` is the usual choice).
    - `inner_tol`, `inner_max_steps`: the inner solve's tolerance on `‖∇_y G‖` and step bound.
    - `adjoint0`: a warm start of the adjoint vector (implicit estimators), or `None`.
    - `throw`: raise if the inner solve did not converge; with `False` read `result`.

    **Returns:** a `js.bilevel.Hypergradient` (`grad`, `value`, `y`, `adjoint`, `result`,
    `inner`).

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
    if adjoint0 is not None:
        if isinstance(estimator, Unrolled):
            raise ValueError(
                "`adjoint0` warm-starts an implicit estimator; Unrolled has no adjoint."
            )
        check_same_structure(adjoint0, y0, "`adjoint0`")
    # Python floats become arrays here, so that new values do not recompile.
    theta = jtu.tree_map(jnp.asarray, theta)
    y0 = jtu.tree_map(jnp.asarray, y0)
    return _hypergradient_jit(
        outer_fn,
        inner_fn,
        theta,
        y0,
        outer_args,
        inner_args,
        estimator,
        inner_solver,
        inner_tol,
        inner_max_steps,
        adjoint0,
        throw,
    )


def _check_common(outer_fn, inner_fn, theta, y0, outer_args, inner_args, estimator, inner_solver):
    check_float_tree(theta, "theta")
    check_float_tree(y0, "y0")
    if not isinstance(estimator, AbstractEstimator):
        raise TypeError(
            "`estimator` must be js.bilevel.Implicit(...), js.bilevel.TruncatedNeumann(...) or "
            f"js.bilevel.Unrolled(...); got {type(estimator).__name__}."
        )
    if not isinstance(inner_solver, AbstractMinimiser):
        raise TypeError(
            "`inner_solver` must be a js.minimise solver: js.LBFGS(), js.GradientDescent(lr) or "
            f"js.OptaxMinimiser(optax...); got {type(inner_solver).__name__}."
        )
    check_objective(outer_fn, "outer_fn", theta, y0, outer_args)
    check_objective(inner_fn, "inner_fn", theta, y0, inner_args)


@eqx.filter_jit
def _hypergradient_jit(
    outer_fn,
    inner_fn,
    theta,
    y0,
    outer_args,
    inner_args,
    estimator,
    inner_solver,
    tol,
    steps,
    v0,
    throw,
):
    theta = jtu.tree_map(jnp.asarray, theta)
    hg = compute_hypergradient(
        outer_fn,
        inner_fn,
        theta,
        y0,
        outer_args,
        inner_args,
        estimator,
        inner_solver,
        tol,
        steps,
        v0,
    )
    if throw:
        grad = hg.result.error_if(hg.grad, hg.result != RESULTS.successful)
        hg = eqx.tree_at(lambda h: h.grad, hg, grad)
    return hg
