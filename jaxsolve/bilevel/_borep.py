"""BO-REP: bilevel optimisation under unbounded smoothness (Hao, Gong & Liu, ICLR 2024)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._iterate import tree_norm
from .._minimise import AbstractMinimiser, GradientDescent
from .._solution import RESULTS
from ._algorithm import AbstractBilevelAlgorithm, inner_minimise, tree_axpy, zeros_like


class _BOREPState(eqx.Module):
    y: object
    z: object
    m: object
    init_result: RESULTS


class BOREP(AbstractBilevelAlgorithm):
    """BO-REP (Hao, Gong & Liu, "Bilevel Optimization under Unbounded Smoothness: A New
    Algorithm and Convergence Analysis", ICLR 2024), for `js.bilevel.solve`.

    - Lower level: refined once at the start (`init_steps` steps of `inner_solver` on
      `G(θ₀, ·)`), then updated only every `update_every` outer steps, by `inner_steps` steps
      warm started from the current `y` (periodic updates).
    - Linear-system variable: one step per outer step,
      `z ← Π_R(z − ν (∇²_yy G(θ, y) z − ∇_y F(θ, y)))` (a Hessian–vector product), projected
      onto the ball of radius `z_radius`.
    - Upper level: the estimate `∇θF(θ, y) − ∇²_θy G(θ, y) z` enters a momentum
      `m ← β m + (1 − β) ĝ`, and the direction returned is `m / ‖m‖` (normalised momentum).
      Pair it with `optax.sgd(η)` to get the paper's update `θ ← θ − η m/‖m‖`.

    **Arguments:**

    - `beta`: momentum `β` (default 0.9).
    - `nu`: step of the `z` update `ν` (below `1/λ_max(∇²_yy G)`).
    - `update_every`: the period `I` of lower-level updates.
    - `inner_steps`: steps of each periodic lower-level update (`N`).
    - `init_steps`: steps of the initial refinement.
    - `inner_solver`: a `js.minimise` solver (default `js.GradientDescent(0.1)`).
    - `z_radius`: radius `R` of the projection of `z` (default `inf`).

    **Example:**

    ```python
    import jax.numpy as jnp, optax
    import jaxsolve as js

    inner = lambda th, y, _: 0.5 * jnp.sum((y - th) ** 2)
    outer = lambda th, y, _: jnp.sum((y - 2.0) ** 2) + 0.1 * jnp.sum(th**2)
    alg = js.bilevel.BOREP(nu=0.5, update_every=2, inner_steps=5,
                           inner_solver=js.GradientDescent(0.5))
    lr = optax.linear_schedule(0.1, 0.0, 200)       # normalised steps: decay the step size
    sol = js.bilevel.solve(outer, inner, jnp.zeros(1), jnp.zeros(1), algorithm=alg,
                           optimiser=optax.sgd(lr), num_steps=200)
    assert jnp.allclose(sol.value, 20 / 11, atol=0.05)
    ```
    """

    beta: float | Array = 0.9
    nu: float | Array = 0.1
    update_every: int = eqx.field(static=True, default=2)
    inner_steps: int = eqx.field(static=True, default=10)
    init_steps: int = eqx.field(static=True, default=200)
    inner_solver: AbstractMinimiser = GradientDescent(0.1)
    inner_tol: float | Array = 1e-10
    z_radius: float | Array = float("inf")

    def __check_init__(self):
        for name in ("update_every", "inner_steps", "init_steps"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"BOREP `{name}` must be a positive Python int; got {val!r}.")
        if isinstance(self.beta, (int, float)) and not 0 <= self.beta < 1:
            raise ValueError(f"BOREP `beta` must be in [0, 1); got {self.beta!r}.")

    def init(self, problem, theta, y0, outer_args, inner_args):
        sol = inner_minimise(
            problem, theta, y0, inner_args, self.inner_solver, self.inner_tol, self.init_steps
        )
        ok = (sol.result == RESULTS.successful) | (sol.result == RESULTS.max_steps_reached)
        return _BOREPState(
            y=sol.value,
            z=zeros_like(y0),
            m=zeros_like(theta),
            init_result=RESULTS.where(ok, RESULTS.successful, sol.result),
        )

    def step(self, problem, theta, state, outer_args, inner_args, t):
        def update_lower(y):
            sol = inner_minimise(
                problem, theta, y, inner_args, self.inner_solver, self.inner_tol, self.inner_steps
            )
            return sol.value

        y = jax.lax.cond((t > 0) & (t % self.update_every == 0), update_lower, lambda y: y, state.y)
        value, (g_theta, g_y) = jax.value_and_grad(problem.outer_fn, argnums=(0, 1))(
            theta, y, outer_args
        )
        grad_y = lambda th, yy: jax.grad(problem.inner_fn, argnums=1)(th, yy, inner_args)
        gy, hvp = jax.jvp(lambda yy: grad_y(theta, yy), (y,), (state.z,))
        _, vjp = jax.vjp(lambda th: grad_y(th, y), theta)
        (cross,) = vjp(state.z)
        estimate = jax.tree_util.tree_map(jnp.subtract, g_theta, cross)
        z = jax.tree_util.tree_map(lambda zi, hz, fy: zi - self.nu * (hz - fy), state.z, hvp, g_y)
        zn = tree_norm(z)
        z = jax.tree_util.tree_map(lambda zi: zi * jnp.minimum(1.0, self.z_radius / zn), z)
        m = tree_axpy(
            self.beta, state.m, jax.tree_util.tree_map(lambda e: (1 - self.beta) * e, estimate)
        )
        mn = tree_norm(m)
        direction = jax.tree_util.tree_map(lambda mi: mi / jnp.where(mn > 0, mn, 1.0), m)
        residual = tree_norm(gy)
        ok = jnp.isfinite(residual) & jnp.isfinite(mn) & (state.init_result == RESULTS.successful)
        metrics = {
            "outer_loss": value,
            "inner_residual": residual,
            "inner_converged": ok,
            "estimate_norm": tree_norm(estimate),
        }
        return direction, _BOREPState(y=y, z=z, m=m, init_result=state.init_result), metrics

    def inner_value(self, state):
        return state.y
