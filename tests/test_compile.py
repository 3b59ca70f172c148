"""Algorithmic costs: no recompilation on new data; implicit-gradient memory flat in the steps."""

import jax
import jax.numpy as jnp

import jaxsolve as js

TRACES = {"n": 0}


def ridge(w, data):
    TRACES["n"] += 1  # runs once per trace, i.e. per compilation
    X, t, lam = data
    return 0.5 * jnp.sum((X @ w - t) ** 2) + 0.5 * lam * jnp.sum(w**2)


def test_new_data_of_same_shape_compiles_nothing():
    key = jax.random.PRNGKey(0)
    solve = jax.jit(lambda data: js.minimise(ridge, jnp.zeros(3), data, tol=1e-8).value)
    grad = jax.jit(
        jax.grad(lambda lam, X, t: jnp.sum(js.minimise(ridge, jnp.zeros(3), (X, t, lam)).value))
    )
    for i in range(3):
        k1, k2, key = jax.random.split(key, 3)
        X, t = jax.random.normal(k1, (10, 3)), jax.random.normal(k2, (10,))
        solve((X, t, 0.5 + i)).block_until_ready()
        grad(0.5 + i, X, t).block_until_ready()
        if i == 0:
            after_first = (TRACES["n"], solve._cache_size(), grad._cache_size())
    assert (TRACES["n"], solve._cache_size(), grad._cache_size()) == after_first
    assert solve._cache_size() == 1 and grad._cache_size() == 1


def test_unjitted_entry_point_does_not_retrace_on_new_data():
    X = jnp.ones((10, 3))
    js.minimise(ridge, jnp.zeros(3), (X, jnp.zeros(10), 1.0))
    before = TRACES["n"]
    js.minimise(ridge, jnp.zeros(3), (2 * X, jnp.ones(10), 2.0))
    assert TRACES["n"] == before


def _gradient_temp_bytes(adjoint, max_steps):
    X = jax.random.normal(jax.random.PRNGKey(0), (60, 20))
    t = X @ jnp.ones(20)
    f = lambda w, lam: 0.5 * jnp.sum((X @ w - t) ** 2) + 0.5 * lam * jnp.sum(w**2)
    loss = lambda lam: jnp.sum(
        js.minimise(
            f,
            jnp.zeros(20),
            lam,
            solver=js.GradientDescent(1e-3),
            tol=1e-30,
            max_steps=max_steps,
            throw=False,
            adjoint=adjoint,
        ).value
    )
    compiled = jax.jit(jax.grad(loss)).lower(1.0).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_implicit_gradient_memory_is_flat_in_the_number_of_steps():
    implicit = [_gradient_temp_bytes(js.ImplicitAdjoint(), n) for n in (100, 10_000)]
    unrolled = [_gradient_temp_bytes(js.UnrollAdjoint(), n) for n in (100, 10_000)]
    assert implicit[0] == implicit[1]
    assert unrolled[1] > 2 * unrolled[0]  # checkpointing grows with the steps (slowly)
