"""The bilevel problems: the two objectives (`Problem`, what the algorithms of
`js.bilevel.solve` receive) and one hypergradient's problem (`HypergradientProblem`, what an
estimator receives)."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree, Scalar

from .._adjoint import AbstractAdjoint, ImplicitAdjoint
from .._functions import function_as_data
from .._iterate import tree_norm
from .._minimise import AbstractMinimiser, minimise
from .._problem import MinimiseProblem, default_tol, float_dtype
from .._solution import Solution


def default_inner_tol(inner_fn, theta, y0, inner_args) -> Any:
    """The inner tolerance on `‖∇_y G‖₂` when neither `inner_tol` nor the inner solver sets
    one: `js.minimise`'s default for the dtype (1e-6 in float64, 1e-4 in float32), and in
    float32 at least `1e-6 ‖∇_y G(θ, y0)‖₂`. float32 gradients carry rounding errors near
    `eps·‖∇G‖`: on a sum-of-squares loss over 1500 samples (`‖∇G(y0)‖ ≈ 1.5e4`) L-BFGS
    stalls near 5e-4, so an absolute 1e-4 was out of reach and every hypergradient raised.
    Float64 keeps the absolute default."""
    dtype = float_dtype(y0)
    tol = MinimiseProblem.default_tol(dtype)
    rel = default_tol(dtype, 0.0, 1e-6)
    if rel == 0.0:
        return tol
    g0 = tree_norm(jax.grad(inner_fn, argnums=1)(theta, y0, inner_args))
    return jax.lax.stop_gradient(jnp.maximum(tol, rel * g0).astype(dtype))


def solve_inner(
    inner_fn, theta, y0, inner_args, solver, tol, max_steps, adjoint: AbstractAdjoint
) -> Solution:
    """`min_y inner_fn(theta, y, inner_args)` by the core's `js.minimise`, never raising
    (`throw=False`: derivative solves included); differentiable in `theta` and `inner_args`
    by `adjoint`. `tol=None` with a solver without its own `tol`: `default_inner_tol`."""
    if tol is None and getattr(solver, "tol", None) is None:
        tol = default_inner_tol(inner_fn, theta, y0, inner_args)
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


class Problem(eqx.Module):
    """The two objectives, `outer_fn(theta, y, outer_args)` and `inner_fn(theta, y, inner_args)`.

    They are held as data (`function_as_data`): the arrays they close over are leaves, so a
    new lambda with the same code closing over new arrays of the same shapes is new data for
    the jitted entry points (no recompilation, no constants baked in, derivatives reach
    them)."""

    outer_fn: Any = eqx.field(converter=function_as_data)
    inner_fn: Any = eqx.field(converter=function_as_data)

    def outer(self, theta, y, args):
        return self.outer_fn(theta, y, args)

    def inner(self, theta, y, args):
        return self.inner_fn(theta, y, args)

    def inner_grad_y(self, theta, y, args):
        return jax.grad(self.inner_fn, argnums=1)(theta, y, args)

    def inner_residual(self, theta, y, args):
        return tree_norm(self.inner_grad_y(theta, y, args))

    def with_data(self, outer_args, inner_args, inner_solver, inner_tol, inner_max_steps):
        """The problem of one hypergradient: these objectives, this data, this inner solver."""
        return HypergradientProblem(
            self.outer_fn,
            self.inner_fn,
            outer_args,
            inner_args,
            inner_solver,
            inner_tol,
            inner_max_steps,
        )


class HypergradientProblem(eqx.Module):
    """What a hypergradient estimator receives: `F(θ, y) = outer_fn(θ, y, outer_args)`,
    `G(θ, y) = inner_fn(θ, y, inner_args)` and the inner solver's settings.

    **Attributes:** `outer_fn`, `inner_fn`, `outer_args`, `inner_args`, `inner_solver` (a
    `js.AbstractMinimiser`), `inner_tol`, `inner_max_steps`.

    **Methods:** `outer(θ, y)`, `inner(θ, y)`, `inner_grad_y(θ, y)` (`∇_y G`), and
    `solve_inner(θ, y0, *, adjoint, solver, max_steps)`: the inner problem by `js.minimise`
    (never raising), differentiable in `θ` by `adjoint` (default `js.ImplicitAdjoint()`).
    """

    outer_fn: Any = eqx.field(converter=function_as_data)
    inner_fn: Any = eqx.field(converter=function_as_data)
    outer_args: Any
    inner_args: Any
    inner_solver: AbstractMinimiser
    inner_tol: Any
    inner_max_steps: int = eqx.field(static=True)

    def outer(self, theta: PyTree[Array], y: PyTree[Array]) -> Scalar:
        return self.outer_fn(theta, y, self.outer_args)

    def inner(self, theta: PyTree[Array], y: PyTree[Array]) -> Scalar:
        return self.inner_fn(theta, y, self.inner_args)

    def inner_grad_y(self, theta: PyTree[Array], y: PyTree[Array]) -> PyTree[Array]:
        return jax.grad(self.inner_fn, argnums=1)(theta, y, self.inner_args)

    def solve_inner(
        self,
        theta: PyTree[Array],
        y0: PyTree[Array],
        *,
        adjoint: AbstractAdjoint = ImplicitAdjoint(),
        solver: AbstractMinimiser | None = None,
        max_steps: int | None = None,
    ) -> Solution:
        return solve_inner(
            self.inner_fn,
            theta,
            y0,
            self.inner_args,
            self.inner_solver if solver is None else solver,
            self.inner_tol,
            self.inner_max_steps if max_steps is None else max_steps,
            adjoint,
        )
