"""`root_find` and `fixed_point`, with Newton, plain fixed-point iteration and Anderson
acceleration."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree, Scalar

from ._adjoint import AbstractAdjoint, ImplicitAdjoint
from ._anderson import AndersonMixer
from ._checks import check_same_structure
from ._iterate import AbstractIterativeSolver, converged_by, tree_norm
from ._linesearch import backtracking
from ._problem import FixedPointProblem, RootProblem
from ._solution import RESULTS, Solution
from ._solve import run_entry_point

# ---------------------------------------------------------------------------------------------
# Root finding


class AbstractRootFinder(AbstractIterativeSolver[RootProblem, PyTree[Array], Any]):
    """Base class of `root_find`'s solvers: subclass it to run your own root finder through
    `js.root_find`, with implicit derivatives.

    Implement `init(problem, y, options)` and `step(problem, y, state)` over a
    `js.RootProblem` (`problem.fn(y, problem.args)` is `F(y)`). The family's rule: done once
    `‖F(y)‖₂ <= tol`; `error` recomputes `‖F(y)‖₂` unless you override it to read it from your
    state. Declare a `tol` field (`None`: `js.root_find`'s `tol` or the family default).

    **Example:** a damped Newton method of one's own, differentiated implicitly.

    ```python
    import equinox as eqx, jax, jax.numpy as jnp
    import jaxsolve as js

    class DampedNewton(js.AbstractRootFinder):
        damping: float = 0.8
        tol: float | None = None

        def init(self, problem, y, options):
            return problem.fn(y, problem.args)          # state: F(y)

        def step(self, problem, y, f):
            jac = jax.jacfwd(problem.fn)(y, problem.args)
            y = y - self.damping * jnp.linalg.solve(jac, f)
            return y, problem.fn(y, problem.args)

        def error(self, problem, y, f):
            return jnp.linalg.norm(f)

    cube_root = lambda a: js.root_find(lambda y, a: y**3 - a, jnp.ones(2), a,
                                       solver=DampedNewton(), tol=1e-10).value
    a = jnp.array([8.0, 27.0])
    assert jnp.allclose(cube_root(a), jnp.array([2.0, 3.0]))
    J = jax.jacobian(cube_root)(a)                       # d a^(1/3)/da = a^(-2/3)/3
    assert jnp.allclose(J, jnp.diag(a ** (-2 / 3) / 3), atol=1e-6)
    ```
    """

    tol: eqx.AbstractVar[float | Array | None]

    def terminate(self, problem, y, state):
        return converged_by(self.error(problem, y, state), self.tol)


class _NewtonState(eqx.Module):
    f: PyTree[Array]
    num_backtracks: Array
    result: RESULTS


class Newton(AbstractRootFinder):
    """Newton's method for `F(y) = 0` with a backtracking line search on `‖F‖₂`.

    Each step solves `J(y) δ = −F(y)` with a lineax solver on the Jacobian (matrix-free
    `lx.JacobianLinearOperator`), then halves the step until `‖F‖₂` decreases sufficiently.
    Error measure: `‖F(y)‖₂`. A step whose linear solve fails, or whose line search finds no
    decrease, stops the solve with that result (`singular`, `line_search_failed`, ...).

    **Arguments:**

    - `linear_solver`: lineax solver for the Newton system (default `lx.AutoLinearSolver(
      well_posed=None)`, dense and direct; `lx.GMRES(...)` for large systems).
    - `max_backtracks`: the most halvings of the step per iteration.
    - `tol`: tolerance on `‖F(y)‖₂` (`None`: `js.root_find`'s `tol`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    sol = js.root_find(lambda y, a: y**3 - a, jnp.array([1.0, 2.0]), jnp.array([8.0, 27.0]))
    assert jnp.allclose(sol.value, jnp.array([2.0, 3.0]))
    ```
    """

    linear_solver: lx.AbstractLinearSolver = lx.AutoLinearSolver(well_posed=None)
    max_backtracks: int = eqx.field(static=True, default=20)
    tol: float | Array | None = None

    def init(self, problem, y, options):
        f = problem.fn(y, problem.args)
        return _NewtonState(f, jnp.array(0, jnp.int32), RESULTS.successful)  # pyright: ignore[reportArgumentType]

    def step(self, problem, y, state):
        jac = lx.JacobianLinearOperator(problem.fn, y, problem.args)
        neg_f = jtu.tree_map(jnp.negative, state.f)
        sol = lx.linear_solve(jac, neg_f, self.linear_solver, throw=False)
        f0 = tree_norm(state.f)

        def trial(t):
            y_t = jtu.tree_map(lambda a, d: a + t * d, y, sol.value)
            f_t = problem.fn(y_t, problem.args)
            return y_t, f_t, tree_norm(f_t)

        one = jnp.asarray(1.0, f0.dtype)
        _, (y_new, f_new, fnorm), _, k = backtracking(
            trial, lambda t, out: out[2] <= (1 - 1e-4 * t) * f0, one, self.max_backtracks
        )
        linear_result = RESULTS.promote(sol.result)
        result = RESULTS.where(
            linear_result != RESULTS.successful,
            linear_result,
            RESULTS.where(fnorm < f0, RESULTS.successful, RESULTS.line_search_failed),
        )
        return y_new, _NewtonState(f_new, state.num_backtracks + k, result)

    def error(self, problem, y, state):
        return tree_norm(state.f)

    def terminate(self, problem, y, state):
        done, result = super().terminate(problem, y, state)
        failed = state.result != RESULTS.successful
        return done | failed, RESULTS.where(failed, state.result, result)

    def postprocess(self, problem, y, state):
        return y, {"num_backtracks": state.num_backtracks}


def root_find(
    fn: Callable[[PyTree[Array], Any], PyTree[Array]],
    y0: PyTree[Array],
    args: Any = None,
    *,
    solver: AbstractRootFinder | None = None,
    tol: float | None = None,
    max_steps: int = 256,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    throw: bool = True,
    progress: bool | Callable = False,
) -> Solution:
    """Find `y` with `fn(y, args) = 0`, differentiably with respect to `args`.

    Derivatives come from the implicit function theorem on `fn(y*, args) = 0` (default) or
    from unrolling.

    **Arguments:**

    - `fn`: `(y, args) -> F` with the same structure and shapes as `y`.
    - `y0`: the starting point.
    - `args`: what `fn` depends on.
    - `solver`: `js.Newton()` (default) or any `js.AbstractRootFinder`.
    - `tol`: absolute tolerance on `‖fn(y, args)‖₂`; `None` (default) takes the solver's,
      else 1e-8 in float64, 1e-5 in float32.
    - `max_steps`, `adjoint`, `throw`, `progress`: as in `js.minimise`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    sqrt = lambda a: js.root_find(lambda y, a: y**2 - a, jnp.array(1.0), a).value
    assert jnp.allclose(jax.grad(sqrt)(4.0), 0.25)  # d sqrt(a)/da = 1/(2 sqrt(a))
    ```
    """
    solver = Newton() if solver is None else solver
    if not isinstance(solver, AbstractRootFinder):
        raise TypeError(
            "root_find's `solver` must be a js.AbstractRootFinder such as js.Newton(...); got "
            f"{type(solver).__name__}."
        )
    return run_entry_point(
        RootProblem,
        solver,
        fn,
        y0,
        args,
        tol=tol,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=throw,
        progress=progress,
        name="root_find",
        check=_check_same_structure,
    )


# ---------------------------------------------------------------------------------------------
# Fixed points


class AbstractFixedPointSolver(AbstractIterativeSolver[FixedPointProblem, PyTree[Array], Any]):
    """Base class of `fixed_point`'s solvers (subclass it to run your own through
    `js.fixed_point`). Their state has a `ty` field, `T(y)`; the family's rule: done once
    `‖T(y) − y‖₂ <= tol`. Declare a `tol` field (`None`: `js.fixed_point`'s `tol`)."""

    tol: eqx.AbstractVar[float | Array | None]

    def error(self, problem, y, state) -> Scalar:
        return tree_norm(jtu.tree_map(jnp.subtract, state.ty, y))

    def terminate(self, problem, y, state):
        return converged_by(self.error(problem, y, state), self.tol)


class _FixedPointState(eqx.Module):
    ty: PyTree[Array]


class FixedPointIteration(AbstractFixedPointSolver):
    """Damped fixed-point iteration `y ← (1 − β) y + β T(y)`.

    Converges for contractions (and for nonexpansive maps with `β < 1`). Error measure:
    `‖T(y) − y‖₂`.

    **Arguments:**

    - `damping`: `β` in (0, 1] (default 1: plain iteration).
    - `tol`: tolerance on `‖T(y) − y‖₂` (`None`: `js.fixed_point`'s `tol`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    sol = js.fixed_point(lambda y, _: jnp.cos(y), jnp.array(1.0),
                         solver=js.FixedPointIteration(), max_steps=500)
    assert jnp.allclose(sol.value, jnp.cos(sol.value))
    ```
    """

    damping: float | Array = 1.0
    tol: float | Array | None = None

    def init(self, problem, y, options):
        return _FixedPointState(problem.fn(y, problem.args))

    def step(self, problem, y, state):
        b = self.damping
        y = jtu.tree_map(lambda yi, ti: (1 - b) * yi + b * ti, y, state.ty)
        return y, _FixedPointState(problem.fn(y, problem.args))


class _AndersonState(eqx.Module):
    ty: PyTree[Array]
    hist: tuple


class AndersonFixedPoint(AbstractFixedPointSolver):
    """Anderson acceleration (type II) of the fixed-point iteration `y ← T(y)`.

    Each step combines the last `history` images `T(y_i)` with the weights that minimise the
    (regularised) norm of the combined residual `Σ α_i (T(y_i) − y_i)` under `Σ α_i = 1`,
    damped by `mixing` (Walker & Ni 2011; the same mixer accelerates Sinkhorn). On a linear
    map with `history ≥ n` it matches GMRES. Error measure: `‖T(y) − y‖₂`.

    **Arguments:**

    - `history`: number of past differences of iterates used (default 5; `history + 1`
      iterates are combined).
    - `mixing`: `β`, the damping of the extrapolated step (default 1).
    - `regularisation`: Tikhonov term on the Jacobi-scaled Gram matrix of the residuals
      (default `None`: 1e-12 in float64, 1e-4 in float32).
    - `tol`: tolerance on `‖T(y) − y‖₂` (`None`: `js.fixed_point`'s `tol`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    sol = js.fixed_point(lambda y, _: jnp.cos(y), jnp.array([1.0, 0.0]),
                         solver=js.AndersonFixedPoint())
    assert sol.stats["num_steps"] < 20 and jnp.allclose(sol.value, 0.7390851332)
    ```
    """

    history: int = eqx.field(static=True, default=5)
    mixing: float | Array = 1.0
    regularisation: float | Array | None = None
    tol: float | Array | None = None

    def __check_init__(self):
        if not isinstance(self.history, int) or self.history < 1:
            raise ValueError(
                f"AndersonFixedPoint `history` must be a positive int; got {self.history!r}."
            )

    def _mixer(self):
        # `history` differences of iterates are `history + 1` residuals.
        return AndersonMixer(self.history + 1, self.regularisation)

    def init(self, problem, y, options):
        flat, _ = ravel_pytree(y)
        return _AndersonState(problem.fn(y, problem.args), self._mixer().init(flat))

    def step(self, problem, y, state):
        x, unravel = ravel_pytree(y)
        tx, _ = ravel_pytree(state.ty)
        x_new, hist = self._mixer().update(state.hist, x, tx, self.mixing)
        y_new = unravel(x_new)
        return y_new, _AndersonState(problem.fn(y_new, problem.args), hist)


def fixed_point(
    fn: Callable[[PyTree[Array], Any], PyTree[Array]],
    y0: PyTree[Array],
    args: Any = None,
    *,
    solver: AbstractFixedPointSolver | None = None,
    tol: float | None = None,
    max_steps: int = 1000,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    throw: bool = True,
    progress: bool | Callable = False,
) -> Solution:
    """Find `y = fn(y, args)`, differentiably with respect to `args`.

    Derivatives come from the implicit function theorem on `y* − fn(y*, args) = 0`: one linear
    solve with `I − ∂fn/∂y` (default dense; pass `js.ImplicitAdjoint(linear_solver=lx.GMRES(...))`
    or `js.Neumann(...)` for large maps), or from unrolling.

    **Arguments:**

    - `fn`: `(y, args) -> T(y)` with the same structure and shapes as `y`.
    - `y0`: the starting point.
    - `args`: what `fn` depends on.
    - `solver`: `js.AndersonFixedPoint()` (default), `js.FixedPointIteration(damping)` or
      any `js.AbstractFixedPointSolver`.
    - `tol`: absolute tolerance on `‖fn(y, args) − y‖₂`; `None` (default) takes the
      solver's, else 1e-8 in float64, 1e-5 in float32.
    - `max_steps`, `adjoint`, `throw`, `progress`: as in `js.minimise`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    # y = 0.5 y + theta  =>  y* = 2 theta, dy*/dtheta = 2
    g = jax.grad(lambda t: js.fixed_point(lambda y, t: 0.5 * y + t, jnp.array(0.0), t).value)(1.0)
    assert jnp.allclose(g, 2.0)
    ```
    """
    solver = AndersonFixedPoint() if solver is None else solver
    if not isinstance(solver, AbstractFixedPointSolver):
        raise TypeError(
            "fixed_point's `solver` must be a js.AbstractFixedPointSolver such as "
            "js.AndersonFixedPoint(...) or js.FixedPointIteration(...); got "
            f"{type(solver).__name__}."
        )
    return run_entry_point(
        FixedPointProblem,
        solver,
        fn,
        y0,
        args,
        tol=tol,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=throw,
        progress=progress,
        name="fixed_point",
        check=_check_same_structure,
    )


def _check_same_structure(fn, y0, args):
    check_same_structure(jax.eval_shape(fn, y0, args), y0, "The output of `fn(y, args)`")
