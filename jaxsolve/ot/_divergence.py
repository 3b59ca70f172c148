"""`sinkhorn_divergence`: the debiased entropic OT loss between two weighted point clouds."""

import equinox as eqx
import jax.numpy as jnp

from .._adjoint import AbstractAdjoint, ImplicitAdjoint
from .._checks import floats_to_arrays
from .._solution import RESULTS
from ._base import AbstractOTSolver
from ._geometry import PointCloud
from ._solve import solve


def sinkhorn_divergence(
    x,
    y,
    a=None,
    b=None,
    *,
    epsilon=0.05,
    cost_fn=None,
    batch_size=None,
    relative_epsilon=None,
    tau_a=1.0,
    tau_b=1.0,
    solver: AbstractOTSolver | None = None,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    throw: bool = True,
    return_result: bool = False,
):
    """The Sinkhorn divergence `S(α, β) = OT_ε(α, β) − ½ OT_ε(α, α) − ½ OT_ε(β, β)`
    (Genevay et al. 2018, Feydy et al. 2019), plus `ε/2 (m_α − m_β)²` when unbalanced.

    `OT_ε` is the regularised cost `reg_cost` of `js.ot.solve`. `S` is nonnegative, zero
    iff `α = β`, smooth, and interpolates between OT (`ε → 0`) and MMD (`ε → ∞`): a good
    training loss between point clouds. Differentiable in `x`, `y`, `a`, `b`, `epsilon`.

    **Arguments:**

    - `x`: `(n, d)` and `y`: `(m, d)` points; `a`, `b` weights (default uniform).
    - `epsilon`, `cost_fn`, `batch_size`, `relative_epsilon`: as in `js.ot.PointCloud`.
    - `tau_a`, `tau_b`, `solver`, `adjoint`: as in `js.ot.solve`.
    - `throw`: raise if any of the three solves fails; with `False` nothing raises (under
      `jit`, `vmap`, `grad`, derivative solves included): ask for `return_result=True`.
    - `return_result`: return `(divergence, result)`: the first failure among the three solves
      (`js.RESULTS.successful` if none). Under `jax.grad`, use `has_aux=True`.

    **Returns:** the divergence, a scalar (and the result with `return_result=True`).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (30, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (20, 2)) + 2.0
    loss = lambda x: js.ot.sinkhorn_divergence(x, y, epsilon=0.5)
    assert loss(x) > 1.0
    g = jax.grad(loss)(x)                    # moving x towards y (at +2) decreases the loss
    assert jnp.all(g.sum(0) < 0)

    # throw=False: a failure is a result, readable also under grad
    short = js.ot.Sinkhorn(max_steps=10, epsilon_scaling=None, acceleration=None)
    f = lambda x: js.ot.sinkhorn_divergence(x, y, epsilon=0.01, solver=short, throw=False,
                                            return_result=True)
    g, result = jax.grad(f, has_aux=True)(x)
    assert result == js.RESULTS.max_steps_reached and jnp.all(jnp.isfinite(g))
    ```
    """

    # One compiled program for the three solves and the sum (eagerly, the setup and the costs
    # would compile op by op); Python floats (ε, τ, the solver's settings) are data, so new
    # values do not recompile.
    data = floats_to_arrays((jnp.asarray(x), jnp.asarray(y), a, b, epsilon, tau_a, tau_b, solver))
    options = (cost_fn, batch_size, relative_epsilon, adjoint, throw, return_result)
    return _divergence(data, options)


@eqx.filter_jit
def _divergence(data, options):
    x, y, a, b, epsilon, tau_a, tau_b, solver = data
    cost_fn, batch_size, relative_epsilon, adjoint, throw, return_result = options

    def ot(p, q, wp, wq):
        geom = PointCloud(
            p,
            q,
            epsilon=epsilon,
            cost_fn=cost_fn,
            batch_size=batch_size,
            relative_epsilon=relative_epsilon,
        )
        return solve(
            geom, wp, wq, tau_a=tau_a, tau_b=tau_b, solver=solver, adjoint=adjoint, throw=throw
        )

    sol_xy = ot(x, y, a, b)
    sol_xx = ot(x, x, a, a)
    sol_yy = ot(y, y, b, b)
    div = sol_xy.reg_cost - 0.5 * (sol_xx.reg_cost + sol_yy.reg_cost)
    mass = 0.5 * sol_xy.epsilon * (jnp.sum(sol_xy.a) - jnp.sum(sol_xy.b)) ** 2
    if not return_result:
        return div + mass
    result = sol_yy.result
    for sol in (sol_xx, sol_xy):
        result = RESULTS.where(sol.result != RESULTS.successful, sol.result, result)
    return div + mass, result
