"""The interface of the bilevel algorithms run by `js.bilevel.solve`, and shared helpers."""

import abc
from typing import Any

import equinox as eqx
import jax
from jaxtyping import Array, PyTree

from .._adjoint import ImplicitAdjoint
from .._solution import RESULTS
from .._tree import tree_axpy as tree_axpy, tree_scale as tree_scale, zeros_like as zeros_like
from ._problem import Problem, solve_inner


class AbstractBilevelAlgorithm(eqx.Module):
    """A bilevel algorithm: a state (inner variables and whatever the method keeps) and a step
    that returns a descent direction for `theta`, which `js.bilevel.solve` feeds to the optax
    optimiser.

    - `init(problem, theta, y0, outer_args, inner_args) -> state`
    - `step(problem, theta, state, outer_args, inner_args, t) -> (direction, state, metrics)`;
      `metrics` holds scalars `outer_loss`, `inner_residual`, `inner_converged` (bool) and
      any method-specific ones.
    - `inner_value(state) -> y`: the current inner variable.
    - `after_update(problem, theta, state, inner_args) -> (theta, state)`: a hook after the
      optimiser's update (projections); identity by default.
    """

    @abc.abstractmethod
    def init(self, problem: Problem, theta, y0, outer_args, inner_args) -> Any: ...

    @abc.abstractmethod
    def step(self, problem: Problem, theta, state, outer_args, inner_args, t) -> tuple: ...

    @abc.abstractmethod
    def inner_value(self, state) -> PyTree[Array]: ...

    def after_update(self, problem, theta, state, inner_args):
        return theta, state


def inner_minimise(problem, theta, y0, inner_args, solver, tol, max_steps):
    """Approximately minimise the inner objective at fixed (non-differentiated) `theta`."""
    theta = jax.lax.stop_gradient(theta)
    return solve_inner(
        problem.inner_fn, theta, y0, inner_args, solver, tol, max_steps, ImplicitAdjoint()
    )


def converged(result) -> Array:
    return result == RESULTS.successful
