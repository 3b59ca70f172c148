"""The first-order penalty method for bilevel problems (Kwon et al. 2024; Shen & Chen's V-PBGD)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._iterate import tree_norm
from .._minimise import AbstractMinimiser, GradientDescent, minimise
from .._solution import RESULTS
from ._algorithm import AbstractBilevelAlgorithm


class _PenaltyState(eqx.Module):
    y: object
    z: object


class Penalty(AbstractBilevelAlgorithm):
    """The value-function penalty method: first order, no Hessians, no Hessian–vector products.

    Kwon, Kwon, Wright & Nowak, "On Penalty Methods for Nonconvex Bilevel Optimization and
    First-Order Stochastic Approximation" (ICLR 2024); Shen & Chen's V-PBGD (ICML 2023). The
    bilevel problem is replaced by `min_{θ,y} F(θ,y) + λ (G(θ,y) − min_z G(θ,z))`. Each outer
    step approximately minimises `F/λ + G` over `y` and `G` over `z` (warm started, with the
    `inner_solver`), then returns the direction

    `∇θF(θ,y) + λ (∇θG(θ,y) − ∇θG(θ,z))`,

    an `O(1/λ)`-accurate hypergradient. The penalty grows as `λ_t = min(penalty + penalty_growth
    · t, max_penalty)`, as in the papers' schedules. Works with non-convex lower levels.

    **Arguments:**

    - `penalty`: the initial `λ` (a pytree leaf).
    - `penalty_growth`: added to `λ` every outer step (default 0: fixed penalty).
    - `max_penalty`: the cap on `λ`.
    - `inner_solver`: a `js.minimise` solver for `y` and `z` (default `js.GradientDescent(0.1)`:
      first order; the step should be below `1/L` of `G`).
    - `inner_steps`: inner solver steps per outer step for each of `y` and `z`.
    - `inner_tol`: stop the inner solves earlier at this gradient norm.

    **Example:**

    ```python
    import jax.numpy as jnp, optax
    import jaxsolve as js

    inner = lambda th, y, _: 0.5 * jnp.sum((y - th) ** 2)
    outer = lambda th, y, _: jnp.sum((y - 2.0) ** 2) + 0.1 * jnp.sum(th**2)
    alg = js.bilevel.Penalty(penalty=100.0, inner_solver=js.GradientDescent(0.5), inner_steps=20)
    sol = js.bilevel.solve(outer, inner, jnp.zeros(1), jnp.zeros(1), algorithm=alg,
                           optimiser=optax.sgd(0.2), num_steps=60)
    assert jnp.allclose(sol.value, 20 / 11, atol=0.05)    # O(1/λ) bias
    ```
    """

    penalty: float | Array = 10.0
    penalty_growth: float | Array = 0.0
    max_penalty: float | Array = 1e4
    inner_solver: AbstractMinimiser = GradientDescent(0.1)
    inner_steps: int = eqx.field(static=True, default=20)
    inner_tol: float | Array = 1e-10

    def __check_init__(self):
        if isinstance(self.penalty, (int, float)) and not self.penalty > 0:
            raise ValueError(f"Penalty `penalty` must be positive; got {self.penalty!r}.")
        if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, int):
            raise TypeError(
                f"Penalty `inner_steps` must be a Python int; got {self.inner_steps!r}."
            )

    def init(self, problem, theta, y0, outer_args, inner_args):
        return _PenaltyState(y=y0, z=y0)

    def step(self, problem, theta, state, outer_args, inner_args, t):
        lam = jnp.minimum(self.penalty + self.penalty_growth * t, self.max_penalty)
        theta_c = jax.lax.stop_gradient(theta)
        args = (theta_c, outer_args, inner_args, lam)

        def penalised(y, a):
            th, oa, ia, la = a
            return problem.outer_fn(th, y, oa) / la + problem.inner_fn(th, y, ia)

        def lower(z, a):
            th, _, ia, _ = a
            return problem.inner_fn(th, z, ia)

        def run(fn, y0):
            return minimise(
                fn,
                y0,
                args,
                solver=self.inner_solver,
                tol=self.inner_tol,  # pyright: ignore[reportArgumentType]
                max_steps=self.inner_steps,
                throw=False,
            )

        sol_y, sol_z = run(penalised, state.y), run(lower, state.z)
        y, z = sol_y.value, sol_z.value
        value, g_f = jax.value_and_grad(problem.outer_fn)(theta, y, outer_args)
        g_gy = jax.grad(problem.inner_fn)(theta, y, inner_args)
        g_gz = jax.grad(problem.inner_fn)(theta, z, inner_args)
        direction = jax.tree_util.tree_map(lambda a, b, c: a + lam * (b - c), g_f, g_gy, g_gz)
        residual = problem.inner_residual(theta, z, inner_args)
        # A fixed budget of inner steps is the method; only a non-finite iterate is a failure.
        ok = jnp.isfinite(tree_norm(direction)) & (sol_y.result != RESULTS.nonfinite)
        metrics = {
            "outer_loss": value,
            "inner_residual": residual,
            "inner_converged": ok,
            "penalty": lam,
            "value_gap": problem.inner_fn(theta, y, inner_args)
            - problem.inner_fn(theta, z, inner_args),
        }
        return direction, _PenaltyState(y=y, z=z), metrics

    def inner_value(self, state):
        return state.y
