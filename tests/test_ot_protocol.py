"""The OT family on the core protocol: stopping rules and counts (Sinkhorn's annealing,
SparseNewton's budget and CG), outputs as `js.Solution`, the acceleration interface, failure
channels of `coupling` / `sinkhorn_divergence`, inputs refused at trace time, edge sizes."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsolve as js


def _clouds(n=10, m=8, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(k1, (n, 2)), jax.random.normal(k2, (m, 2)) + 1.0


@jax.jit
def _marginal_error(p, a, b):
    return jnp.sum(jnp.abs(p.sum(1) - a)) + jnp.sum(jnp.abs(p.sum(0) - b))


def _true_error(sol):
    # jitted: one compiled program per shape, not one per eager op
    return float(_marginal_error(sol.plan, sol.a, sol.b))


def test_annealing_stage_never_ends_the_solve():
    # With a loose tol every annealing stage meets it at its own epsilon at once; stopped by
    # max_steps before the target epsilon, the solve is not successful and reports the
    # returned plan's error at the target epsilon.
    x, y = _clouds()
    geom = js.ot.PointCloud(x, y, epsilon=1e-3)
    solver = js.ot.Sinkhorn(tol=0.5, max_steps=30)
    sol = js.ot.solve(geom, solver=solver, throw=False)
    assert sol.result == js.RESULTS.max_steps_reached
    assert int(sol.stats["num_steps"]) == 30
    assert _true_error(sol) > 0.5
    np.testing.assert_allclose(sol.stats["marginal_error"], _true_error(sol), rtol=1e-8)
    # Given the sweeps, it goes down to the target epsilon and only stops there.
    sol = js.ot.solve(geom, solver=js.ot.Sinkhorn(tol=0.5, max_steps=10_000))
    assert sol.result == js.RESULTS.successful
    assert int(sol.stats["num_steps"]) > 100  # ~20 stages of 10 sweeps
    assert _true_error(sol) <= 0.5


def test_max_steps_counts_sweeps_exactly():
    # 25 sweeps, not 30 (three loop steps of check_every = 10), in either mode ...
    x, y = _clouds()
    geom = js.ot.PointCloud(x, y, epsilon=0.01)
    kw = dict(tol=1e-14, epsilon_scaling=None, acceleration=None, throw=False)
    for kernel in (True, False):
        solver = js.ot.Sinkhorn(tol=1e-14, max_steps=25, kernel=kernel, epsilon_scaling=None)
        sol = js.ot.solve(geom, solver=solver, throw=False)
        assert int(sol.stats["num_steps"]) == 25
    # ... and they are the same 25 sweeps as 25 solves of one sweep each, warm-started.
    del kw["throw"]
    ref = js.ot.solve(geom, solver=js.ot.Sinkhorn(max_steps=25, kernel=False, **kw), throw=False)
    one = js.ot.Sinkhorn(max_steps=1, check_every=1, kernel=False, **kw)
    # zero potentials: the cold start (which `init=None` starts from), as one compiled program
    y0 = (jnp.zeros(10), jnp.zeros(8))
    for _ in range(25):
        s = js.ot.solve(geom, solver=one, init=y0, throw=False)
        assert int(s.stats["num_steps"]) == 1
        y0 = (s.f, s.g)
    np.testing.assert_allclose(ref.plan, s.plan, atol=1e-12)


def test_results_are_solutions():
    x, y = _clouds()
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.5))
    assert isinstance(sol, js.Solution) and isinstance(sol, js.ot.OTSolution)
    assert sol.f is sol.value[0] and sol.g is sol.value[1]
    C = js.ot.PointCloud(x, y).cost_matrix
    smooth = js.ot.solve_smooth(C)
    assert isinstance(smooth, js.Solution) and smooth.f is smooth.value[0]
    # The implicit adjoint differentiates the problem's own optimality function.
    F = eqx.filter_jit(lambda s: s.problem.optimality(s.value))(sol)
    assert max(float(jnp.abs(v).max()) for v in F) < 1e-5
    assert js.ot.OTProblem.default_tol(jnp.float32) == 1e-4
    assert js.ot.OTProblem.default_tol(jnp.float64) == 1e-6


def test_float32_default_tolerance_is_reached():
    x, y = _clouds(80, 70, seed=3)
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    for eps in (0.5, 0.01):
        geom = js.ot.PointCloud(x, y, epsilon=eps, relative_epsilon="mean")
        sol = js.ot.solve(geom)  # default tol: 1e-4 in float32
        assert sol.f.dtype == jnp.float32
        assert float(sol.stats["marginal_error"]) <= 1e-4
        sns = js.ot.solve(geom, solver=js.ot.SparseNewton())
        assert float(sns.stats["marginal_error"]) <= 1e-4


def test_custom_acceleration_through_the_interface():
    class Relaxed(js.ot.AbstractSinkhornAcceleration):
        def relaxation(self, state):
            return 1.5

    x, y = _clouds()
    geom = js.ot.PointCloud(x, y, epsilon=0.5)
    kw = dict(tol=1e-10, epsilon_scaling=None)
    plain = js.ot.solve(geom, solver=js.ot.Sinkhorn(acceleration=None, **kw))
    fast = js.ot.solve(geom, solver=js.ot.Sinkhorn(acceleration=Relaxed(), **kw))
    fixed = js.ot.solve(
        geom, solver=js.ot.Sinkhorn(acceleration=js.ot.Momentum(1.5, start=0), **kw)
    )
    assert int(fast.stats["num_steps"]) < int(plain.stats["num_steps"])
    assert int(fast.stats["num_steps"]) == int(fixed.stats["num_steps"])
    np.testing.assert_allclose(fast.plan, plain.plan, atol=1e-9)
    assert float(fast.stats["omega"]) == 1.5
    with pytest.raises(TypeError, match="AbstractSinkhornAcceleration"):
        js.ot.Sinkhorn(acceleration=js.AndersonFixedPoint())
    assert not hasattr(js.ot, "Anderson")


def _sns_problem(n=40, m=30, seed=0):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.uniform(kx, (n, 2)), jax.random.uniform(ky, (m, 2))


def test_sparse_newton_budget_counts_every_iteration():
    x, y = _sns_problem()
    geom = js.ot.PointCloud(x, y, epsilon=2e-3)
    sns = js.ot.SparseNewton(tol=1e-14, max_steps=35, warmup=20, warmup_tol=1e-14)
    sol = js.ot.solve(geom, solver=sns, throw=False)
    assert sol.result == js.RESULTS.max_steps_reached
    assert int(sol.stats["num_steps"]) == 35
    assert int(sol.stats["num_steps"]) == int(sol.stats["sinkhorn_steps"]) + int(
        sol.stats["newton_steps"]
    )
    # A budget smaller than the warm-up caps the warm-up too.
    sol = js.ot.solve(geom, solver=js.ot.SparseNewton(tol=1e-14, max_steps=15), throw=False)
    assert int(sol.stats["num_steps"]) == 15 and int(sol.stats["newton_steps"]) == 0


def test_sparse_newton_cg_counts():
    # forcing=0: every CG solve runs to cg_tol = 1e-10, which it cannot reach in 3 iterations,
    # so each Newton step costs exactly cg_max_steps CG iterations.
    x, y = _sns_problem(seed=1)
    geom = js.ot.PointCloud(x, y, epsilon=2e-3)
    sns = js.ot.SparseNewton(tol=1e-9, cg_max_steps=3, forcing=0.0)
    sol = js.ot.solve(geom, solver=sns, throw=False)
    newton, cg = int(sol.stats["newton_steps"]), int(sol.stats["cg_steps"])
    assert newton > 0
    # Newton attempts = Newton steps + failed attempts (each then a sweep, in sinkhorn_steps).
    assert cg % 3 == 0 and cg >= 3 * newton
    # With room to converge, the counts are those of the same CG run by js.linear.solve.
    sol = js.ot.solve(geom, solver=js.ot.SparseNewton(tol=1e-11))
    assert float(sol.stats["marginal_error"]) <= 1e-11
    assert 0 < int(sol.stats["cg_steps"]) < 1000 * int(sol.stats["newton_steps"])


# The edge sizes are three small tests (two to four compiled solves each) rather than one of
# six: in one test, compiling them crashed an xdist worker inside XLA's compiler.
def test_sparse_newton_k_larger_than_n():
    # 10 x 8, as _clouds(): the default Sinkhorn's program is the other tests' one
    x, y = _sns_problem(10, 8)
    geom = js.ot.PointCloud(x, y, epsilon=1e-2)
    ref = js.ot.solve(geom, solver=js.ot.Sinkhorn(tol=1e-12))
    big_k = js.ot.solve(geom, solver=js.ot.SparseNewton(tol=1e-12, k=1000))
    np.testing.assert_allclose(big_k.plan, ref.plan, atol=1e-11)


@pytest.mark.parametrize("solver", [js.ot.Sinkhorn(tol=1e-12), js.ot.SparseNewton(tol=1e-12)])
def test_single_points(solver):
    # n = 1 (and m = 1): the plan is b (a) itself.
    x, y = _sns_problem(1, 3)
    b = jnp.array([0.2, 0.3, 0.5])
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.1), None, b, solver=solver)
    np.testing.assert_allclose(sol.plan, b[None, :], atol=1e-12)
    sol = js.ot.solve(js.ot.PointCloud(x, y[:1], epsilon=0.1), solver=solver)
    np.testing.assert_allclose(sol.plan, [[1.0]], atol=1e-12)


def test_inputs_refused_at_trace_time():
    x, y = _clouds(3, 4)
    with pytest.raises(TypeError, match="real"):
        js.ot.Geometry(jnp.ones((3, 4)) * (1 + 1j))
    with pytest.raises(TypeError, match="real"):
        js.ot.PointCloud(x.astype(jnp.complex64), y)
    with pytest.raises(TypeError, match="real"):
        js.ot.solve(js.ot.PointCloud(x, y), jnp.ones(3, jnp.complex64) / 3)
    with pytest.raises(ValueError, match="at least one"):
        js.ot.solve(js.ot.Geometry(jnp.ones((0, 4))))
    with pytest.raises(ValueError, match="non-empty"):
        js.ot.coupling(jnp.ones((0, 2)), jnp.ones((0, 2)))
    with pytest.raises(TypeError, match="real"):
        js.ot.coupling(x.astype(jnp.complex64), x)


def test_nan_cost_is_nonfinite_and_bad_weights_invalid():
    x, y = _clouds(5, 4)
    C = js.ot.PointCloud(x, y).cost_matrix.at[1, 2].set(jnp.nan)
    for solver in (js.ot.Sinkhorn(), js.ot.SparseNewton()):
        sol = js.ot.solve(js.ot.Geometry(C, epsilon=0.5), solver=solver, throw=False)
        assert sol.result == js.RESULTS.nonfinite
    blocks = js.ot.PointCloud(x.at[0, 0].set(jnp.nan), y, epsilon=0.5, batch_size=2)
    assert js.ot.solve(blocks, throw=False).result == js.RESULTS.nonfinite
    with pytest.raises(eqx.EquinoxRuntimeError, match="NaN"):
        js.ot.solve(js.ot.Geometry(C, epsilon=0.5))
    # under vmap, a bad member gets its own code and leaves the others alone
    a = jnp.stack([jnp.full(5, 0.2), jnp.full(5, 0.2).at[0].set(-0.1)])
    solve = lambda a: js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.5), a, throw=False)
    out = jax.vmap(solve)(a)
    codes = np.asarray(out.result._value)
    assert codes[0] == js.RESULTS.successful._value
    assert codes[1] == js.RESULTS.invalid_input._value
    np.testing.assert_allclose(out.f[0], solve(a[0]).f, atol=1e-12)


def test_divergence_failure_channel_under_jit_vmap_grad():
    x, y = _clouds(6, 5)
    short = js.ot.Sinkhorn(tol=1e-4, max_steps=50, epsilon_scaling=None, acceleration=None)

    def loss(x, eps):
        return js.ot.sinkhorn_divergence(
            x, y, epsilon=eps, solver=short, throw=False, return_result=True
        )

    eps = jnp.array([2.0, 1e-3])  # the second cannot converge in 50 sweeps
    grads, results = jax.jit(jax.vmap(jax.grad(loss, has_aux=True)))(jnp.stack([x, x]), eps)
    codes = np.asarray(results._value)
    assert codes[0] == js.RESULTS.successful._value
    assert codes[1] == js.RESULTS.max_steps_reached._value
    assert bool(jnp.all(jnp.isfinite(grads)))
    # unbatched, jitted (eagerly, each of the gradient's ops would be compiled on its own)
    g0, _ = jax.jit(jax.grad(loss, has_aux=True))(x, 2.0)
    np.testing.assert_allclose(grads[0], g0, atol=1e-10)
    with pytest.raises(eqx.EquinoxRuntimeError, match="max_steps"):
        js.ot.sinkhorn_divergence(x, y, epsilon=1e-3, solver=short)


def test_coupling_failure_channel_under_jit_and_vmap():
    x0 = jax.random.normal(jax.random.PRNGKey(0), (3, 16, 2))
    x1 = x0[:, ::-1] + 0.01
    bad = x1.at[1, 0, 0].set(jnp.nan)
    # under grad (no derivative flows through the pairing) nothing raises either: the
    # gradient (default method) is taken in the same compiled program as the exact pairings
    grad = jax.grad(lambda a, b: jnp.sum(js.ot.coupling(a, b, throw=False)[1]))
    for method in ("exact", "entropic"):
        pair = lambda a, b, m=method: js.ot.coupling(
            a, b, method=m, throw=False, return_indices=True, return_result=True
        )
        if method == "exact":
            (_, _, sigma, results), g = jax.jit(jax.vmap(lambda a, b: (pair(a, b), grad(a, b))))(
                x0, bad
            )
            assert g[1].shape == x0[1].shape
        else:
            _, _, sigma, results = jax.jit(jax.vmap(pair))(x0, bad)
        codes = np.asarray(results._value)
        assert list(codes) == [
            js.RESULTS.successful._value,
            js.RESULTS.nonfinite._value,
            js.RESULTS.successful._value,
        ]
        np.testing.assert_array_equal(sigma[0], jnp.arange(16)[::-1])  # the others unchanged
        with pytest.raises(eqx.EquinoxRuntimeError, match="NaN"):
            js.ot.coupling(x0[1], bad[1], method=method)
