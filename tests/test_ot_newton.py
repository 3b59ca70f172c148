"""Sinkhorn–Newton–Sparse: same solution and same (implicit) derivatives as Sinkhorn, tight
marginal errors at small epsilon, few iterations, vmap, safe fallback, bad inputs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsolve as js

N, M = 40, 30


def _problem(seed=0):
    kx, ky, ka = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.uniform(kx, (N, 2))
    y = jax.random.uniform(ky, (M, 2))
    a = jax.random.uniform(ka, (N,), minval=0.5, maxval=1.5)
    return x, y, a / a.sum(), jnp.full((M,), 1.0 / M)


SNS = js.ot.SparseNewton(tol=1e-12, max_steps=2200)
SINK = js.ot.Sinkhorn(tol=1e-12, max_steps=50_000)


@jax.jit
def _solve_both(x, y, a, b):
    geom = js.ot.PointCloud(x, y, epsilon=2e-3)
    s1 = js.ot.solve(geom, a, b, solver=SNS)
    s2 = js.ot.solve(geom, a, b, solver=SINK)
    return s1.plan, s2.plan, s1.f, s2.f, s1.stats, s2.stats


def test_matches_sinkhorn_at_small_epsilon_with_few_iterations():
    x, y, a, b = _problem()
    p1, p2, f1, f2, st1, st2 = _solve_both(x, y, a, b)
    assert float(st1["marginal_error"]) < 1e-12
    np.testing.assert_allclose(p1, p2, atol=1e-11)
    np.testing.assert_allclose(p1.sum(1), a, atol=1e-12)
    np.testing.assert_allclose(f1, f2, atol=1e-9)
    # A few Newton steps finished what the loose warm-up started, in fewer iterations in all
    # than even the accelerated (Anderson + epsilon scaling) Sinkhorn needs to reach 1e-12.
    assert 0 < int(st1["newton_steps"]) <= 5 and int(st1["cg_steps"]) > 0
    assert int(st1["num_steps"]) == int(st1["sinkhorn_steps"]) + int(st1["newton_steps"])
    assert int(st1["num_steps"]) < int(st2["num_steps"])


def _loss(x, y, a, b, solver):
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=5e-3), a, b, solver=solver)
    w = jnp.arange(M, dtype=x.dtype)
    return sol.reg_cost + jnp.sum(sol.plan * w[None, :]) + jnp.sum(sol.f * a)


_grad = jax.jit(jax.grad(_loss, argnums=(0, 2)), static_argnums=4)


def test_derivatives_agree_with_sinkhorn():
    x, y, a, b = _problem(1)
    gx1, ga1 = _grad(x, y, a, b, SNS)
    gx2, ga2 = _grad(x, y, a, b, SINK)
    np.testing.assert_allclose(gx1, gx2, atol=1e-8)
    np.testing.assert_allclose(ga1, ga2, atol=1e-8)


def test_reaches_1e10_where_sinkhorn_stalls():
    # At this epsilon plain Sinkhorn (no annealing, no acceleration) given ten times SNS's
    # iteration count is still far from 1e-10.
    x, y, a, b = _problem(2)
    geom = js.ot.PointCloud(x, y, epsilon=5e-4)
    sol = js.ot.solve(geom, a, b, solver=js.ot.SparseNewton(tol=1e-10, max_steps=2300))
    assert float(sol.stats["marginal_error"]) < 1e-10
    budget = 10 * int(sol.stats["num_steps"])
    sk = js.ot.solve(
        geom,
        a,
        b,
        solver=js.ot.Sinkhorn(tol=1e-10, max_steps=budget, epsilon_scaling=None, acceleration=None),
        throw=False,
    )
    assert float(sk.stats["marginal_error"]) > 1e-10


def test_never_worse_than_warm_start():
    # With a 20-sweep warm-up and a single, crippled Newton step (k = 1, one CG iteration) the
    # solver cannot converge, but it returns a point whose marginal error is no worse than its
    # warm-up's: `js.ot.Sinkhorn` with the same sweeps, whose epsilon scaling has to jump to
    # the target epsilon in one stage to get there within three quarters of the budget.
    x, y, a, b = _problem(3)
    geom = js.ot.PointCloud(x, y, epsilon=1e-3)
    decay = 1e-3 / float(eqx.filter_jit(lambda g: jnp.mean(g.cost_matrix))(geom))
    scaling = js.ot.EpsilonScaling(decay=decay)
    warm = js.ot.Sinkhorn(tol=1e-14, max_steps=20, epsilon_scaling=scaling)
    warm = js.ot.solve(geom, a, b, solver=warm, throw=False)
    kw = dict(tol=1e-14, max_steps=21, warmup=20, warmup_tol=1e-14, k=1, cg_max_steps=1)
    one = js.ot.solve(geom, a, b, solver=js.ot.SparseNewton(**kw), throw=False)
    assert int(one.stats["sinkhorn_steps"]) + int(one.stats["newton_steps"]) == 21
    assert int(one.stats["num_steps"]) == 21  # max_steps counts every iteration
    assert int(one.stats["cg_steps"]) <= 1
    assert one.result == js.RESULTS.max_steps_reached
    assert float(warm.stats["marginal_error"]) > 1e-3  # far from converged: a real test
    assert float(one.stats["marginal_error"]) <= float(warm.stats["marginal_error"])
    # jitted: eagerly, each of its ops would be a compilation of its own
    true_err = eqx.filter_jit(lambda s: s.problem.marginal_error(s.f, s.g))(one)
    np.testing.assert_allclose(one.stats["marginal_error"], true_err)


def test_warmup_tighter_than_tol_still_ends_at_the_target_epsilon():
    # The warm-up's epsilon scaling starts at the mean cost, where Sinkhorn converges at once:
    # that error is not the problem's, and must neither end the solve nor the warm-up.
    x, y, a, b = _problem(4)
    geom = js.ot.PointCloud(x, y, epsilon=2e-3)
    sns = js.ot.SparseNewton(tol=1e-8, warmup=200, warmup_tol=1e-12)
    sol = js.ot.solve(geom, a, b, solver=sns)
    err = jax.jit(lambda p: jnp.sum(jnp.abs(p.sum(1) - a)) + jnp.sum(jnp.abs(p.sum(0) - b)))(
        sol.plan
    )  # one compilation, not one per eager op
    assert float(err) <= 1e-8
    assert int(sol.stats["sinkhorn_steps"]) > 50


def test_vmap_equals_loop():
    xs = jnp.stack([_problem(s)[0] for s in range(3)])
    _, y, a, b = _problem(0)

    def solve(x):
        sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=5e-3), a, b, solver=SNS, throw=False)
        return sol.plan, sol.stats["newton_steps"]

    plans, steps = jax.jit(jax.vmap(solve))(xs)
    for i in range(3):
        # js.ot.solve's own jitted program (test_bad_inputs' one: the same solver and shapes)
        np.testing.assert_allclose(plans[i], solve(xs[i])[0], atol=1e-12)


def test_bad_inputs():
    with pytest.raises(ValueError, match="k"):
        js.ot.SparseNewton(k=0)
    with pytest.raises(ValueError, match="warmup"):
        js.ot.SparseNewton(warmup=-1)
    with pytest.raises(ValueError, match="tol"):
        js.ot.SparseNewton(tol=0.0)
    with pytest.raises(ValueError, match="warmup_tol"):
        js.ot.SparseNewton(warmup_tol=-1.0)
    with pytest.raises(ValueError, match="warmup_decay"):
        js.ot.SparseNewton(warmup_decay=1.0)
    x, y, a, b = _problem()
    geom = js.ot.PointCloud(x, y, epsilon=1e-2)
    # SNS: the program test_vmap_equals_loop compiles (a new epsilon and tau are new data)
    sol = js.ot.solve(geom, a.at[0].set(-0.1), b, solver=SNS, throw=False)
    assert sol.result == js.RESULTS.invalid_input
    sol = js.ot.solve(geom, a, b, tau_a=0.5, solver=SNS, throw=False)
    assert sol.result == js.RESULTS.invalid_input  # balanced problems only
