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
from ._checks import (
    check_same_structure,
)
from ._iterate import AbstractIterativeSolver, tree_norm
from ._solution import RESULTS, Solution
from ._solve import run_entry_point


def _residual(fn, y, args):
    return fn(y, args)


def _fixed_point_residual(fn, y, args):
    # y − T(y): its Jacobian I − ∂T/∂y makes `js.Neumann(alpha=1)` the series Σ (∂T/∂y)^k.
    return jtu.tree_map(jnp.subtract, y, fn(y, args))


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
    return run_entry_point(
        solver,
        fn,
        y0,
        args,
        tol=tol,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=throw,
        progress=progress,
        optimality=_residual,
        tags=frozenset(),
        name="root_find",
        check=_check_same_structure,
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
    prev_x: Array  # last iterate and residual, flattened
    prev_g: Array
    dxs: Array  # (history, n) differences of consecutive iterates
    dgs: Array  # (history, n) differences of consecutive residuals
    count: Array


class Anderson(AbstractIterativeSolver):
    """Anderson acceleration (type II) of the fixed-point iteration `y ← T(y)`.

    In the difference form of Walker & Ni (2011): with `g = T(x) − x` and the last `history`
    differences `ΔX`, `ΔG` of iterates and residuals, solve the least-squares problem
    `γ = argmin ‖g − ΔG γ‖₂` (SVD-based, rank-deficiency safe) and step to
    `x + β g − (ΔX + β ΔG) γ`. On a linear map with `history ≥ n` this matches GMRES.
    Error measure: `‖T(y) − y‖₂`.

    **Arguments:**

    - `history`: number of past differences kept (default 5).
    - `mixing`: `β`, the damping of the extrapolated step (default 1).

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

    def __check_init__(self):
        if not isinstance(self.history, int) or self.history < 1:
            raise ValueError(f"Anderson `history` must be a positive int; got {self.history!r}.")

    def init(self, fn, y, args):
        flat, _ = ravel_pytree(y)
        zeros = jnp.zeros((self.history, flat.size), flat.dtype)
        return _AndersonState(
            fn(y, args), flat, jnp.zeros_like(flat), zeros, zeros, jnp.array(0, jnp.int32)
        )

    def step(self, fn, y, args, state):
        x, unravel = ravel_pytree(y)
        tx, _ = ravel_pytree(state.ty)
        g = tx - x
        slot = (state.count - 1) % self.history
        push = state.count > 0
        dxs = jnp.where(push, state.dxs.at[slot].set(x - state.prev_x), state.dxs)
        dgs = jnp.where(push, state.dgs.at[slot].set(g - state.prev_g), state.dgs)
        valid = jnp.arange(self.history) < jnp.minimum(state.count, self.history)
        dg_valid = jnp.where(valid[:, None], dgs, 0.0)
        gamma = jnp.linalg.lstsq(dg_valid.T, g)[0]
        gamma = jnp.where(valid, gamma, 0.0)
        b = self.mixing
        x_new = x + b * g - gamma @ (dxs + b * dgs)
        y_new = unravel(x_new)
        new_state = _AndersonState(fn(y_new, args), x, g, dxs, dgs, state.count + 1)
        return y_new, new_state, RESULTS.successful

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
    return run_entry_point(
        solver,
        fn,
        y0,
        args,
        tol=tol,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=throw,
        progress=progress,
        optimality=_fixed_point_residual,
        tags=frozenset(),
        name="fixed_point",
        check=_check_same_structure,
    )


def _check_same_structure(fn, y0, args):
    check_same_structure(jax.eval_shape(fn, y0, args), y0, "The output of `fn(y, args)`")
