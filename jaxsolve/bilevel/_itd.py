"""ITD: iterative differentiation (backpropagation through the inner iterations)."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from .._minimise import GradientDescent
from ._algorithm import AbstractBilevelAlgorithm
from ._estimators import Unrolled


class _ITDState(eqx.Module):
    y: object


class ITD(AbstractBilevelAlgorithm):
    """Iterative differentiation (ITD; Maclaurin et al. 2015, Franceschi et al. 2017) for
    `js.bilevel.solve`.

    Each outer step runs exactly `inner_steps` gradient-descent steps on `G(θ, ·)` from the
    previous inner iterate (warm start; `js.bilevel.Unrolled(fixed_steps=True)`: stopped by
    the step count only) and backpropagates through them (the core's `js.UnrollAdjoint`);
    `truncate=K` differentiates only the last `K` steps.

    **Arguments:**

    - `inner_steps`: gradient steps per outer step (Python int).
    - `inner_lr`: their step size (a pytree leaf).
    - `truncate`: `None` (all steps) or the number of steps to backpropagate through.

    **Example:**

    ```python
    import jax.numpy as jnp, optax
    import jaxsolve as js

    inner = lambda th, y, _: 0.5 * jnp.sum((y - th) ** 2)
    outer = lambda th, y, _: jnp.sum((y - 2.0) ** 2) + 0.1 * jnp.sum(th**2)
    sol = js.bilevel.solve(outer, inner, jnp.zeros(1), jnp.zeros(1),
                           algorithm=js.bilevel.ITD(inner_steps=20, inner_lr=0.5),
                           optimiser=optax.sgd(0.2), num_steps=60)
    assert jnp.allclose(sol.value, 20 / 11, atol=1e-4)
    ```
    """

    inner_steps: int = eqx.field(static=True, default=50)
    inner_lr: float | Array = 0.1
    truncate: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, int):
            raise TypeError(f"ITD `inner_steps` must be a Python int; got {self.inner_steps!r}.")
        if self.inner_steps < 1:
            raise ValueError(f"ITD `inner_steps` must be >= 1; got {self.inner_steps}.")

    def init(self, problem, theta, y0, outer_args, inner_args):
        return _ITDState(y=y0)

    def step(self, problem, theta, state, outer_args, inner_args, t):
        estimator = Unrolled(truncate=self.truncate, fixed_steps=True)
        inner_solver = GradientDescent(self.inner_lr)
        # (no inner tolerance: `fixed_steps` stops on the step count only)
        data = problem.with_data(outer_args, inner_args, inner_solver, None, self.inner_steps)
        hg = estimator.hypergradient(data, theta, state.y)
        residual = problem.inner_residual(theta, hg.y, inner_args)
        metrics = {
            "outer_loss": hg.loss,
            "inner_residual": residual,
            "inner_converged": jnp.isfinite(residual),
        }
        return hg.grad, _ITDState(y=hg.y), metrics

    def inner_value(self, state):
        return state.y
