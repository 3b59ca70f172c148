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
from jaxtyping import Array, PyTree

from ._adjoint import AbstractAdjoint, ImplicitAdjoint
from ._checks import check_float_tree, check_max_steps, check_same_structure, check_tol
from ._iterate import AbstractIterativeSolver, apply_throw, tree_norm
from ._solution import RESULTS, Solution
from ._solve import closure_convert, iterative_solve


def _residual(fn, y, args):
    return fn(y, args)


def _fixed_point_residual(fn, y, args):
    return jtu.tree_map(jnp.subtract, fn(y, args), y)


# ---------------------------------------------------------------------------------------------
# Root finding


class _NewtonState(eqx.Module):
    f: PyTree[Array]
    num_linesearch: Array


class Newton(AbstractIterativeSolver):
    """Newton's method for `F(y) = 0` with a backtracking line search on `‖F‖₂`.

    Each step solves `J(y) δ = −F(y)` with a lineax solver on the Jacobian (matrix-free
    `lx.JacobianLinearOperator`), then halves the step until `‖F‖₂` decreases sufficiently.
    Error measure: `‖F(y)‖₂`.

    **Arguments:**

    - `linear_solver`: lineax solver for the Newton system (default `lx.AutoLinearSolver(
      well_posed=None)`, dense and direct; `lx.GMRES(...)` for large systems).
    - `max_backtracks`: the most halvings of the step per iteration.

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

    def init(self, fn, y, args):
        return _NewtonState(fn(y, args), jnp.array(0, jnp.int32))

    def step(self, fn, y, args, state):
        jac = lx.JacobianLinearOperator(fn, y, args)
        neg_f = jtu.tree_map(jnp.negative, state.f)
        sol = lx.linear_solve(jac, neg_f, self.linear_solver, throw=False)
        delta = sol.value
        f0 = tree_norm(state.f)

        def trial(t):
            y_t = jtu.tree_map(lambda a, d: a + t * d, y, delta)
            f_t = fn(y_t, args)
            return y_t, f_t, tree_norm(f_t)

        def cond(c):
            t, _, _, fnorm, k = c
            return (~(fnorm <= (1 - 1e-4 * t) * f0)) & (k < self.max_backtracks)

        def body(c):
            t, _, _, _, k = c
            t = 0.5 * t
            y_t, f_t, fnorm = trial(t)
            return t, y_t, f_t, fnorm, k + 1

        y1, f1, n1 = trial(jnp.asarray(1.0, f0.dtype))
        t, y_new, f_new, fnorm, k = jax.lax.while_loop(
            cond, body, (jnp.asarray(1.0, f0.dtype), y1, f1, n1, jnp.array(0, jnp.int32))
        )
        decreased = fnorm < f0
        linear_result = RESULTS.promote(sol.result)
        result = RESULTS.where(
            linear_result != RESULTS.successful,
            linear_result,
            RESULTS.where(decreased, RESULTS.successful, RESULTS.line_search_failed),
        )
        return y_new, _NewtonState(f_new, state.num_linesearch + k), result

    def error(self, fn, y, args, state):
        return tree_norm(state.f)

    def stats(self, state):
        return {"num_backtracks": state.num_linesearch}


def root_find(
    fn: Callable[[PyTree[Array], Any], PyTree[Array]],
    y0: PyTree[Array],
    args: Any = None,
    *,
    solver: AbstractIterativeSolver | None = None,
    tol: float = 1e-8,
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
    - `solver`: `js.Newton()` (default).
    - `tol`: absolute tolerance on `‖fn(y, args)‖₂`.
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
    if not isinstance(solver, Newton):
        raise TypeError(
            f"root_find's `solver` must be js.Newton(...); got {type(solver).__name__}."
        )
    _check_map(fn, y0, args, "root_find's `fn(y, args)`", tol, max_steps)
    return _run(
        solver, fn, y0, args, tol, max_steps, adjoint, throw, progress, _residual, "root_find"
    )


# ---------------------------------------------------------------------------------------------
# Fixed points


class _FixedPointState(eqx.Module):
    ty: PyTree[Array]


class FixedPointIteration(AbstractIterativeSolver):
    """Damped fixed-point iteration `y ← (1 − β) y + β T(y)`.

    Converges for contractions (and for nonexpansive maps with `β < 1`). Error measure:
    `‖T(y) − y‖₂`.

    **Arguments:**

    - `damping`: `β` in (0, 1] (default 1: plain iteration).

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

    def init(self, fn, y, args):
        return _FixedPointState(fn(y, args))

    def step(self, fn, y, args, state):
        b = self.damping
        y = jtu.tree_map(lambda yi, ti: (1 - b) * yi + b * ti, y, state.ty)
        return y, _FixedPointState(fn(y, args)), RESULTS.successful

    def error(self, fn, y, args, state):
        return tree_norm(jtu.tree_map(jnp.subtract, state.ty, y))


class _AndersonState(eqx.Module):
    ty: PyTree[Array]
    xs: Array  # (history, n) past iterates, flattened
    gs: Array  # (history, n) their residuals T(x) - x
    count: Array


class Anderson(AbstractIterativeSolver):
    """Anderson acceleration (type II) of the fixed-point iteration `y ← T(y)`.

    Keeps the last `history` iterates `x_i` and residuals `g_i = T(x_i) − x_i`, finds the affine
    combination `α` (`Σ α_i = 1`) minimising `‖Σ α_i g_i‖₂` (regularised normal equations), and
    steps to `Σ α_i (x_i + β g_i)`. Error measure: `‖T(y) − y‖₂`.

    **Arguments:**

    - `history`: number of past iterates (default 5).
    - `mixing`: `β`, the damping of the extrapolated step (default 1).
    - `ridge`: relative Tikhonov regularisation of the least-squares problem.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    sol = js.fixed_point(lambda y, _: jnp.cos(y), jnp.array([1.0, 0.0]), solver=js.Anderson())
    assert sol.stats["num_steps"] < 20 and jnp.allclose(sol.value, 0.7390851332)
    ```
    """

    history: int = eqx.field(static=True, default=5)
    mixing: float | Array = 1.0
    ridge: float = eqx.field(static=True, default=1e-10)

    def __check_init__(self):
        if not isinstance(self.history, int) or self.history < 1:
            raise ValueError(f"Anderson `history` must be a positive int; got {self.history!r}.")

    def init(self, fn, y, args):
        flat, _ = ravel_pytree(y)
        zeros = jnp.zeros((self.history, flat.size), flat.dtype)
        return _AndersonState(fn(y, args), zeros, zeros, jnp.array(0, jnp.int32))

    def step(self, fn, y, args, state):
        x, unravel = ravel_pytree(y)
        tx, _ = ravel_pytree(state.ty)
        slot = state.count % self.history
        xs = state.xs.at[slot].set(x)
        gs = state.gs.at[slot].set(tx - x)
        valid = jnp.arange(self.history) <= state.count
        gram = gs @ gs.T
        both = valid[:, None] & valid[None, :]
        scale = jnp.max(jnp.where(valid, jnp.diag(gram), 0.0))
        reg = self.ridge * scale + jnp.finfo(x.dtype).tiny
        gram = jnp.where(both, gram, 0.0) + jnp.diag(jnp.where(valid, reg, 1.0))
        z = jnp.linalg.solve(gram, valid.astype(x.dtype))
        alpha = z / jnp.sum(z)
        x_new = alpha @ (xs + self.mixing * gs)
        y_new = unravel(x_new)
        return y_new, _AndersonState(fn(y_new, args), xs, gs, state.count + 1), RESULTS.successful

    def error(self, fn, y, args, state):
        return tree_norm(jtu.tree_map(jnp.subtract, state.ty, y))


def fixed_point(
    fn: Callable[[PyTree[Array], Any], PyTree[Array]],
    y0: PyTree[Array],
    args: Any = None,
    *,
    solver: AbstractIterativeSolver | None = None,
    tol: float = 1e-8,
    max_steps: int = 1000,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    throw: bool = True,
    progress: bool | Callable = False,
) -> Solution:
    """Find `y = fn(y, args)`, differentiably with respect to `args`.

    Derivatives come from the implicit function theorem on `fn(y*, args) − y* = 0`: one linear
    solve with `I − ∂fn/∂y` (default dense; pass `js.ImplicitAdjoint(linear_solver=lx.GMRES(...))`
    or `js.Neumann(...)` for large maps), or from unrolling.

    **Arguments:**

    - `fn`: `(y, args) -> T(y)` with the same structure and shapes as `y`.
    - `y0`: the starting point.
    - `args`: what `fn` depends on.
    - `solver`: `js.Anderson()` (default) or `js.FixedPointIteration(damping)`.
    - `tol`: absolute tolerance on `‖fn(y, args) − y‖₂`.
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
    solver = Anderson() if solver is None else solver
    if not isinstance(solver, (Anderson, FixedPointIteration)):
        raise TypeError(
            "fixed_point's `solver` must be js.Anderson(...) or js.FixedPointIteration(...); "
            f"got {type(solver).__name__}."
        )
    _check_map(fn, y0, args, "fixed_point's `fn(y, args)`", tol, max_steps)
    return _run(
        solver,
        fn,
        y0,
        args,
        tol,
        max_steps,
        adjoint,
        throw,
        progress,
        _fixed_point_residual,
        "fixed_point",
    )


def _check_map(fn, y0, args, what, tol, max_steps):
    check_float_tree(y0, "y0")
    check_tol(tol)
    check_max_steps(max_steps)
    if not callable(fn):
        raise TypeError(f"{what}: `fn` must be callable; got {type(fn).__name__}.")
    check_same_structure(jax.eval_shape(fn, y0, args), y0, what)


@eqx.filter_jit
def _run(solver, fn, y0, args, tol, max_steps, adjoint, throw, progress, optimality, name):
    fn = closure_convert(fn, y0, args)
    sol = iterative_solve(
        solver,
        fn,
        y0,
        args,
        optimality=optimality,
        tags=frozenset(),
        tol=tol,
        max_steps=max_steps,
        adjoint=adjoint,
        progress=progress,
        name=name,
    )
    return apply_throw(sol, throw)
