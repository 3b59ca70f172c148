"""js.ot API: vmap with per-problem results, bad inputs, no recompilation, progress,
Sinkhorn divergence."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsolve as js

SOLVER = js.ot.Sinkhorn(tol=1e-10, max_steps=5000)


def _clouds(n=10, m=8, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(k1, (n, 2)), jax.random.normal(k2, (m, 2)) + 1.0


@eqx.filter_jit
def _reg_cost(x, y, a, b, eps, max_steps):
    sol = js.ot.solve(
        js.ot.PointCloud(x, y, epsilon=eps),
        a,
        b,
        solver=js.ot.Sinkhorn(tol=1e-10, max_steps=max_steps),
        throw=False,
    )
    return sol.reg_cost, sol.result, sol.stats["num_steps"]


def test_vmap_matches_loop_with_per_problem_results():
    xs = jnp.stack([_clouds(seed=s)[0] for s in range(3)])
    ys = jnp.stack([_clouds(seed=s)[1] for s in range(3)])
    a = jnp.full(10, 0.1)
    b = jnp.full(8, 1 / 8)
    eps = jnp.array([1.0, 0.5, 1e-3])  # the last one needs more than 300 sweeps
    batched = jax.vmap(lambda x, y, e: _reg_cost(x, y, a, b, e, 300))(xs, ys, eps)
    codes = np.asarray(batched[1]._value)  # one result per problem
    for i in range(3):
        single = _reg_cost(xs[i], ys[i], a, b, eps[i], 300)
        # Converged members agree to rounding; the unfinished one (stopped mid-way at a small
        # epsilon, where Anderson's extrapolation amplifies the batched products' rounding)
        # to 1e-6.
        rtol = 1e-10 if i < 2 else 1e-6
        np.testing.assert_allclose(batched[0][i], single[0], rtol=rtol)
        assert codes[i] == single[1]._value
    assert codes[0] == js.RESULTS.successful._value
    assert codes[2] == js.RESULTS.max_steps_reached._value


def test_unfinished_solve_reports_the_true_marginal_error():
    # Stopped by max_steps while epsilon scaling is still at a larger epsilon, the solver's
    # own error is that of the intermediate problem; the reported one is the plan's.
    x, y = _clouds()

    @jax.jit
    def solve(x, y):
        # One program: the solve, its plan and stats (eagerly: one per operation).
        geom = js.ot.PointCloud(x, y, epsilon=1e-3)
        sol = js.ot.solve(geom, solver=js.ot.Sinkhorn(tol=1e-10, max_steps=20), throw=False)
        return sol.result, sol.plan, sol.stats["marginal_error"]

    result, p, marginal_error = solve(x, y)
    assert result == js.RESULTS.max_steps_reached
    p = np.asarray(p)
    err = np.sum(np.abs(p.sum(1) - 0.1)) + np.sum(np.abs(p.sum(0) - 1 / 8))
    assert float(err) > 1e-3
    np.testing.assert_allclose(marginal_error, err, rtol=1e-10)


def test_no_recompilation_for_new_data():
    x, y = _clouds()

    @jax.jit
    def f(x, y):
        return js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.5), solver=SOLVER).reg_cost

    f(x, y)
    f(x + 1.0, y * 2.0)
    assert f._cache_size() == 1


@pytest.mark.parametrize(
    "a, b, message",
    [
        (jnp.array([0.5, 0.6, -0.1]), None, "negative"),
        (jnp.array([0.5, jnp.nan, 0.5]), None, "nan"),
        (jnp.array([0.5, 0.5, 0.5]), None, "mass"),
    ],
)
def test_bad_weight_values_give_invalid_input(a, b, message):
    x, y = _clouds(3, 4)
    # ε an array, as in test_bad_epsilon_and_shapes_raise: the same program (a Python float
    # is part of the jit key).
    geom = js.ot.PointCloud(x, y, epsilon=jnp.asarray(0.5))
    sol = js.ot.solve(geom, a, b, solver=SOLVER, throw=False)
    assert sol.result == js.RESULTS.invalid_input, message
    with pytest.raises(eqx.EquinoxRuntimeError, match="invalid"):
        js.ot.solve(geom, a, b, solver=SOLVER)


def test_bad_epsilon_and_shapes_raise():
    x, y = _clouds(3, 4)
    with pytest.raises(ValueError, match="epsilon"):
        js.ot.PointCloud(x, y, epsilon=0.0)
    with pytest.raises(ValueError, match="epsilon"):
        js.ot.Geometry(jnp.ones((3, 4)), epsilon=-1.0)
    geom = js.ot.PointCloud(x, y, epsilon=jnp.array(-0.1))
    # Weights given (uniform), as in test_bad_weight_values_give_invalid_input: one program.
    sol = js.ot.solve(geom, jnp.ones(3) / 3, solver=SOLVER, throw=False)
    assert sol.result == js.RESULTS.invalid_input
    with pytest.raises(ValueError, match="same dimension"):
        js.ot.PointCloud(x, jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        js.ot.solve(js.ot.PointCloud(x, y), jnp.ones(4) / 4)
    with pytest.raises(ValueError, match="2-D"):
        js.ot.Geometry(jnp.ones(3))
    with pytest.raises(ValueError, match="tau_a"):
        js.ot.solve(js.ot.PointCloud(x, y), tau_a=1.5)
    with pytest.raises(TypeError, match="solver"):
        js.ot.solve(js.ot.PointCloud(x, y), solver=js.LBFGS())
    with pytest.raises(TypeError, match="geom"):
        js.ot.solve(jnp.ones((3, 4)))
    with pytest.raises(TypeError, match="Anderson"):
        js.ot.Sinkhorn(acceleration="anderson")


def test_unbalanced_masses_may_differ_and_progress_callback():
    x, y = _clouds()
    calls = []
    sol = js.ot.solve(
        js.ot.PointCloud(x, y, epsilon=0.5),
        jnp.full(10, 0.2),
        tau_a=0.9,
        tau_b=0.9,
        solver=SOLVER,
        progress=lambda step, err: calls.append((int(step), float(err))),
    )
    assert sol.result == js.RESULTS.successful
    assert calls and calls[-1][1] <= 1e-10
    # the relaxed plan's mass lies between the two masses
    assert 1.0 < float(sol.plan.sum()) < 2.0


@jax.jit
def _divergences(x, y):
    # One program for the three divergences (one per pair of shapes otherwise).
    div = lambda x, y: js.ot.sinkhorn_divergence(x, y, epsilon=0.3, solver=SOLVER)
    return div(x, x), div(x, y), div(y, x)


@jax.jit
def _reg_costs(x, y):
    # The reference: three separate solves, in a program of their own (not the divergence's).
    ot = lambda p, q: js.ot.solve(js.ot.PointCloud(p, q, epsilon=0.3), solver=SOLVER).reg_cost
    return ot(x, y), ot(x, x), ot(y, y)


def test_sinkhorn_divergence_properties():
    x, y = _clouds(8, 6)
    s_xx, s_xy, s_yx = _divergences(x, y)
    assert abs(s_xx) < 1e-9
    assert s_xy > 0
    np.testing.assert_allclose(s_xy, s_yx, rtol=1e-8)
    # it equals the three regularised costs put together
    ot_xy, ot_xx, ot_yy = _reg_costs(x, y)
    np.testing.assert_allclose(s_xy, ot_xy - 0.5 * ot_xx - 0.5 * ot_yy, rtol=1e-10)
