"""AID: approximate implicit differentiation with warm starts, as a bilevel algorithm."""

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array

from .._minimise import LBFGS, AbstractMinimiser
from .._solution import RESULTS
from ._algorithm import AbstractBilevelAlgorithm, zeros_like
from ._estimators import Implicit


class _AIDState(eqx.Module):
    y: object
    v: object


class AID(AbstractBilevelAlgorithm):
    """Approximate implicit differentiation (AID; Pedregosa 2016, Ji et al. 2021, Blondel et
    al. 2022) for `js.bilevel.solve`.

    Each outer step solves the inner problem from the previous inner solution (warm start),
    solves the adjoint system `(∇²_yy G) v = ∇_y F` with a Krylov solver started from the
    previous `v` (adjoint warm start), and returns `∇θF − (∂²G/∂θ∂y)ᵀ v`. Needs
    Hessian–vector products of `G`, never Hessians.

    **Arguments:**

    - `inner_solver`: a `js.minimise` solver (default `js.LBFGS()`).
    - `inner_tol`, `inner_max_steps`: per outer step (`inner_tol=None`: as in
      `js.bilevel.hypergradient`).
    - `linear_solver`: a lineax solver for the adjoint system (default `None`: as
      `js.bilevel.Implicit`, CG with tolerances the dtype can reach).
    - `warm_start_adjoint`: start the linear solver from the previous `v` (default `True`);
      with `False` from zero.

    The metrics add `adjoint_converged` (the adjoint solve reached its tolerance).

    **Example:**

    ```python
    import jax.numpy as jnp, optax
    import jaxsolve as js

    # inner: y*(θ) = θ; outer: (y - 2)² + θ²/10, minimised at θ = 20/11
    inner = lambda th, y, _: 0.5 * jnp.sum((y - th) ** 2)
    outer = lambda th, y, _: jnp.sum((y - 2.0) ** 2) + 0.1 * jnp.sum(th**2)
    sol = js.bilevel.solve(outer, inner, jnp.zeros(1), jnp.zeros(1),
                           algorithm=js.bilevel.AID(js.GradientDescent(0.5)),
                           optimiser=optax.sgd(0.2), num_steps=60)
    assert jnp.allclose(sol.value, 20 / 11, atol=1e-4)
    ```
    """

    inner_solver: AbstractMinimiser = LBFGS()
    inner_tol: float | Array | None = None
    inner_max_steps: int = eqx.field(static=True, default=200)
    linear_solver: lx.AbstractLinearSolver | None = None
    warm_start_adjoint: bool = eqx.field(static=True, default=True)

    def init(self, problem, theta, y0, outer_args, inner_args):
        return _AIDState(y=y0, v=zeros_like(y0))

    def step(self, problem, theta, state, outer_args, inner_args, t):
        hg = Implicit(self.linear_solver).hypergradient(
            problem.with_data(
                outer_args, inner_args, self.inner_solver, self.inner_tol, self.inner_max_steps
            ),
            theta,
            state.y,
            state.v if self.warm_start_adjoint else None,
        )
        v = hg.adjoint if self.warm_start_adjoint else state.v
        metrics = {
            "outer_loss": hg.loss,
            "inner_residual": jnp.asarray(hg.inner.stats["error"]),
            "inner_converged": hg.inner.result == RESULTS.successful,
            "adjoint_converged": hg.result != RESULTS.adjoint_not_converged,
        }
        return hg.grad, _AIDState(y=hg.y, v=v), metrics

    def inner_value(self, state):
        return state.y
