"""Low-rank Sinkhorn (`js.ot.LowRankSinkhorn` through `js.ot.solve`): closed forms (rank 1 is
`a bᵀ`), POT's exact cost as a lower bound approached as the rank grows, marginals, envelope
gradients against finite differences and the dense formula, vmap against a loop, memory of
the factored cost, bad input. Runs in both dtypes (tests/test_float32.py).

Compilation dominates: most tests share one program (`_solve`: rank 3, 24 × 18 points, the
solver's tolerances and step as data)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest

import jaxsolve as js

F32 = not jax.config.read("jax_enable_x64")
N, M, RANK = 24, 18, 3
A = jnp.ones(N) / N  # not jnp.full(N, 1 / N): weakly typed, another program than a's below
B = jnp.ones(M) / M


def _clusters(seed, n=N, m=M, k=3, shift=0.3):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    centers = 4.0 * jax.random.normal(keys[0], (k, 2))
    x = centers[jnp.arange(n) % k] + 0.1 * jax.random.normal(keys[1], (n, 2))
    y = centers[jnp.arange(m) % k] + 0.1 * jax.random.normal(keys[2], (m, 2)) + shift
    return x, y


# LowRankSinkhorn's defaults, spelled out: every hyperparameter is an array (data, not a
# compile-time constant), so a test that sets one (tol, gamma, ...) reuses the program of the
# defaults rather than compiling another (a Python float, or None, is part of the jit key).
DEFAULTS = dict(
    gamma=100.0,
    epsilon=0.0,
    min_weight=1e-6,
    tol=js.ot.LowRankOTProblem.default_tol(A.dtype),
    inner_tol=1e-4,
)


def _solver(**kw):
    kw = {k: jnp.asarray(v, A.dtype) for k, v in {**DEFAULTS, **kw}.items()}
    return js.ot.LowRankSinkhorn(rank=RANK, **kw)


@eqx.filter_jit
def _solve(x, y, a, b, solver):
    sol = js.ot.solve(js.ot.PointCloud(x, y), a, b, solver=solver, throw=False)
    return sol, sol.cost


@eqx.filter_jit
def _rank_one(x, y, a, b):
    sol = js.ot.solve(js.ot.PointCloud(x, y), a, b, solver=js.ot.LowRankSinkhorn(rank=1))
    return sol.result, sol.plan, sol.cost


def _softmax(z):
    return np.exp(z - z.max()) / np.exp(z - z.max()).sum()


def test_rank_one_is_the_product_coupling():
    # The only rank-1 coupling with marginals a, b is a bᵀ: its cost is aᵀ C b.
    x, y = _clusters(0)
    a = _softmax(np.arange(N) / 5).astype(x.dtype)
    b = _softmax(-np.arange(M) / 4).astype(x.dtype)
    result, plan, cost = _rank_one(x, y, a, b)
    C = np.asarray(js.ot.PointCloud(x, y).cost_matrix)
    assert result == js.RESULTS.successful
    # to the projection's tolerance (L1 marginal error 1e-4)
    assert np.abs(plan - np.outer(a, b)).sum() <= 2e-4
    assert np.allclose(cost, a @ C @ b, rtol=1e-3)


@pytest.mark.parametrize("seed", [1, 2])
def test_cost_upper_bounds_pot_and_approaches_it_at_the_cluster_rank(seed):
    x, y = _clusters(seed)
    a = A.at[0].set(0.0)  # a zero weight too
    a = a / a.sum()
    C = np.asarray(js.ot.PointCloud(x, y).cost_matrix, np.float64)
    exact = ot.emd2(np.asarray(a, np.float64), np.asarray(B, np.float64), C)
    product = float(a @ C @ B)  # the rank-1 cost
    sol, cost = _solve(x, y, a, B, _solver())
    assert sol.result == js.RESULTS.successful, js.RESULTS[sol.result]
    # marginals of Q diag(1/g) Rᵀ: a and b to the projection's tolerance (1e-4)
    r, c = sol.marginals
    assert jnp.sum(jnp.abs(r - a)) + jnp.sum(jnp.abs(c - B)) <= 1e-4
    assert jnp.allclose(sol.plan.sum(1), r, atol=1e-6) and sol.plan[0].max() == 0
    assert jnp.allclose(sol.q.sum(0), sol.g, rtol=1e-4)
    assert jnp.allclose(sol.r.sum(0), sol.g, rtol=1e-4)
    # a feasible plan costs at least the exact OT cost (up to the marginal tolerance); three
    # clusters: rank 3 closes most of the gap between the product coupling and the optimum
    assert exact * (1 - 1e-3) <= cost <= exact + 0.05 * (product - exact), (cost, exact, product)
    assert jnp.allclose(cost, jnp.sum(sol.plan * C), rtol=1e-4)


@pytest.mark.skipif(F32, reason="finite differences need float64")
def test_envelope_gradient_matches_finite_differences_and_dense_formula():
    x, y = _clusters(3)
    solver = _solver(tol=1e-13, inner_tol=1e-11)

    @jax.jit
    def grad_and_plan(x):
        sol, _ = _solve(x, y, A, B, solver)
        grad = jax.grad(lambda x: _solve(x, y, A, B, solver)[1])(x)
        return grad, sol.plan, sol.result

    grad, plan, result = grad_and_plan(x)
    assert result == js.RESULTS.successful
    # ⟨C(x), P⟩ with P fixed: 2 (diag(P1) x − P y)
    assert jnp.allclose(grad, 2 * (plan.sum(1)[:, None] * x - plan @ y), atol=1e-9)
    h = 1e-5
    for i, j in [(0, 0), (5, 1), (13, 0)]:
        e = jnp.zeros_like(x).at[i, j].set(h)
        fd = (_solve(x + e, y, A, B, solver)[1] - _solve(x - e, y, A, B, solver)[1]) / (2 * h)
        assert jnp.allclose(fd, grad[i, j], rtol=1e-4, atol=1e-7), (i, j, fd, grad[i, j])


@jax.jit
def _batched(ys, x):
    return jax.vmap(lambda y: _solve(x, y, A, B, _solver()))(ys)


def test_vmap_equals_loop_and_one_bad_member_is_alone():
    x, y = _clusters(4)
    ys = jnp.stack([y, y + 0.2, y[::-1] - 0.1])
    ys = ys.at[1, 0, 0].set(jnp.nan)
    sols, costs = _batched(ys, x)
    assert (sols.result == js.RESULTS.nonfinite)[1]
    ok = sols.result == js.RESULTS.successful
    for i in (0, 2):
        alone, cost = _solve(x, ys[i], A, B, _solver())
        assert alone.result == js.RESULTS.successful and ok[i]
        for u, v in zip(sols.value, alone.value):
            assert jnp.allclose(u[i], v, rtol=1e-5, atol=1e-7)
        assert jnp.allclose(costs[i], cost, rtol=1e-5)


@eqx.filter_jit
def _dense_solve(C):
    sol = js.ot.solve(js.ot.Geometry(C), solver=js.ot.LowRankSinkhorn(rank=RANK))
    return sol.cost, sol.plan


@eqx.filter_jit
def _products(x, y, factored):
    """The factored solution's products, in one program (eagerly: one per operation)."""
    blocks = js.ot.PointCloud(x, y, cost_fn=js.ot.PNorm(2.0, 2.0), batch_size=5)
    costs = []
    for geom in (js.ot.PointCloud(x, y), blocks):
        problem = js.ot.LowRankOTProblem(geom, A, B)
        costs.append((problem.apply_cost(factored.r, 1), problem.apply_cost(factored.q, 0)))
    v = jnp.arange(M, dtype=x.dtype)
    return factored.plan, costs, factored.apply(v), factored.apply(jnp.ones(N), axis=0)


def test_dense_blockwise_and_factored_costs_agree():
    x, y = _clusters(8)
    factored, cost = _solve(x, y, A, B, _solver())
    C = np.asarray(js.ot.PointCloud(x, y).cost_matrix)
    dense_cost, dense_plan = _dense_solve(C)
    plan, costs, applied, applied_0 = jax.device_get(_products(x, y, factored))
    rtol = 1e-3 if F32 else 1e-6
    assert np.allclose(cost, dense_cost, rtol=rtol)
    assert np.allclose(plan, dense_plan, atol=rtol * 1e-1)
    # the cost products C R, Cᵀ Q: factored, blockwise (another cost) and dense
    r, q = np.asarray(factored.r), np.asarray(factored.q)
    for cost_r, cost_q in costs:
        assert np.allclose(cost_r, C @ r, rtol=1e-4)
        assert np.allclose(cost_q, C.T @ q, rtol=1e-4)
    v = np.arange(M, dtype=C.dtype)
    assert np.allclose(applied, plan @ v, rtol=1e-5)
    assert np.allclose(applied_0, plan.sum(0), rtol=1e-5)


def test_large_clouds_never_form_the_cost_matrix():
    n = m = 50_000  # an n × m float32 cost would take 10 GB

    def cost_and_grad(x, y):
        solver = js.ot.LowRankSinkhorn(rank=4)
        cost = lambda x: js.ot.solve(js.ot.PointCloud(x, y), solver=solver, throw=False).cost
        return jax.value_and_grad(cost)(x)

    shapes = jax.ShapeDtypeStruct((n, 2), jnp.float32), jax.ShapeDtypeStruct((m, 2), jnp.float32)
    mem = jax.jit(cost_and_grad).lower(*shapes).compile().memory_analysis()
    assert mem.temp_size_in_bytes < 100 * (n + m) * 4 * 4, mem.temp_size_in_bytes


def test_bad_input():
    x, y = _clusters(9)
    geom = js.ot.PointCloud(x, y)
    with pytest.raises(ValueError, match="rank"):
        js.ot.LowRankSinkhorn(rank=0)
    with pytest.raises(ValueError, match="at most min"):
        js.ot.solve(geom, solver=js.ot.LowRankSinkhorn(rank=M + 1))
    with pytest.raises(ValueError, match="gamma"):
        js.ot.LowRankSinkhorn(rank=2, gamma=0.0)
    with pytest.raises(ValueError, match="epsilon"):
        js.ot.LowRankSinkhorn(rank=2, epsilon=-1.0)
    with pytest.raises(ValueError, match="shape"):
        js.ot.solve(geom, jnp.ones(5) / 5, solver=js.ot.LowRankSinkhorn(rank=2))
    with pytest.raises(ValueError, match="balanced"):
        js.ot.solve(geom, tau_a=0.5, solver=js.ot.LowRankSinkhorn(rank=2))
    with pytest.raises(ValueError, match="envelope"):
        js.ot.solve(geom, solver=js.ot.LowRankSinkhorn(rank=2), adjoint=js.UnrollAdjoint())
    with pytest.raises(ValueError, match="shapes"):
        js.ot.solve(geom, solver=js.ot.LowRankSinkhorn(rank=2), init=(x, y, jnp.ones(3)))
    # values: a result code (arrays under jit too); throw=True raising on a bad value is
    # tests/test_contract.py's job
    result = lambda a, b, solver: _solve(x, y, a, b, solver)[0].result
    assert result(A.at[0].set(-0.1), B, _solver()) == js.RESULTS.invalid_input
    assert result(A * 2, B, _solver()) == js.RESULTS.invalid_input  # unequal masses
    assert result(A, B, _solver(gamma=-1.0)) == js.RESULTS.invalid_input
    assert result(A, B, _solver(epsilon=-1.0)) == js.RESULTS.invalid_input
    assert result(A.at[3].set(jnp.nan), B, _solver()) == js.RESULTS.invalid_input
    assert result(A, B, _solver()) == js.RESULTS.successful
