"""Learned solvers: FlexibleCG against CG and exact inverses, the DCDM loss against its closed
form, training decreases the loss, and a trained network's solve against jnp.linalg.solve."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsolve as js

SHAPE = (8, 8)
A = js.linear.Stencil5.poisson(SHAPE)
DARCY = js.linear.Stencil5.darcy(jnp.exp(jax.random.normal(jax.random.PRNGKey(3), SHAPE)))


@eqx.filter_jit
def _solve(A, b, solver):
    sol = js.linear.solve(A, b, solver, throw=False)
    return sol.value, sol.stats["num_steps"], sol.result


def _rhs(seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), SHAPE)


@pytest.mark.parametrize("op", [A, DARCY], ids=["poisson", "darcy"])
def test_exact_inverse_direction_one_step(op):
    inv = jnp.linalg.inv(op.as_matrix())
    direction = lambda r: (inv @ r.ravel()).reshape(r.shape)  # noqa: E731
    x, steps, result = _solve(op, _rhs(), js.linear.FlexibleCG(direction, tol=1e-10))
    assert int(steps) == 1 and result == js.RESULTS.successful
    np.testing.assert_allclose(x, jnp.linalg.solve(op.as_matrix(), _rhs().ravel()).reshape(SHAPE))


@pytest.mark.parametrize("num_orth", [1, 2])
@pytest.mark.parametrize("op", [A, DARCY], ids=["poisson", "darcy"])
def test_identity_direction_is_cg(op, num_orth):
    b = _rhs(1)
    x_cg, n_cg, _ = _solve(op, b, js.linear.CG(tol=1e-8))
    x_f, n_f, res = _solve(op, b, js.linear.FlexibleCG(tol=1e-8, num_orth=num_orth))
    assert res == js.RESULTS.successful
    # Same iterates in exact arithmetic; on the ill-conditioned Darcy matrix rounding may move
    # the stopping step by one.
    assert abs(int(n_f) - int(n_cg)) <= (0 if op is A else 1)
    np.testing.assert_allclose(x_f, x_cg, atol=1e-7)


def test_jacobi_direction_is_pcg():
    b = _rhs(2)
    jac = js.linear.JacobiPreconditioner()
    _, n_pcg, _ = _solve(DARCY, b, js.linear.CG(tol=1e-8, preconditioner=jac))
    x, n_f, _ = _solve(DARCY, b, js.linear.FlexibleCG(jac, tol=1e-8))
    assert abs(int(n_f) - int(n_pcg)) <= 1
    np.testing.assert_allclose(
        x, jnp.linalg.solve(DARCY.as_matrix(), b.ravel()).reshape(SHAPE), atol=1e-6
    )


def test_dcdm_loss_closed_form():
    M = jnp.array([[2.0, -1.0], [-1.0, 3.0]])
    r = jnp.array([3.0, 4.0])
    net = lambda v: jnp.array([v[0], 2 * v[1]])  # noqa: E731
    # y = net(r/5) = (0.6, 1.6); Ay = (-0.4, 4.2); rᵀAy/5 = (−1.2 + 16.8)/5 = 3.12
    ay = np.array([-0.4, 4.2])
    c = 3.12 / (ay @ ay)
    expected = np.sum((np.array([0.6, 0.8]) - c * ay) ** 2)
    np.testing.assert_allclose(js.linear.dcdm_loss(net, M, r), expected, rtol=1e-12)
    # a batch gives the mean; the scale of the net's output does not matter
    batch = jnp.stack([r, jnp.array([1.0, 0.0])])
    l2 = js.linear.dcdm_loss(lambda v: 7 * net(v), lambda v: M @ v, jnp.array([1.0, 0.0]))
    ref = (expected + l2) / 2
    op = js.linear.Stencil5.poisson((1, 2))  # [[4, -1], [-1, 4]]: check batching on an operator
    assert js.linear.dcdm_loss(net, op, batch[:, None, :]).shape == ()
    np.testing.assert_allclose(
        jnp.mean(jnp.stack([js.linear.dcdm_loss(net, M, x) for x in batch])), ref, rtol=1e-12
    )


def _sample(key):
    keys = jax.random.split(key, 8)
    return A, jax.vmap(lambda k: js.linear.low_frequency_rhs(k, SHAPE, 1.0))(keys)


NET = js.linear.GridUNet(jax.random.PRNGKey(0), width=4, levels=2)


@pytest.fixture(scope="module")
def trained():
    net, losses = js.linear.train_dcdm(NET, _sample, optax.adam(1e-2), 100, jax.random.PRNGKey(1))
    return net, losses


def test_training_decreases_loss(trained):
    net, losses = trained
    assert losses.shape == (100,) and bool(jnp.all(jnp.isfinite(losses)))
    _, batch = _sample(jax.random.PRNGKey(99))  # held-out right-hand sides
    loss = eqx.filter_jit(js.linear.dcdm_loss)
    before, after = loss(NET, A, batch), loss(net, A, batch)
    assert after < 0.5 * before


def test_trained_solver_matches_dense(trained):
    # Trained on 8×8; solved on a held-out 16×16 grid with a held-out right-hand side.
    net, _ = trained
    big = js.linear.Stencil5.poisson((16, 16))
    b = jax.random.normal(jax.random.PRNGKey(5), (16, 16))
    x, steps, result = _solve(big, b, js.linear.FlexibleCG(net, tol=1e-10))
    assert result == js.RESULTS.successful
    np.testing.assert_allclose(
        x, jnp.linalg.solve(big.as_matrix(), b.ravel()).reshape(16, 16), atol=1e-8
    )
    _, n_cg, _ = _solve(big, b, js.linear.CG(tol=1e-10))
    assert int(steps) < int(n_cg)


def test_gradient_through_flexible_cg():
    # The adjoint solve reuses FlexibleCG; a cheap nonlinear direction keeps compilation short.
    direction = lambda r: r * (1 + 0.1 * jnp.tanh(r))  # noqa: E731
    b = _rhs(6)

    def loss(s, solver):
        op = js.linear.Stencil5.poisson(SHAPE, shift=s)
        return jnp.sum(js.linear.solve(op, b, solver).value ** 2)

    ref = jax.grad(
        lambda s: jnp.sum(jnp.linalg.solve(A.as_matrix() + s * jnp.eye(64), b.ravel()) ** 2)
    )
    g = jax.grad(loss)(0.3, js.linear.FlexibleCG(direction, tol=1e-10))
    np.testing.assert_allclose(g, ref(0.3), rtol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="num_orth"):
        js.linear.FlexibleCG(num_orth=0)
    with pytest.raises(ValueError, match="divisible"):
        NET(jnp.ones((6, 8)))
    with pytest.raises(TypeError, match="preconditioner"):
        js.linear.FlexibleCG(direction=3)
    # a non-SPD operator: not_positive_definite reported, not NaN
    M = jnp.array([[1.0, 0.0], [0.0, -1.0]])
    _, _, result = _solve(M, jnp.array([0.0, 1.0]), js.linear.FlexibleCG(tol=1e-8))
    assert result == js.RESULTS.not_positive_definite
