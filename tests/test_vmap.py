"""vmap over problems equals a Python loop; one failing problem does not poison the others."""

import jax
import jax.numpy as jnp

import jaxsolve as js

X = jax.random.normal(jax.random.PRNGKey(0), (25, 3))


def ridge(w, args):
    t, lam = args
    return 0.5 * jnp.sum((X @ w - t) ** 2) + 0.5 * lam * jnp.sum(w**2)


def solve(t, lam):
    return js.minimise(ridge, jnp.zeros(3), (t, lam), tol=1e-10, throw=False)


TS = jax.random.normal(jax.random.PRNGKey(1), (4, 25))
LAMS = jnp.array([0.1, 1.0, 3.0, 10.0])


def test_vmap_over_data_and_hyperparameters_equals_loop():
    batched = jax.vmap(solve)(TS, LAMS)
    for i in range(4):
        single = solve(TS[i], LAMS[i])
        assert jnp.allclose(batched.value[i], single.value, atol=1e-10)
        assert int(batched.stats["num_steps"][i]) == int(single.stats["num_steps"])
        w = jnp.linalg.solve(X.T @ X + LAMS[i] * jnp.eye(3), X.T @ TS[i])
        assert jnp.allclose(batched.value[i], w, atol=1e-8)
    assert jnp.all(batched.result == js.RESULTS.successful)


def test_vmap_of_gradients_equals_loop():
    outer = lambda lam, t: jnp.sum(solve(t, lam).value ** 2)
    g = jax.vmap(jax.grad(outer))(LAMS, TS)
    for i in range(4):
        closed = lambda lam: jnp.sum(jnp.linalg.solve(X.T @ X + lam * jnp.eye(3), X.T @ TS[i]) ** 2)
        assert jnp.allclose(g[i], jax.grad(closed)(LAMS[i]), rtol=1e-7)


def test_one_failed_problem_does_not_poison_the_others():
    ts = TS.at[2, 0].set(jnp.nan)
    batched = jax.vmap(solve)(ts, LAMS)
    ok = batched.result == js.RESULTS.successful  # one bool per problem
    assert (batched.result == js.RESULTS.nonfinite)[2] and not ok[2]
    for i in (0, 1, 3):
        assert ok[i]
        w = jnp.linalg.solve(X.T @ X + LAMS[i] * jnp.eye(3), X.T @ TS[i])
        assert jnp.allclose(batched.value[i], w, atol=1e-8)


def test_vmap_fixed_point_per_problem_step_counts():
    T = lambda y, c: c * jnp.cos(y)
    cs = jnp.array([0.1, 0.5, 0.9])
    out = jax.vmap(
        lambda c: js.fixed_point(
            T, jnp.zeros(2), c, solver=js.FixedPointIteration(), tol=1e-12, throw=False
        )
    )(cs)
    loop = [
        js.fixed_point(T, jnp.zeros(2), c, solver=js.FixedPointIteration(), tol=1e-12) for c in cs
    ]
    assert [int(s) for s in out.stats["num_steps"]] == [int(s.stats["num_steps"]) for s in loop]
    assert out.stats["num_steps"][0] < out.stats["num_steps"][2]
