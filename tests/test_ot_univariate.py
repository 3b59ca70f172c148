"""Exact 1-D and sliced OT against POT (same projections), finite differences, vmap, float32
and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

import jaxsolve as js

w1d = jax.jit(js.ot.wasserstein_1d, static_argnames=("p", "throw", "return_result"))


def _data(n, m, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=n), rng.normal(size=m) * 2 + 1
    a, b = rng.uniform(0.1, 1, n), rng.uniform(0.1, 1, m)
    return [x.astype(dtype) for x in (u, v, a / a.sum(), b / b.sum())]


@pytest.mark.parametrize("p", [1, 2, 3])
def test_wasserstein_1d_matches_pot(p):
    u, v, a, b = _data(40, 25, p)
    ref = pot.wasserstein_1d(u, v, a, b, p=p)
    np.testing.assert_allclose(w1d(u, v, a, b, p=p), ref, rtol=1e-10)
    # and POT's exact network-simplex solver on the full cost matrix
    exact = pot.emd2(a, b, np.abs(u[:, None] - v[None, :]) ** p)
    np.testing.assert_allclose(w1d(u, v, a, b, p=p), exact, rtol=1e-8)


def test_wasserstein_1d_gradients_vs_finite_differences():
    u, v, a, b = _data(12, 9, 7)
    f = jax.jit(lambda u, a: js.ot.wasserstein_1d(u, v, a, b, p=2))
    gu, ga = jax.jit(jax.grad(f, argnums=(0, 1)))(u, a)
    h = 1e-6
    for i in (0, 5, 11):
        e = np.eye(12)[i] * h
        np.testing.assert_allclose(gu[i], (f(u + e, a) - f(u - e, a)) / (2 * h), rtol=1e-5)
        # weights: a perturbation along a direction of zero total mass (normalisation)
        d = (np.eye(12)[i] - np.eye(12)[(i + 1) % 12]) * h
        fd = (f(u, a + d) - f(u, a - d)) / (2 * h)
        np.testing.assert_allclose(jnp.dot(ga, d / h), fd, rtol=1e-5, atol=1e-9)


def test_sliced_matches_pot_with_the_same_projections_and_vmaps():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(20, 3)) + 0.5
    a, b = rng.uniform(0.2, 1, 30), rng.uniform(0.2, 1, 20)
    a, b = a / a.sum(), b / b.sum()
    theta = rng.normal(size=(3, 16))
    theta /= np.linalg.norm(theta, axis=0)
    sw = jax.jit(lambda x, y: js.ot.sliced_wasserstein(x, y, a, b, projections=theta))
    ref = pot.sliced_wasserstein_distance(x, y, a, b, projections=theta, p=2) ** 2
    np.testing.assert_allclose(sw(x, y), ref, rtol=1e-10)
    xs = np.stack([x, x + 1.0, x * 2.0])
    batched = jax.vmap(sw, in_axes=(0, None))(xs, y)
    for k in range(3):
        ref_k = pot.sliced_wasserstein_distance(xs[k], y, a, b, projections=theta) ** 2
        np.testing.assert_allclose(batched[k], ref_k, rtol=1e-10)
    # gradient vs finite differences
    g = jax.jit(jax.grad(sw))(x, y)
    e = np.zeros_like(x)
    e[3, 1] = 1e-6
    np.testing.assert_allclose(g[3, 1], (sw(x + e, y) - sw(x - e, y)) / 2e-6, rtol=1e-5)


def test_float32_matches_float64_and_random_directions():
    u, v, a, b = _data(200, 150, 3)
    c64 = w1d(u, v, a, b, p=2)
    args32 = [jnp.asarray(x, jnp.float32) for x in (u, v, a, b)]
    c32 = w1d(*args32, p=2)
    assert c32.dtype == jnp.float32
    np.testing.assert_allclose(c32, c64, rtol=1e-5)
    grad = jax.jit(jax.grad(js.ot.wasserstein_1d))
    g32 = grad(*args32)
    g64 = grad(u, v, a, b)
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-7)
    # random directions are unit vectors: a translation t costs (θ·t)², E = |t|²/d
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 4), jnp.float32)
    t = jnp.array([1.0, -1.0, 0.5, 0.0], jnp.float32)
    key = jax.random.PRNGKey(2)
    sw = jax.jit(lambda x, t: js.ot.sliced_wasserstein(x, x + t, num_projections=4000, key=key))(
        x, t
    )
    np.testing.assert_allclose(sw, jnp.sum(t**2) / 4, rtol=0.05)


def test_bad_input():
    u = jnp.array([0.0, 1.0])
    with pytest.raises(ValueError, match="at least 1"):
        js.ot.wasserstein_1d(u, u, p=0.5)
    with pytest.raises(ValueError, match="shape"):
        js.ot.wasserstein_1d(jnp.ones((2, 2)), u)
    with pytest.raises(ValueError, match="empty"):
        js.ot.wasserstein_1d(jnp.zeros((0,)), u)
    with pytest.raises(ValueError, match="one weight per point"):
        js.ot.wasserstein_1d(u, u, jnp.ones(3))
    with pytest.raises(TypeError, match="real"):
        js.ot.wasserstein_1d(u.astype(complex), u)
    with pytest.raises(ValueError, match="same dimension"):
        js.ot.sliced_wasserstein(jnp.ones((3, 2)), jnp.ones((3, 3)), projections=jnp.ones((2, 1)))
    with pytest.raises(ValueError, match="needs directions"):
        js.ot.sliced_wasserstein(jnp.ones((3, 2)), jnp.ones((3, 2)))
    # value problems are result codes, also under vmap: one bad member only
    us = jnp.stack([u, u.at[0].set(jnp.nan), u])
    ws = jnp.stack([jnp.ones(2), jnp.ones(2), jnp.array([1.0, -0.5])])
    f = jax.vmap(lambda u, w: w1d(u, u + 1.0, w, throw=False, return_result=True))
    costs, results = f(us, ws)
    assert list(np.asarray(results._value)) == [
        js.RESULTS.successful._value,
        js.RESULTS.nonfinite._value,
        js.RESULTS.invalid_input._value,
    ]
    np.testing.assert_allclose(costs[0], 1.0)
    with pytest.raises(Exception, match="invalid"):
        js.ot.wasserstein_1d(u, u, jnp.array([1.0, -0.5]))
