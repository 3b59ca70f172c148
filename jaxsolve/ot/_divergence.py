"""`sinkhorn_divergence`: the debiased entropic OT loss between two weighted point clouds."""

import jax.numpy as jnp

from .._adjoint import AbstractAdjoint, ImplicitAdjoint
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
):
    """The Sinkhorn divergence `S(α, β) = OT_ε(α, β) − ½ OT_ε(α, α) − ½ OT_ε(β, β)`
    (Genevay et al. 2018, Feydy et al. 2019), plus `ε/2 (m_α − m_β)²` when unbalanced.

    `OT_ε` is the regularised cost `reg_cost` of `js.ot.solve`. `S` is nonnegative, zero
    iff `α = β`, smooth, and interpolates between OT (`ε → 0`) and MMD (`ε → ∞`): a good
    training loss between point clouds. Differentiable in `x`, `y`, `a`, `b`, `epsilon`.

    **Arguments:**

    - `x`: `(n, d)` and `y`: `(m, d)` points; `a`, `b` weights (default uniform).
    - `epsilon`, `cost_fn`, `batch_size`, `relative_epsilon`: as in `js.ot.PointCloud`.
    - `tau_a`, `tau_b`, `solver`, `adjoint`, `throw`: as in `js.ot.solve`.

    **Returns:** the divergence, a scalar.

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
    ```
    """

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

    x = jnp.asarray(x)
    y = jnp.asarray(y)
    sol_xy = ot(x, y, a, b)
    sol_xx = ot(x, x, a, a)
    sol_yy = ot(y, y, b, b)
    div = sol_xy.reg_cost - 0.5 * (sol_xx.reg_cost + sol_yy.reg_cost)
    mass = 0.5 * sol_xy.epsilon * (jnp.sum(sol_xy.a) - jnp.sum(sol_xy.b)) ** 2
    return div + mass
