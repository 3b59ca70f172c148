"""Quadratically regularised and sparsity-constrained OT: against POT's `ot.smooth`, finite
differences, closed forms, vmap and bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from conftest import finite_difference
from ot.smooth import SparsityConstrained, SquaredL2, dual_obj_grad

import jaxsolve as js
import jaxsolve.ot  # noqa: F401

N, M = 24, 18


def _problem(seed=0, n=N, m=M):
    kx, ky, ka = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, (n, 2))
    y = jax.random.normal(ky, (m, 2)) + 0.5
    a = jax.random.uniform(ka, (n,), minval=0.5, maxval=1.5)
    a = a / a.sum()
    b = jnp.full((m,), 1.0 / m)
    return x, y, a, b


def _cost(x, y):
    return jnp.sum((x[:, None] - y[None]) ** 2, -1)


@jax.jit
def _quad(C, a, b):
    sol = js.ot.solve_smooth(C, a, b, solver=js.ot.QuadraticOT(gamma=0.3, tol=1e-11))
    return sol.f, sol.g, sol.plan, sol.dual_cost, sol.reg_cost, sol.stats["marginal_error"]


@jax.jit
def _sparse(C, a, b):
    sol = js.ot.solve_smooth(C, a, b, solver=js.ot.SparsityConstrainedOT(gamma=0.3, k=3))
    return sol.plan, sol.dual_cost, sol.stats["marginal_error"]


def _pot_objective(C, a, b, reg, max_nz=None):
    C, a, b = (np.asarray(t) for t in (C, a, b))
    reg_type = "l2" if max_nz is None else "sparsity_constrained"
    _, log = ot.smooth.smooth_ot_dual(
        a, b, C, reg, reg_type=reg_type, max_nz=max_nz, log=True, stopThr=1e-12, numItermax=5000
    )
    regul = SquaredL2(gamma=reg) if max_nz is None else SparsityConstrained(max_nz, gamma=reg)
    return dual_obj_grad(log["alpha"], log["beta"], a, b, C, regul)[0]


def test_quadratic_matches_pot_and_strong_duality():
    x, y, a, b = _problem()
    C = _cost(x, y)
    f, g, plan, dual, primal, err = _quad(C, a, b)
    pot = _pot_objective(C, a, b, 0.3)
    assert abs(float(dual) - pot) <= 1e-6 * abs(pot)
    assert abs(float(primal) - float(dual)) <= 1e-8 * abs(pot)  # strong duality
    assert float(err) < 1e-9
    np.testing.assert_allclose(plan.sum(1), a, atol=1e-10)
    np.testing.assert_allclose(plan.sum(0), b, atol=1e-10)
    assert float(jnp.min(plan)) >= 0.0
    # T_ij = max(f_i + g_j − C_ij, 0)/γ is sparse.
    assert int(jnp.sum(plan > 0)) < N * M // 2


def test_sparsity_constrained_counts_nonzeros_and_matches_pot():
    x, y, a, b = _problem(1)
    C = _cost(x, y)
    plan, dual, err = _sparse(C, a, b)
    per_column = np.asarray(jnp.sum(plan > 0, axis=0))
    assert per_column.max() <= 3 and per_column.min() >= 1
    pot = _pot_objective(C, a, b, 0.3, max_nz=3)
    # We maximise the same dual: at least as high as POT's and within 1e-6 relative.
    assert float(dual) >= pot - 1e-9 * abs(pot)
    assert abs(float(dual) - pot) <= 1e-6 * abs(pot)
    assert float(err) < 0.05


def test_small_gamma_gives_assignment():
    # A permutation is the unique optimum; small γ recovers it exactly.
    x = jnp.linspace(0.0, 1.0, 6)[:, None]
    y = x[::-1] + 0.05
    C = _cost(x, y)
    solve = lambda C: js.ot.solve_smooth(C, solver=js.ot.QuadraticOT(gamma=1e-3, tol=1e-12)).plan
    np.testing.assert_allclose(jax.jit(solve)(C), np.eye(6)[::-1] / 6, atol=1e-9)


def _quad_costs(x, y, dC, a, b, gamma):
    # the cost of the points x, y, shifted by dC so that d/d(dC) is d/d(cost matrix)
    C = _cost(x, y) + dC
    sol = js.ot.solve_smooth(C, a, b, solver=js.ot.QuadraticOT(gamma=gamma, tol=1e-11))
    return sol.reg_cost, jnp.sum(sol.plan * C), sol.plan  # the transport cost through the plan


@jax.jit
def _quad_grads(x, y, dC, a, b, gamma):
    """One program for the values and derivatives both gradient tests check (8 × 7 problems),
    finite differences included: reg_cost and its derivatives by the points and by γ (with the
    plan), the transport cost and its derivative by the cost matrix."""
    reg_cost = lambda x, gamma: _quad_costs(x, y, dC, a, b, gamma)[::2]
    (reg, plan), (gx, ggamma) = jax.value_and_grad(reg_cost, (0, 1), has_aux=True)(x, gamma)
    tcost, gC = jax.value_and_grad(lambda dC: _quad_costs(x, y, dC, a, b, gamma)[1])(dC)
    return dict(reg_cost=reg, gx=gx, ggamma=ggamma, plan=plan, tcost=tcost, gC=gC)


def test_gradient_wrt_cost_and_points_finite_differences():
    x, y, a, b = _problem(2, 8, 7)
    gamma, zero = jnp.asarray(0.3), jnp.zeros((8, 7))
    out = _quad_grads(x, y, zero, a, b, gamma)
    loss_x = lambda x: _quad_grads(x, y, zero, a, b, gamma)["reg_cost"]
    fd = finite_difference(loss_x, x, eps=1e-4)  # solver noise ~1e-11 / eps
    np.testing.assert_allclose(out["gx"], fd, atol=1e-6, rtol=1e-5)
    tcost_C = lambda dC: _quad_grads(x, y, dC, a, b, gamma)["tcost"]
    fdC = finite_difference(tcost_C, zero, eps=1e-4)
    np.testing.assert_allclose(out["gC"], fdC, atol=1e-6, rtol=1e-5)


def test_gradient_wrt_gamma_envelope():
    # d/dγ of the optimal value of <T,C> + γ/2‖T‖² is ½‖T*‖² (envelope theorem). The shape of
    # the test above (another problem): the same compiled program.
    x, y, a, b = _problem(3, 8, 7)
    out = _quad_grads(x, y, jnp.zeros((8, 7)), a, b, jnp.asarray(0.3))
    assert abs(float(out["ggamma"]) - 0.5 * float(jnp.sum(out["plan"] ** 2))) < 1e-7


def test_vmap_equals_loop():
    probs = [_problem(s) for s in range(3)]
    Cs = jnp.stack([_cost(x, y) for x, y, _, _ in probs])
    As = jnp.stack([p[2] for p in probs])
    Bs = jnp.stack([p[3] for p in probs])
    batched = jax.vmap(_quad)(Cs, As, Bs)
    for i in range(3):
        single = _quad(Cs[i], As[i], Bs[i])
        np.testing.assert_allclose(batched[2][i], single[2], atol=1e-9)


def test_bad_inputs():
    with pytest.raises(ValueError, match="gamma"):
        js.ot.QuadraticOT(gamma=0.0)
    with pytest.raises(ValueError, match="gamma"):
        js.ot.SparsityConstrainedOT(gamma=-1.0, k=2)
    with pytest.raises(ValueError, match="k"):
        js.ot.SparsityConstrainedOT(gamma=1.0, k=0)
    with pytest.raises(TypeError, match="k"):
        js.ot.SparsityConstrainedOT(gamma=1.0, k=2.5)
    C = jnp.ones((3, 4))
    with pytest.raises(ValueError, match="shape"):
        js.ot.solve_smooth(C, jnp.ones(4) / 4)
    with pytest.raises(ValueError, match="cost matrix"):
        js.ot.solve_smooth(jnp.ones(3))
    with pytest.raises(TypeError, match="solver"):
        js.ot.solve_smooth(C, solver="quadratic")
    sol = js.ot.solve_smooth(C, jnp.array([0.5, 0.7, -0.2]), throw=False)
    assert sol.result == js.RESULTS.invalid_input
    sol = js.ot.solve_smooth(C, jnp.array([0.5, 0.7, 0.2]), throw=False)  # mass 1.4 vs 1
    assert sol.result == js.RESULTS.invalid_input
    with pytest.raises(Exception, match="invalid"):
        js.ot.solve_smooth(C, jnp.array([0.5, 0.7, -0.2]))


@jax.jit
def _plan_and_grad(C, gamma):
    def cost(C):
        sol = js.ot.solve_smooth(C, solver=js.ot.QuadraticOT(gamma=gamma))
        return sol.transport_cost, sol.plan

    grad, plan = jax.grad(cost, has_aux=True)(C)
    return plan, grad


def test_float32_plan_and_gradient_match_float64():
    # Defaults adapt to the dtype (solve and adjoint tolerances float32 can reach). One program
    # per dtype: the plan and the gradient of the transport cost.
    x = jax.random.normal(jax.random.PRNGKey(0), (30, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (30, 2)) + 1
    C = jnp.sum((x[:, None] - y[None]) ** 2, -1)
    C32 = C.astype(jnp.float32)
    plan32, g32 = _plan_and_grad(C32, jnp.float32(1.0))
    plan64, g64 = _plan_and_grad(C, jnp.float64(1.0))
    assert plan32.dtype == jnp.float32
    assert jnp.allclose(plan32, plan64, atol=1e-5)
    assert g32.dtype == jnp.float32
    assert jnp.allclose(g32, g64, atol=1e-4 * jnp.abs(g64).max())
