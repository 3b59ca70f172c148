"""jax.sharding as the distributed engine: point clouds sharded across a device mesh give the
single-device answer (values and gradients) with per-device memory that falls with the number
of devices; batches of linear systems and of inner problems run data-parallel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jaxsolve as js

N, M, D = 256, 192, 3


def _mesh(k):
    return Mesh(np.array(jax.devices()[:k]), ("d",))


def _clouds():
    x = jax.random.normal(jax.random.PRNGKey(0), (N, D))
    y = jax.random.normal(jax.random.PRNGKey(1), (M, D)) + 0.5
    return x, y


def _loss(batch_size):
    def loss(x, y):
        geom = js.ot.PointCloud(x, y, epsilon=0.1, batch_size=batch_size)
        sol = js.ot.solve(geom, solver=js.ot.Sinkhorn(tol=1e-7), throw=False)
        return sol.reg_cost, (sol.f, sol.g, sol.result == js.RESULTS.successful)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


@pytest.mark.parametrize("batch_size", [None, 64])
def test_sharded_sinkhorn_equals_single_device(batch_size):
    x, y = _clouds()
    fn = _loss(batch_size)
    (cost1, (f1, g1, ok1)), grad1 = fn(x, y)
    assert ok1
    for k in (2, 8):
        mesh = _mesh(k)
        xs = jax.device_put(x, NamedSharding(mesh, P("d", None)))
        ys = jax.device_put(y, NamedSharding(mesh, P("d", None)))
        (cost, (f, g, ok)), grad = fn(xs, ys)
        assert ok
        assert jnp.allclose(cost, cost1, rtol=1e-6)
        assert jnp.allclose(f, f1, atol=1e-6) and jnp.allclose(g, g1, atol=1e-6)
        assert jnp.allclose(grad, grad1, atol=1e-7)


def _temp_bytes(fn, *args):
    return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_per_device_memory_falls_with_the_number_of_devices():
    x, y = _clouds()
    fn = _loss(None)
    one = _temp_bytes(fn, x, y)
    mesh = _mesh(8)
    xs = jax.device_put(x, NamedSharding(mesh, P("d", None)))
    eight = _temp_bytes(fn, xs, y)
    # the n × m kernel and its transpose dominate: they are split over the devices
    assert eight < 0.35 * one, (one, eight)


def test_batches_of_linear_systems_and_inner_problems_are_data_parallel():
    k = 8
    A = jax.random.normal(jax.random.PRNGKey(2), (k * 2, 6, 6))
    A = jnp.einsum("bij,bkj->bik", A, A) + 6 * jnp.eye(6)
    b = jax.random.normal(jax.random.PRNGKey(3), (k * 2, 6))
    lin = jax.jit(jax.vmap(lambda A, b: js.linear.solve(A, b, throw=False).value))
    fit = jax.jit(
        jax.vmap(
            lambda A, b: (
                js.minimise(
                    lambda w, d: 0.5 * w @ d[0] @ w - d[1] @ w, jnp.zeros(6), (A, b), throw=False
                ).value
            )
        )
    )
    sharding = NamedSharding(_mesh(k), P("d"))
    As, bs = jax.device_put(A, sharding), jax.device_put(b, sharding)
    exact = jnp.linalg.solve(A, b[..., None])[..., 0]
    for fn in (lin, fit):
        out = fn(As, bs)
        assert out.sharding.is_equivalent_to(NamedSharding(_mesh(k), P("d", None)), 2)
        assert jnp.allclose(out, exact, atol=1e-4)
        assert jnp.allclose(out, fn(A, b), atol=1e-6)
