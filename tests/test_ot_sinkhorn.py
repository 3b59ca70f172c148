"""Sinkhorn against POT and closed forms: plans, costs, unbalanced, zero weights, float32."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import norm

import jaxsolve as js

TIGHT = js.ot.Sinkhorn(tol=1e-12, max_steps=50_000)


# Jitted (one compiled program per shape): eagerly, each random draw and normalisation is a
# compilation of its own.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _clouds(n=25, m=18, seed=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.normal(k1, (n, 2))
    y = jax.random.normal(k2, (m, 2)) + 1.0
    a = jax.random.uniform(k3, (n,)) + 0.2
    b = jax.random.uniform(k4, (m,)) + 0.2
    return x, y, a / a.sum(), b / b.sum()


@eqx.filter_jit
def _outputs(sol):
    """The plan and costs of an `OTSolution`, in one compiled program per problem shape (as
    properties read eagerly, each of their ops would be compiled on its own)."""
    return sol.plan, sol.transport_cost, sol.reg_cost


@pytest.mark.parametrize("mode", ["kernel", "log", "blocks"])
def test_plan_matches_pot_sinkhorn_log(mode):
    x, y, a, b = _clouds()
    eps = 0.2
    solver = js.ot.Sinkhorn(tol=1e-12, max_steps=50_000, kernel=mode != "log")
    geom = js.ot.PointCloud(x, y, epsilon=eps, batch_size=7 if mode == "blocks" else None)
    sol = js.ot.solve(geom, a, b, solver=solver)
    plan, transport_cost, _ = _outputs(sol)
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
    np.testing.assert_allclose(np.asarray(plan), P, atol=1e-8, rtol=0)
    assert sol.result == js.RESULTS.successful
    assert sol.stats["marginal_error"] <= 1e-12
    np.testing.assert_allclose(transport_cost, np.sum(P * C), rtol=1e-8)


def test_unbalanced_matches_pot():
    x, y, a, b = (np.asarray(v) for v in _clouds())  # NumPy: no eager op to compile
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
    plan, _, reg_cost = _outputs(sol)
    np.testing.assert_allclose(np.asarray(plan), P, atol=1e-9, rtol=0)
    # reg_cost (the dual) equals the primal objective at the solution
    Pj = np.asarray(plan)

    def kl(p, q):
        return np.sum(p * np.log(p / q) - p + q)

    primal = (
        np.sum(Pj * C)
        + eps * kl(Pj, np.outer(2 * a, b))
        + rho * kl(Pj.sum(1), 2 * a)
        + rho * kl(Pj.sum(0), b)
    )
    np.testing.assert_allclose(reg_cost, primal, rtol=1e-9)


def test_reg_cost_is_primal_value_balanced():
    x, y, a, b = _clouds()
    eps = 0.2
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=eps), a, b, solver=TIGHT)
    plan, _, reg_cost = _outputs(sol)
    P = np.asarray(plan)
    C = cdist(np.asarray(x), np.asarray(y), "sqeuclidean")
    ab = np.outer(a, b)
    primal = np.sum(P * C) + eps * np.sum(P * np.log(P / ab) - P + ab)
    np.testing.assert_allclose(reg_cost, primal, rtol=1e-10)


def test_one_dimensional_and_gaussian_closed_forms():
    # Quantiles of N(0, 1) and N(2, 1.5^2): W2^2 = (2 - 0)^2 + (1.5 - 1)^2 = 4.25 in the limit;
    # for the discrete clouds the monotone matching is optimal: mean((x_(i) - y_(i))^2).
    n = 40
    q = norm.ppf((np.arange(n) + 0.5) / n)
    x = q[::-1].copy()  # unsorted on purpose (NumPy: no eager op to compile)
    y = 2.0 + 1.5 * q
    solver = js.ot.Sinkhorn(tol=1e-8, max_steps=50_000)
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=1e-3), solver=solver)
    plan, transport_cost, _ = _outputs(sol)
    transport_cost = float(transport_cost)
    exact = np.mean((np.sort(np.asarray(x)) - np.sort(np.asarray(y))) ** 2)
    assert abs(transport_cost - exact) < 1e-4
    assert abs(transport_cost - 4.25) < 0.1
    # the plan is (nearly) the monotone permutation
    P = np.asarray(plan) * n
    assert np.all(np.argmax(P, axis=1) == np.argsort(np.argsort(np.asarray(x))))


def test_zero_weight_points_and_rectangular():
    # 25 x 18 (the other tests' TIGHT program); the weights are edited and the points
    # selected in NumPy (eagerly in JAX, each op would be a compilation of its own).
    x, y, a, b = (np.asarray(v) for v in _clouds())
    a = a.copy()
    a[[0, 5]] = 0.0
    a = a / a.sum()
    b = b.copy()
    b[3] = 0.0
    b = b / b.sum()
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.2), a, b, solver=TIGHT)
    keep_a = a > 0
    keep_b = b > 0
    sub = js.ot.solve(
        js.ot.PointCloud(x[keep_a], y[keep_b], epsilon=0.2), a[keep_a], b[keep_b], solver=TIGHT
    )
    plan, _, reg_cost = _outputs(sol)
    sub_plan, _, sub_reg_cost = _outputs(sub)
    P = np.asarray(plan)
    assert np.all(P[~keep_a] == 0) and np.all(P[:, ~keep_b] == 0)
    np.testing.assert_allclose(P[np.ix_(keep_a, keep_b)], np.asarray(sub_plan), atol=1e-12)
    np.testing.assert_allclose(reg_cost, sub_reg_cost, rtol=1e-10)
    assert np.all(np.isfinite(sol.f)) and np.all(np.isfinite(sol.g))


def test_float32_small_epsilon_stays_finite_and_converges():
    x, y, _, _ = _clouds(60, 50)
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    sol = js.ot.solve(
        js.ot.PointCloud(x, y, epsilon=1e-3), solver=js.ot.Sinkhorn(tol=1e-4), throw=False
    )
    assert sol.f.dtype == jnp.float32
    assert sol.result == js.RESULTS.successful

    @eqx.filter_jit  # one compilation, not one per eager op
    def checks(sol):
        plan = sol.plan
        err = jnp.abs(plan.sum(0) - 1 / 50).sum() + jnp.abs(plan.sum(1) - 1 / 60).sum()
        return jnp.all(jnp.isfinite(plan)), err

    finite, err = checks(sol)
    assert finite
    # The plan rebuilt from float32 potentials at ε = 1e-3 carries rounding of order
    # ulp(f)/ε ~ 1e-3 relative per entry, on top of the solver's own 1e-4.
    assert float(err) < 1e-3


@pytest.mark.parametrize(
    "cost, metric",
    [(js.ot.PNorm(1.0), "cityblock"), (js.ot.PNorm(2.0), "euclidean"), (js.ot.Cosine(), "cosine")],
)
def test_costs_against_scipy(cost, metric):
    x, y, _, _ = _clouds(7, 5)
    pairs = eqx.filter_jit(lambda c, x, y: c.all_pairs(x, y))(cost, x, y)  # one compilation
    np.testing.assert_allclose(pairs, cdist(np.asarray(x), np.asarray(y), metric), atol=1e-12)


def test_relative_epsilon_and_blockwise_apply():
    x, y, a, b = _clouds()
    C = np.asarray(cdist(np.asarray(x), np.asarray(y), "sqeuclidean"))
    geom = js.ot.Geometry(C, epsilon=0.1, relative_epsilon="mean")
    blocks = js.ot.PointCloud(x, y, epsilon=0.1, relative_epsilon="mean", batch_size=4)
    sol = js.ot.solve(blocks, a, b)
    V = np.ones((18, 3)) * np.arange(3.0)
    w = np.arange(25.0)

    @eqx.filter_jit  # one compilation, not one per eager op
    def outputs(geom, blocks, sol):
        plan = sol.plan
        return (
            geom.epsilon,
            blocks.epsilon,
            sol.apply(V),
            plan @ V,
            sol.apply(w, axis=0),
            plan.T @ w,
        )

    eps, eps_blocks, PV, PV_ref, PTw, PTw_ref = outputs(geom, blocks, sol)
    np.testing.assert_allclose(eps, 0.1 * np.mean(C), rtol=1e-12)
    np.testing.assert_allclose(eps_blocks, eps, rtol=1e-12)
    np.testing.assert_allclose(PV, PV_ref, rtol=1e-10)
    np.testing.assert_allclose(PTw, PTw_ref, rtol=1e-10)
