"""`least_squares`: min ½‖r(y, args)‖², matrix-free Gauss-Newton and Levenberg-Marquardt, with
implicit derivatives through the optimality condition Jᵀr = 0."""

from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree, Scalar

from ._adjoint import AbstractAdjoint, ImplicitAdjoint
from ._iterate import AbstractIterativeSolver, converged_by
from ._linesearch import backtracking
from ._problem import HESSIAN_TAGS, AbstractProblem, default_tol, krylov_adjoint
from ._solution import RESULTS, Solution
from ._solve import run_entry_point


class LeastSquaresProblem(AbstractProblem):
    """`min_y ½‖fn(y, args)‖²` for a residual `fn` (any pytree of arrays); optimality
    `∇_y ½‖r‖² = Jᵀr = 0`, whose Jacobian (the Hessian `JᵀJ + Σ rᵢ∇²rᵢ`) is tagged symmetric
    positive semidefinite. Error measure: `‖Jᵀr‖₂`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    problem = js.LeastSquaresProblem(lambda y, t: y - t, jnp.ones(2))
    assert jnp.allclose(problem.optimality(jnp.zeros(2)), -1.0)
    ```
    """

    fn: Callable[[PyTree[Array], Any], PyTree[Array]]
    args: Any
    tags: ClassVar[frozenset] = HESSIAN_TAGS

    def residual(self, y):
        return self.fn(y, self.args)

    def optimality(self, y):
        r, vjp = jax.vjp(self.residual, y)
        return vjp(r)[0]

    def adjoint_solver(self, y):
        return krylov_adjoint(y, symmetric=True)

    @staticmethod
    def default_tol(dtype) -> float:
        return default_tol(dtype, 1e-8, 1e-4)


def _flat(r):
    return ravel_pytree(r)[0]


def _half_sq(r):
    f = _flat(r)
    return 0.5 * jnp.dot(f, f)


class _LSState(eqx.Module):
    value: Scalar  # ½‖r‖²
    grad: Array  # Jᵀr, flat
    damping: Scalar
    nu: Scalar
    result: RESULTS
    num_rejected: Array


class AbstractLeastSquaresSolver(AbstractIterativeSolver[LeastSquaresProblem, PyTree[Array], Any]):
    """Base class of `least_squares`'s solvers (subclass it to run your own through
    `js.least_squares`). The family's rule: done once `‖Jᵀr‖₂ <= tol`; a failed step (its
    linear solve or its line search) stops the solve with that result."""

    tol: eqx.AbstractVar[float | Array | None]

    def error(self, problem, y, state) -> Scalar:
        return jnp.linalg.norm(state.grad)

    def terminate(self, problem, y, state):
        done, result = converged_by(self.error(problem, y, state), self.tol)
        failed = state.result != RESULTS.successful
        return done | failed, RESULTS.where(failed, state.result, result)

    def postprocess(self, problem, y, state):
        return y, {"num_rejected": state.num_rejected, "value": state.value}


def _evaluate(problem, y):
    r, vjp = jax.vjp(problem.residual, y)
    return _half_sq(r), _flat(vjp(r)[0])


def _normal_solve(problem, y, grad, damping, max_steps):
    """Solve `(JᵀJ + λI) δ = −Jᵀr` matrix-free: CG on `v ↦ Jᵀ(J v) + λv` (one jvp and one vjp
    per CG iteration, at the linearisation point `y`)."""
    flat, unravel = ravel_pytree(y)
    fn = lambda f: _flat(problem.residual(unravel(f)))
    _, jvp_fn = jax.linearize(fn, flat)
    vjp_fn = jax.linear_transpose(jvp_fn, flat)

    def mv(v):
        return vjp_fn(jvp_fn(v))[0] + damping * v

    from .linear import CG

    op = lx.FunctionLinearOperator(
        mv, jax.eval_shape(lambda: flat), tags=lx.positive_semidefinite_tag
    )
    tol = 1e-10 if jnp.finfo(flat.dtype).bits > 32 else 1e-5
    sol = lx.linear_solve(op, -grad, CG(tol=tol, max_steps=max_steps), throw=False)
    # A curvature failure or stagnation still leaves a descent direction in the iterate.
    delta = jnp.where(jnp.all(jnp.isfinite(sol.value)), sol.value, -grad)
    return delta, unravel, jvp_fn


class GaussNewton(AbstractLeastSquaresSolver):
    """Gauss-Newton with a backtracking (Armijo) line search on `½‖r‖²`.

    Each step solves the normal equations `JᵀJ δ = −Jᵀr` matrix-free by CG (Jacobian-vector
    and vector-Jacobian products, never the Jacobian), then halves the step until the
    objective decreases sufficiently. Error measure: `‖Jᵀr‖₂`.

    **Arguments:**

    - `tol`: tolerance on `‖Jᵀr‖₂` (`None`: `js.least_squares`'s, else 1e-8 in float64,
      1e-4 in float32).
    - `max_backtracks`: the most halvings of a step.
    - `cg_max_steps`: the most CG iterations per step.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    t = jnp.linspace(0, 1, 8)
    res = lambda y, d: y[0] * jnp.exp(y[1] * t) - d
    sol = js.least_squares(res, jnp.array([1.0, 0.0]), 2.0 * jnp.exp(-t), solver=js.GaussNewton())
    assert jnp.allclose(sol.value, jnp.array([2.0, -1.0]), atol=1e-6)
    ```
    """

    tol: float | Array | None = None
    max_backtracks: int = eqx.field(static=True, default=30)
    cg_max_steps: int = eqx.field(static=True, default=100)

    def init(self, problem, y, options):
        value, grad = _evaluate(problem, y)
        zero = jnp.zeros((), value.dtype)
        return _LSState(value, grad, zero, zero, RESULTS.successful, jnp.array(0, jnp.int32))  # pyright: ignore[reportArgumentType]

    def step(self, problem, y, state):
        delta, unravel, _ = _normal_solve(problem, y, state.grad, 0.0, self.cg_max_steps)
        slope = jnp.dot(state.grad, delta)
        flat = ravel_pytree(y)[0]

        def trial(t):
            y_t = unravel(flat + t * delta)
            return (y_t, *_evaluate(problem, y_t))

        one = jnp.asarray(1.0, state.value.dtype)
        accept = lambda t, out: out[1] <= state.value + 1e-4 * t * slope
        _, (y_new, value, grad), ok, k = backtracking(trial, accept, one, self.max_backtracks)
        result = RESULTS.where(ok, RESULTS.successful, RESULTS.line_search_failed)
        y_new = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), y_new, y)
        value = jnp.where(ok, value, state.value)
        grad = jnp.where(ok, grad, state.grad)
        return y_new, _LSState(value, grad, state.damping, state.nu, result, state.num_rejected + k)


class LevenbergMarquardt(AbstractLeastSquaresSolver):
    """Levenberg-Marquardt with Nielsen's damping update (Madsen, Nielsen & Tingleff 2004).

    Each step solves `(JᵀJ + λI) δ = −Jᵀr` matrix-free by CG and accepts it if the gain ratio
    (actual over predicted decrease of `½‖r‖²`) is positive; `λ` shrinks after good steps and
    grows (by 2, 4, 8, ...) after rejected ones. Error measure: `‖Jᵀr‖₂`.

    **Arguments:**

    - `tol`: tolerance on `‖Jᵀr‖₂` (`None`: `js.least_squares`'s, else 1e-8 in float64,
      1e-4 in float32).
    - `damping`: the initial `λ` (default 1e-3; a pytree leaf).
    - `cg_max_steps`: the most CG iterations per step.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    rosenbrock = lambda y, _: jnp.array([10 * (y[1] - y[0] ** 2), 1 - y[0]])
    sol = js.least_squares(rosenbrock, jnp.array([-1.2, 1.0]), solver=js.LevenbergMarquardt())
    assert jnp.allclose(sol.value, 1.0, atol=1e-4)
    ```
    """

    tol: float | Array | None = None
    damping: float | Array = 1e-3
    cg_max_steps: int = eqx.field(static=True, default=100)

    def init(self, problem, y, options):
        value, grad = _evaluate(problem, y)
        damping = jnp.asarray(self.damping, value.dtype)
        two = jnp.asarray(2.0, value.dtype)
        return _LSState(value, grad, damping, two, RESULTS.successful, jnp.array(0, jnp.int32))  # pyright: ignore[reportArgumentType]

    def step(self, problem, y, state):
        lam = state.damping
        delta, unravel, jvp_fn = _normal_solve(problem, y, state.grad, lam, self.cg_max_steps)
        flat = ravel_pytree(y)[0]
        y_t = unravel(flat + delta)
        value_t, grad_t = _evaluate(problem, y_t)
        jd = jvp_fn(delta)
        predicted = -jnp.dot(state.grad, delta) - 0.5 * jnp.dot(jd, jd)
        gain = (state.value - value_t) / jnp.where(predicted > 0, predicted, 1.0)
        ok = (predicted > 0) & (gain > 0) & jnp.isfinite(value_t)
        shrink = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * gain - 1.0) ** 3)
        damping = jnp.where(ok, lam * shrink, lam * state.nu)
        nu = jnp.where(ok, 2.0, 2.0 * state.nu)
        # λ beyond any scale of the problem: the step cannot decrease the objective.
        stuck = damping > 1e16 * (1.0 + state.value)
        y_new = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), y_t, y)
        result = RESULTS.where(stuck, RESULTS.line_search_failed, RESULTS.successful)
        return y_new, _LSState(
            jnp.where(ok, value_t, state.value),
            jnp.where(ok, grad_t, state.grad),
            damping,
            nu,
            result,
            state.num_rejected + (~ok).astype(jnp.int32),
        )


def least_squares(
    residual_fn: Callable[[PyTree[Array], Any], PyTree[Array]],
    y0: PyTree[Array],
    args: Any = None,
    *,
    solver: AbstractLeastSquaresSolver | None = None,
    tol: float | None = None,
    max_steps: int = 256,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    throw: bool = True,
    progress: bool | Callable = False,
) -> Solution:
    """Minimise `½‖residual_fn(y, args)‖²` over `y`, differentiably with respect to `args`.

    Matrix-free: the solvers use Jacobian-vector and vector-Jacobian products only. The
    solution is differentiated by the implicit function theorem on `Jᵀr = 0` (one linear
    solve with the Hessian of `½‖r‖²`: dense up to 256 unknowns, matrix-free CG above), or
    through the iterations (`js.UnrollAdjoint()`).

    **Arguments:**

    - `residual_fn`: `(y, args) -> r`, any pytree of floating-point arrays.
    - `y0`: the starting point, a pytree of floating-point arrays.
    - `args`: what `residual_fn` depends on (data, hyperparameters).
    - `solver`: `js.LevenbergMarquardt()` (default) or `js.GaussNewton()`.
    - `tol`: absolute tolerance on `‖Jᵀr‖₂`; `None` takes the solver's, else 1e-8 in float64,
      1e-4 in float32.
    - `max_steps`, `adjoint`, `throw`, `progress`: as in `js.minimise`.

    **Returns:** a `js.Solution`; `stats` has `num_steps`, `error` (`‖Jᵀr‖₂`), `value`
    (`½‖r‖²`) and `num_rejected` (rejected steps or backtracks).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    X = jnp.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    fit = lambda t: js.least_squares(lambda w, t: X @ w - t, jnp.zeros(2), t).value
    t = jnp.array([1.0, 2.0, 2.5])
    assert jnp.allclose(fit(t), jnp.linalg.lstsq(X, t)[0], atol=1e-6)
    assert jnp.allclose(jax.jacobian(fit)(t), jnp.linalg.pinv(X), atol=1e-6)
    ```
    """
    solver = LevenbergMarquardt() if solver is None else solver
    if not isinstance(solver, AbstractLeastSquaresSolver):
        raise TypeError(
            "least_squares's `solver` must be a js.AbstractLeastSquaresSolver such as "
            f"js.LevenbergMarquardt() or js.GaussNewton(); got {type(solver).__name__}."
        )
    return run_entry_point(
        LeastSquaresProblem,
        solver,
        residual_fn,
        y0,
        args,
        tol=tol,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=throw,
        progress=progress,
        name="least_squares",
        check=_check_residual,
    )


def _check_residual(fn, y0, args):
    out = jax.eval_shape(fn, y0, args)
    leaves = jax.tree_util.tree_leaves(out)
    if not leaves or not all(
        hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact) for x in leaves
    ):
        raise ValueError(
            "least_squares's `residual_fn(y, args)` must return a non-empty pytree of "
            f"floating-point arrays (the residuals); got {out}."
        )
