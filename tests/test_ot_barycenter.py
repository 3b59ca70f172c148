"""Fixed-support entropic barycenters against POT's `ot.bregman.barycenter` (1-D and 2-D
histograms), implicit derivatives against finite differences, float32, vmap, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

import jaxsolve as js

T = np.linspace(0, 1, 30)
C1 = (T[:, None] - T[None, :]) ** 2


def _bumps(centres, widths):
    B = np.stack([np.exp(-((T - c) ** 2) / s) for c, s in zip(centres, widths)])
    return B / B.sum(1, keepdims=True)


B1 = _bumps([0.2, 0.7, 0.5], [0.003, 0.01, 0.05])
W1 = np.array([0.3, 0.5, 0.2])
TIGHT = js.ot.IterativeBregman(1e-11)


@jax.jit
def _bary(C, B, w, eps):
    return js.ot.barycenter(js.ot.Geometry(C, eps), B, w, solver=TIGHT, max_steps=20_000)


def test_1d_histograms_match_pot():
    for eps in (0.01, 0.003):
        ref = pot.bregman.barycenter(
            B1.T, C1, eps, W1, method="sinkhorn_log", numItermax=100_000, stopThr=1e-14
        )
        sol = _bary(C1, B1, W1, eps)
        assert sol.result == js.RESULTS.successful
        np.testing.assert_allclose(sol.barycenter, ref, atol=1e-8 * ref.max())


def test_2d_histograms_match_pot():
    g = np.linspace(0, 1, 6)
    X = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    C = np.sum((X[:, None] - X[None, :]) ** 2, -1)
    rng = np.random.default_rng(0)
    B = rng.uniform(0.1, 1.0, (2, 36))
    B /= B.sum(1, keepdims=True)
    w = np.array([0.4, 0.6])
    ref = pot.bregman.barycenter(B.T, C, 0.05, w, method="sinkhorn_log", stopThr=1e-14)
    # on the point cloud geometry, blockwise: the same barycenter
    geom = js.ot.PointCloud(jnp.asarray(X), jnp.asarray(X), epsilon=0.05, batch_size=16)
    sol = js.ot.barycenter(geom, B, w, solver=TIGHT)
    np.testing.assert_allclose(sol.barycenter, ref, atol=1e-8 * ref.max())


def _functional(B, w, eps):
    # a smooth functional of the barycenter
    return jnp.sum(_bary(C1, B, w, eps).barycenter * T**3)


# Its value and its derivatives in the measures, the weights and epsilon: one program (for the
# finite differences too, and the float64 gradient of test_float32_defaults_and_gradient).
_value_and_grads = jax.jit(jax.value_and_grad(_functional, argnums=(0, 1, 2)))


def test_derivatives_vs_finite_differences():
    # the functional differentiated in the measures, the weights and epsilon (the cost matrix
    # enters like epsilon)
    f = lambda B, w, eps: _value_and_grads(B, w, eps)[0]
    eps = 0.01
    gB, gw, geps = _value_and_grads(B1, W1, eps)[1]
    h = 1e-6
    E = np.zeros_like(B1)
    E[1, 12], E[1, 13] = h, -h  # mass-preserving
    fd = (f(B1 + E, W1, eps) - f(B1 - E, W1, eps)) / (2 * h)
    np.testing.assert_allclose(jnp.sum(gB * E) / h, fd, rtol=1e-5)
    dw = np.array([h, -h, 0.0])
    fd = (f(B1, W1 + dw, eps) - f(B1, W1 - dw, eps)) / (2 * h)
    np.testing.assert_allclose(jnp.dot(gw, dw) / h, fd, rtol=1e-5)
    fd = (f(B1, W1, eps + h) - f(B1, W1, eps - h)) / (2 * h)
    np.testing.assert_allclose(geps, fd, rtol=1e-5)


def test_float32_defaults_and_gradient():
    C, B, w = (jnp.asarray(x, jnp.float32) for x in (C1, B1, W1))
    ref = np.asarray(_bary(C1, B1, W1, 0.003).barycenter)

    def loss(B):
        sol = js.ot.barycenter(C, B, w, epsilon=0.003)
        return jnp.sum(sol.barycenter * T**3), sol

    # One program for the solution and the gradient.
    g32, sol = jax.jit(jax.grad(loss, has_aux=True))(B)
    assert sol.barycenter.dtype == jnp.float32 and sol.result == js.RESULTS.successful
    np.testing.assert_allclose(sol.barycenter, ref, atol=1e-3 * ref.max())
    g64 = _value_and_grads(B1, W1, 0.003)[1][0]
    assert bool(jnp.all(jnp.isfinite(g32)))
    # compare along mass-preserving directions (the gradient's normal part is gauge)
    d = np.zeros_like(B1)
    d[0, 5], d[0, 8], d[2, 10], d[2, 20] = 1, -1, 1, -1
    np.testing.assert_allclose(jnp.sum(g32 * d), jnp.sum(g64 * d), rtol=2e-2)


def test_vmap_one_bad_member_and_bad_input():
    Bs = np.stack([B1, B1 * np.array([[1.0], [2.0], [1.0]]), B1[::-1]])  # middle: unequal mass
    f = jax.jit(
        jax.vmap(lambda B: js.ot.barycenter(C1, B, W1, epsilon=0.01, throw=False, solver=TIGHT))
    )
    sols = f(Bs)
    assert list(np.asarray(sols.result._value)) == [
        js.RESULTS.successful._value,
        js.RESULTS.invalid_input._value,
        js.RESULTS.successful._value,
    ]
    np.testing.assert_allclose(sols.barycenter[0], _bary(C1, B1, W1, 0.01).barycenter, rtol=1e-8)
    with pytest.raises(Exception, match="invalid"):
        js.ot.barycenter(C1, B1, np.array([0.5, 0.5, 0.5]), epsilon=0.01)
    with pytest.raises(ValueError, match="shape"):
        js.ot.barycenter(C1, B1[:, :5], epsilon=0.01)
    with pytest.raises(ValueError, match="carries its own"):
        js.ot.barycenter(js.ot.Geometry(C1), B1, epsilon=0.1)
    with pytest.raises(TypeError, match="IterativeBregman"):
        js.ot.barycenter(C1, B1, solver=js.ot.Sinkhorn())
