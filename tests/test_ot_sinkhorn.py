"""Sinkhorn against POT and closed forms: plans, costs, unbalanced, zero weights, float32."""

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import norm

import jaxsolve as js

TIGHT = js.ot.Sinkhorn(tol=1e-12, max_steps=50_000)


def _clouds(n=25, m=18, seed=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.normal(k1, (n, 2))
    y = jax.random.normal(k2, (m, 2)) + 1.0
    a = jax.random.uniform(k3, (n,)) + 0.2
    b = jax.random.uniform(k4, (m,)) + 0.2
    return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("mode", ["kernel", "log", "blocks"])
def test_plan_matches_pot_sinkhorn_log(mode):
    x, y, a, b = _clouds()
    eps = 0.2
    solver = js.ot.Sinkhorn(tol=1e-12, max_steps=50_000, kernel=mode != "log")
    geom = js.ot.PointCloud(x, y, epsilon=eps, batch_size=7 if mode == "blocks" else None)
    sol = js.ot.solve(geom, a, b, solver=solver)
    C = np.asarray(cdist(np.asarray(x), np.asarray(y), "sqeuclidean"))
    P = pot.sinkhorn(
        np.asarray(a),
        np.asarray(b),
        C,
        eps,
        method="sinkhorn_log",
        stopThr=1e-15,
        numItermax=100_000,
    )
    np.testing.assert_allclose(np.asarray(sol.plan), P, atol=1e-8, rtol=0)
    assert sol.result == js.RESULTS.successful
    assert sol.stats["marginal_error"] <= 1e-12
    np.testing.assert_allclose(sol.transport_cost, np.sum(P * C), rtol=1e-8)


def test_unbalanced_matches_pot():
    x, y, a, b = _clouds()
    eps, tau = 0.2, 0.7
    rho = eps * tau / (1 - tau)
    sol = js.ot.solve(
        js.ot.PointCloud(x, y, epsilon=eps), 2 * a, b, tau_a=tau, tau_b=tau, solver=TIGHT
    )
    C = cdist(np.asarray(x), np.asarray(y), "sqeuclidean")
    P = pot.unbalanced.sinkhorn_unbalanced(
        2 * np.asarray(a),
        np.asarray(b),
        C,
        eps,
        rho,
        reg_type="kl",
        stopThr=1e-15,
        numItermax=100_000,
    )
    np.testing.assert_allclose(np.asarray(sol.plan), P, atol=1e-9, rtol=0)
    # reg_cost (the dual) equals the primal objective at the solution
    Pj = np.asarray(sol.plan)

    def kl(p, q):
        return np.sum(p * np.log(p / q) - p + q)

    primal = (
        np.sum(Pj * C)
        + eps * kl(Pj, np.outer(2 * a, b))
        + rho * kl(Pj.sum(1), 2 * a)
        + rho * kl(Pj.sum(0), b)
    )
    np.testing.assert_allclose(sol.reg_cost, primal, rtol=1e-9)


def test_reg_cost_is_primal_value_balanced():
    x, y, a, b = _clouds()
    eps = 0.2
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=eps), a, b, solver=TIGHT)
    P = np.asarray(sol.plan)
    C = cdist(np.asarray(x), np.asarray(y), "sqeuclidean")
    ab = np.outer(a, b)
    primal = np.sum(P * C) + eps * np.sum(P * np.log(P / ab) - P + ab)
    np.testing.assert_allclose(sol.reg_cost, primal, rtol=1e-10)


def test_one_dimensional_and_gaussian_closed_forms():
    # Quantiles of N(0, 1) and N(2, 1.5^2): W2^2 = (2 - 0)^2 + (1.5 - 1)^2 = 4.25 in the limit;
    # for the discrete clouds the monotone matching is optimal: mean((x_(i) - y_(i))^2).
    n = 40
    q = norm.ppf((np.arange(n) + 0.5) / n)
    x = jnp.asarray(q)[::-1]  # unsorted on purpose
    y = jnp.asarray(2.0 + 1.5 * q)
    solver = js.ot.Sinkhorn(tol=1e-8, max_steps=50_000)
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=1e-3), solver=solver)
    exact = np.mean((np.sort(np.asarray(x)) - np.sort(np.asarray(y))) ** 2)
    assert abs(sol.transport_cost - exact) < 1e-4
    assert abs(sol.transport_cost - 4.25) < 0.1
    # the plan is (nearly) the monotone permutation
    P = np.asarray(sol.plan) * n
    assert np.all(np.argmax(P, axis=1) == np.argsort(np.argsort(np.asarray(x))))


def test_zero_weight_points_and_rectangular():
    x, y, a, b = _clouds(12, 9)
    a = a.at[jnp.array([0, 5])].set(0.0)
    a = a / a.sum()
    b = b.at[3].set(0.0)
    b = b / b.sum()
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.2), a, b, solver=TIGHT)
    keep_a = np.asarray(a) > 0
    keep_b = np.asarray(b) > 0
    sub = js.ot.solve(
        js.ot.PointCloud(x[keep_a], y[keep_b], epsilon=0.2), a[keep_a], b[keep_b], solver=TIGHT
    )
    P = np.asarray(sol.plan)
    assert np.all(P[~keep_a] == 0) and np.all(P[:, ~keep_b] == 0)
    np.testing.assert_allclose(P[np.ix_(keep_a, keep_b)], np.asarray(sub.plan), atol=1e-12)
    np.testing.assert_allclose(sol.reg_cost, sub.reg_cost, rtol=1e-10)
    assert jnp.all(jnp.isfinite(sol.f)) and jnp.all(jnp.isfinite(sol.g))


def test_float32_small_epsilon_stays_finite_and_converges():
    x, y, _, _ = _clouds(60, 50)
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    sol = js.ot.solve(
        js.ot.PointCloud(x, y, epsilon=1e-3), solver=js.ot.Sinkhorn(tol=1e-4), throw=False
    )
    assert sol.f.dtype == jnp.float32
    assert sol.result == js.RESULTS.successful
    assert jnp.all(jnp.isfinite(sol.plan))
    assert (
        float(jnp.abs(sol.plan.sum(0) - 1 / 50).sum() + jnp.abs(sol.plan.sum(1) - 1 / 60).sum())
        < 2e-4
    )


@pytest.mark.parametrize(
    "cost, metric",
    [(js.ot.PNorm(1.0), "cityblock"), (js.ot.PNorm(2.0), "euclidean"), (js.ot.Cosine(), "cosine")],
)
def test_costs_against_scipy(cost, metric):
    x, y, _, _ = _clouds(7, 5)
    np.testing.assert_allclose(
        cost.all_pairs(x, y), cdist(np.asarray(x), np.asarray(y), metric), atol=1e-12
    )


def test_relative_epsilon_and_blockwise_apply():
    x, y, a, b = _clouds()
    C = js.ot.PointCloud(x, y).cost_matrix
    geom = js.ot.Geometry(C, epsilon=0.1, relative_epsilon="mean")
    np.testing.assert_allclose(geom.epsilon, 0.1 * np.mean(np.asarray(C)), rtol=1e-12)
    blocks = js.ot.PointCloud(x, y, epsilon=0.1, relative_epsilon="mean", batch_size=4)
    np.testing.assert_allclose(blocks.epsilon, geom.epsilon, rtol=1e-12)
    sol = js.ot.solve(blocks, a, b)
    V = jnp.ones((18, 3)) * jnp.arange(3.0)
    np.testing.assert_allclose(sol.apply(V), sol.plan @ V, rtol=1e-10)
    np.testing.assert_allclose(
        sol.apply(jnp.arange(25.0), axis=0), sol.plan.T @ jnp.arange(25.0), rtol=1e-10
    )
