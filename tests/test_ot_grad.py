"""Derivatives of OT solutions: finite differences, implicit vs unrolled, jvp vs vjp, Hessians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsolve as js

# Plain log-domain sweeps: the implicit derivative does not depend on the solver, and this
# loop compiles fastest (the unrolled reference differentiates through it exactly).
SOLVER = js.ot.Sinkhorn(
    tol=1e-12, max_steps=20_000, kernel=False, acceleration=None, epsilon_scaling=None
)
EPS = 0.3


def _data(n=9, m=7):
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.PRNGKey(3), 5)
    x = jax.random.normal(k1, (n, 2))
    y = jax.random.normal(k2, (m, 2)) + 0.5
    a = jax.random.uniform(k3, (n,)) + 0.3
    b = jax.random.uniform(k4, (m,)) + 0.3
    return x, y, a / a.sum(), b / b.sum(), k5


def _sol(x, y, a, b, eps=EPS, adjoint=js.ImplicitAdjoint(), tau=1.0, batch_size=None):
    geom = js.ot.PointCloud(x, y, epsilon=eps, batch_size=batch_size)
    return js.ot.solve(geom, a, b, solver=SOLVER, adjoint=adjoint, tau_a=tau, tau_b=tau)


def _plan_loss(x, y, a, b, eps=EPS, adjoint=js.ImplicitAdjoint(), tau=1.0):
    P = _sol(x, y, a, b, eps, adjoint, tau).plan
    w = jnp.arange(P.size, dtype=P.dtype).reshape(P.shape) / P.size
    return jnp.sum(jnp.sin(w) * P**2) * 100


def _fd(f, x, d, h=1e-5):
    return (f(x + h * d) - f(x - h * d)) / (2 * h)


def _zero_sum(v):
    return v - v.mean()


def test_grad_x_matches_finite_differences():
    x, y, a, b, k = _data()
    d = jax.random.normal(k, x.shape)

    def losses(x):
        sol = _sol(x, y, a, b)
        return jnp.stack(
            [
                sol.reg_cost,
                sol.transport_cost,
                jnp.sum(sol.plan * jnp.cos(jnp.arange(7.0))),
                jnp.sum(sol.f * jnp.arange(9.0)),  # the potentials, in their canonical gauge
                jnp.sum(sol.g * jnp.arange(7.0)),
            ]
        )

    # One program for the values (the finite differences) and their reverse-mode Jacobian.
    both = jax.jit(lambda x: (losses(x), jax.jacrev(losses)(x)))
    J = both(x)[1]
    fd = _fd(lambda x: both(x)[0], x, d)
    np.testing.assert_allclose(jnp.tensordot(J, d, 2), fd, rtol=1e-6, atol=1e-9)


def test_grad_weights_cost_matrix_epsilon():
    x, y, a, b, k = _data()
    C = js.ot.PointCloud(x, y).cost_matrix
    ka, kb, kc = jax.random.split(k, 3)

    def loss(a, b, C, eps):
        sol = js.ot.solve(js.ot.Geometry(C, eps), a, b, solver=SOLVER)
        return sol.reg_cost + jnp.sum(sol.plan**2) * 10

    # One program (the loss and its gradient), not one per eager op of the backward pass.
    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
    ga, gb, gC, ge = value_and_grad(a, b, C, EPS)[1]
    loss = lambda *args: value_and_grad(*args)[0]
    da = _zero_sum(jax.random.normal(ka, a.shape))  # keep the masses equal
    db = _zero_sum(jax.random.normal(kb, b.shape))
    dC = jax.random.normal(kc, C.shape)
    np.testing.assert_allclose(
        jnp.vdot(ga, da), _fd(lambda t: loss(t, b, C, EPS), a, da), rtol=1e-6
    )
    np.testing.assert_allclose(
        jnp.vdot(gb, db), _fd(lambda t: loss(a, t, C, EPS), b, db), rtol=1e-6
    )
    np.testing.assert_allclose(
        jnp.vdot(gC, dC), _fd(lambda t: loss(a, b, t, EPS), C, dC), rtol=1e-6
    )
    np.testing.assert_allclose(ge, _fd(lambda t: loss(a, b, C, t), EPS, 1.0), rtol=1e-6)


@pytest.mark.parametrize("tau", [1.0])
def test_implicit_matches_unrolled(tau):
    x, y, a, b, _ = _data()
    # Jitted: one program per adjoint, not one per eager op of the backward pass.
    grad = jax.jit(jax.grad(_plan_loss, argnums=(0, 1, 2, 4)), static_argnums=5)
    gi = grad(x, y, a, b, EPS, js.ImplicitAdjoint(), tau)
    gu = grad(x, y, a, b, EPS, js.UnrollAdjoint(), tau)
    for u, v in zip(gi, gu):
        # a's gradient is defined up to a constant in the balanced case (mass constraint)
        if u.shape == a.shape and tau == 1.0:
            u, v = _zero_sum(u), _zero_sum(v)
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-9)


def test_unbalanced_grad_and_forward_mode():
    x, y, a, b, k = _data()
    d = jax.random.normal(k, x.shape)
    loss = lambda x: _plan_loss(x, y, 2 * a, b, EPS, js.ImplicitAdjoint(), 0.7)

    @jax.jit
    def derivatives(x, d):
        # One program: the value (for the finite differences), reverse and forward mode.
        value, g = jax.value_and_grad(loss)(x)
        return value, g, jax.jvp(loss, (x,), (d,))[1]

    _, g, jv = derivatives(x, d)
    fd = _fd(lambda x: derivatives(x, d)[0], x, d)
    np.testing.assert_allclose(jnp.vdot(g, d), fd, rtol=1e-6)
    np.testing.assert_allclose(jv, jnp.vdot(g, d), rtol=1e-8)


def test_hessian_vector_product_of_plan_loss():
    """Second order: d/dt ∇L(x + t v) by forward-over-reverse vs finite differences of the
    gradient, and vs the unrolled computation."""
    x, y, a, b, k = _data(6, 5)
    v = jax.random.normal(k, x.shape)
    grad = jax.grad(lambda x: _plan_loss(x, y, a, b))
    # One program: the gradient (for the finite differences) and its jvp.
    both = jax.jit(lambda x, v: jax.jvp(grad, (x,), (v,)))
    hvp = both(x, v)[1]
    fd = (both(x + 1e-5 * v, v)[0] - both(x - 1e-5 * v, v)[0]) / 2e-5
    np.testing.assert_allclose(hvp, fd, rtol=1e-6, atol=1e-8)
    grad_u = jax.grad(lambda x: _plan_loss(x, y, a, b, EPS, js.UnrollAdjoint("bounded")))
    hvp_u = jax.jit(lambda x, v: jax.jvp(grad_u, (x,), (v,))[1])(x, v)
    np.testing.assert_allclose(hvp, hvp_u, rtol=1e-6, atol=1e-8)


def _count_whiles(fn, x) -> int:
    """While loops in the lowered program (lineax's solves are primitives in a jaxpr)."""
    return jax.jit(fn).lower(x).as_text().count("stablehlo.while")


def test_reg_cost_gradient_needs_no_linear_solve():
    """The envelope theorem: the dual is stationary in the potentials, so the gradient of
    `reg_cost` has no adjoint loop (the program has the forward solve's loops only), while a
    loss of the plan does need one."""
    x, y, a, b, _ = _data()
    cost = lambda x: _sol(x, y, a, b).reg_cost
    plan = lambda x: _plan_loss(x, y, a, b)
    forward = _count_whiles(cost, x)
    assert _count_whiles(jax.grad(cost), x) == forward
    assert _count_whiles(jax.grad(plan), x) > forward


def test_reg_cost_second_derivatives_see_the_potentials():
    """d²/dε² and the Hessian–vector product in x of `reg_cost` vs finite differences of its
    gradient: the second order includes the potentials' implicit dependence."""
    x, y, a, b, k = _data(6, 5)
    v = jax.random.normal(k, x.shape)
    grad = jax.grad(lambda x, e: _sol(x, y, a, b, eps=e).reg_cost, argnums=(0, 1))

    @jax.jit
    def derivatives(x, v, e):
        # One program for everything compared: the first derivatives in x and ε (for the
        # finite differences), the Hessian–vector product in x and d²/dε².
        (gx, ge), hvp = jax.jvp(lambda x: grad(x, e), (x,), (v,))
        return gx, ge, hvp[0], jax.grad(lambda e: grad(x, e)[1])(e)

    eps = jnp.asarray(EPS)
    _, _, hvp, d2_eps = derivatives(x, v, eps)
    fd = (derivatives(x + 1e-5 * v, v, eps)[0] - derivatives(x - 1e-5 * v, v, eps)[0]) / 2e-5
    np.testing.assert_allclose(hvp, fd, rtol=1e-6, atol=1e-8)
    fd_eps = (derivatives(x, v, eps + 1e-5)[1] - derivatives(x, v, eps - 1e-5)[1]) / 2e-5
    np.testing.assert_allclose(d2_eps, fd_eps, rtol=1e-6)


def test_blockwise_gradient_equals_dense():
    x, y, a, b, _ = _data()
    grad = lambda batch_size: jax.grad(lambda x: _sol(x, y, a, b, batch_size=batch_size).reg_cost)
    # Both gradients from one program.
    dense, blocks = jax.jit(lambda x: (grad(None)(x), grad(4)(x)))(x)
    np.testing.assert_allclose(blocks, dense, rtol=1e-9, atol=1e-12)


def test_blockwise_gradient_memory_is_blockwise():
    # The compiled value-and-gradient program of a blockwise solve holds O((n + m) · batch)
    # temporaries, not the n × m kernel (its derivative recomputes blocks instead of storing
    # them): at n = m = 512, batch 32, far below one n × m float32 array.
    n = 512
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 2), jnp.float32)
    y = x[::-1] + 0.5
    # transport_cost, not reg_cost: its gradient runs the implicit adjoint (CG on the blocks).
    loss = lambda x: (
        js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.5, batch_size=32), throw=False).transport_cost
    )
    compiled = jax.jit(jax.value_and_grad(loss)).lower(x).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 0.25 * n * n * 4
