"""Entropic (fused) Gromov–Wasserstein: `js.ot.solve_gw` against POT, finite differences of the
envelope-theorem gradients, a known correspondence, bad input, vmap, float32.

Every case reuses one of four module-level compiled functions (a vmapped batch of dense
problems with one bad member of each kind, point clouds through the low-rank path in float64
and in float32, the KL loss with `throw=True`), so the file compiles four programs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

import jaxsolve as js

R = js.RESULTS
X64 = jax.config.read("jax_enable_x64")
needs_x64 = pytest.mark.skipif(not X64, reason="float64 references (float32: own test below)")

TIGHT = js.ot.GromovWasserstein(
    epsilon=0.05,
    tol=1e-11,
    max_steps=2000,
    sinkhorn=js.ot.Sinkhorn(tol=1e-12, epsilon_scaling=None),
)
# Plain log-domain inner sweeps for the dense cases (ε ≥ 0.03): they compile in half the time
# of the default (Anderson, kernel mode), which the point-cloud cases run.
PLAIN = eqx.tree_at(
    lambda s: s.sinkhorn,
    TIGHT,
    js.ot.Sinkhorn(tol=1e-12, epsilon_scaling=None, acceleration=None, kernel=False),
)


def _normalised(x):
    d2 = np.sum((x[:, None] - x[None]) ** 2, -1)
    return x / np.sqrt(d2.max())


def eqx_epsilon(solver, eps):
    return eqx.tree_at(lambda s: s.epsilon, solver, eps)


# ---- dense geometries, a batch with bad members -------------------------------------------
N, M_ = 8, 6


def _dense(Cx, Cy, M, alpha, a, b, eps):
    solver = eqx_epsilon(PLAIN, eps)
    sol = js.ot.solve_gw(
        js.ot.Geometry(Cx),
        js.ot.Geometry(Cy),
        a,
        b,
        geom_xy=js.ot.Geometry(M),
        fused_penalty=alpha,
        solver=solver,
        throw=False,
    )
    return sol.reg_cost, (sol.plan, sol.cost, sol.result)


# value, plan, cost, result and d reg_cost / d Cx of every member, in one compiled program
_dense_batch = jax.jit(jax.vmap(jax.value_and_grad(_dense, has_aux=True)))


def _dense_data():
    rng = np.random.default_rng(0)
    x, y = _normalised(rng.standard_normal((N, 2))), _normalised(rng.standard_normal((M_, 3)))
    Cx, Cy = pot.dist(x, x), pot.dist(y, y)
    Mxy = pot.dist(x[:, :1], y[:, :1])
    a = rng.uniform(0.5, 1.5, N)
    b = rng.uniform(0.5, 1.5, M_)
    return Cx, Cy, Mxy, a / a.sum(), b / b.sum()


@needs_x64
def test_dense_batch_matches_pot_with_one_bad_member_of_each_kind():
    Cx, Cy, Mxy, a, b = _dense_data()
    u, v = np.full(N, 1 / N), np.full(M_, 1 / M_)
    # (Cx, Cy, fused_penalty, a, b, ε, expected result)
    members = [
        (Cx, Cy, 0.0, u, v, 0.05, R.successful),  # GW (the linear term's weight 0)
        # fused GW, weighted: λ = 1.5, ε = 0.075 is POT's alpha = 1/(1 + λ) = 0.4, ε = 0.03
        (Cx, Cy, 1.5, a, b, 0.075, R.successful),
        (np.where(np.eye(N) > 0, np.nan, Cx), Cy, 1.0, u, v, 0.05, R.nonfinite),
        (Cx, Cy, 1.0, np.r_[-0.1, u[1:] + 0.1 / (N - 1)], v, 0.05, R.invalid_input),
        (Cx, Cy, 1.0, u, v, -0.05, R.invalid_input),  # ε ≤ 0
        (Cx, Cy, -0.5, u, v, 0.05, R.invalid_input),  # a negative fused_penalty
        (Cx, Cy, 1.0, u, 2 * v, 0.05, R.invalid_input),  # unequal masses
    ]
    stack = lambda i: jnp.asarray(
        np.stack([np.broadcast_to(m[i], np.shape(m[i])) for m in members])
    )
    Ms = jnp.asarray(np.stack([Mxy] * len(members)))
    (reg, (plan, cost, result)), grad = _dense_batch(
        stack(0), stack(1), Ms, stack(2), stack(3), stack(4), stack(5)
    )
    for i, m in enumerate(members):
        assert (result == m[-1])[i], (i, result._value[i])
    # POT, same ε, same loss, same iteration, run to convergence
    T0, log0 = pot.gromov.entropic_gromov_wasserstein(
        Cx, Cy, u, v, epsilon=0.05, log=True, max_iter=5000, tol=1e-13
    )
    T1, log1 = pot.gromov.entropic_fused_gromov_wasserstein(
        Mxy, Cx, Cy, a, b, epsilon=0.03, alpha=0.4, log=True, max_iter=5000, tol=1e-13
    )
    np.testing.assert_allclose(plan[0], T0, atol=1e-9)
    np.testing.assert_allclose(cost[0], log0["gw_dist"], rtol=1e-8)
    np.testing.assert_allclose(plan[1], T1, atol=1e-9)
    np.testing.assert_allclose(cost[1], log1["fgw_dist"] / 0.4, rtol=1e-8)  # POT's is α E
    # reg_cost = cost + ε KL(T | a⊗b)
    kl = np.sum(T1 * np.log(T1 / np.outer(a, b)))
    np.testing.assert_allclose(reg[1], (log1["fgw_dist"] + 0.03 * kl) / 0.4, rtol=1e-8)
    # d reg_cost / d Cx with the plan fixed (envelope): 2 Σ_jl (Cx_ik − Cy_jl) T_ij T_kl ...
    # checked in closed form: ∂/∂Cx_ik of Σ_jl (Cx_ik − Cy_jl)² T_ij T_kl
    L = 2 * (Cx[:, None, :, None] - Cy[None, :, None, :])
    ref = 1.0 * np.einsum("ijkl,ij,kl->ik", L, T0, T0)
    np.testing.assert_allclose(grad[0], ref, rtol=1e-7, atol=1e-10)
    # throw=False: the bad members' gradients are finite too (never raise, never NaN the good)
    assert np.all(np.isfinite(np.asarray(grad[0])[[0, 1, 3, 4, 5, 6]]))


# ---- point clouds (the low-rank path), float64 and float32 ---------------------------------
n = 12


def _cloud_loss(x, y, a, b, eps, solver):
    solver = eqx_epsilon(solver, eps)
    sol = js.ot.solve_gw(
        js.ot.PointCloud(x, x), js.ot.PointCloud(y, y), a, b, solver=solver, throw=False
    )
    return sol.reg_cost, (sol.plan, sol.cost, sol.result)


_cloud64 = jax.jit(jax.value_and_grad(_cloud_loss, argnums=(0, 1, 2, 4), has_aux=True))


def _rotated_permuted(seed):
    rng = np.random.default_rng(seed)
    x = _normalised(rng.standard_normal((n, 2)) * np.array([1.0, 0.4]))
    perm = rng.permutation(n)
    c, s = np.cos(1.0), np.sin(1.0)
    Q = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    y = np.c_[x[perm] @ np.array([[c, -s], [s, c]]), np.zeros(n)] @ Q  # in 3-D
    return jnp.asarray(x), jnp.asarray(y), perm  # jax arrays: numpy ones retrace jax.jit


@needs_x64
@pytest.mark.parametrize("seed", [1, 2])
def test_rotated_permuted_copy_is_recovered(seed):
    x, y, perm = _rotated_permuted(seed)
    u = jnp.asarray(np.full(n, 1 / n))  # not weakly typed: one compilation
    (_, (plan, cost, result)), _ = _cloud64(x, y, u, u, 0.002, TIGHT)
    assert result == R.successful, R[result]
    # T matches x[perm[j]] with y[j]: the plan's argmax undoes the permutation
    assert np.all(np.argmax(plan, axis=0) == perm)
    # far below the GW cost of the independent coupling (the true matching's is 0)
    u = np.asarray(u)
    x, y = np.asarray(x), np.asarray(y)
    constC, hC1, hC2 = pot.gromov.init_matrix(pot.dist(x, x), pot.dist(y, y), u, u)
    assert cost < 0.05 * pot.gromov.gwloss(constC, hC1, hC2, np.outer(u, u))


@needs_x64
def test_low_rank_path_matches_pot_and_finite_differences():
    rng = np.random.default_rng(3)
    x, y = _normalised(rng.standard_normal((n, 2))), _normalised(rng.standard_normal((n, 3)))
    a = rng.uniform(0.5, 1.5, n)
    # jax arrays throughout: jax.jit caches numpy and jax arguments apart
    x, y, a, b = (jnp.asarray(v) for v in (x, y, a / a.sum(), np.full(n, 1 / n)))
    eps = 0.05
    f = lambda x, y, a, eps: _cloud64(x, y, a, b, eps, TIGHT)
    (reg, (plan, cost, result)), (gx, gy, ga, geps) = f(x, y, a, eps)
    assert result == R.successful, R[result]
    xn, yn, an, bn = (np.asarray(v) for v in (x, y, a, b))
    T, log = pot.gromov.entropic_gromov_wasserstein(
        pot.dist(xn, xn), pot.dist(yn, yn), an, bn, epsilon=eps, log=True, max_iter=5000, tol=1e-13
    )
    np.testing.assert_allclose(plan, T, atol=1e-9)
    np.testing.assert_allclose(cost, log["gw_dist"], rtol=1e-8)
    # envelope-theorem gradients of reg_cost against central differences along directions
    h = 1e-5
    value = lambda *args: float(f(*args)[0][0])
    dx, dy = rng.standard_normal(x.shape), rng.standard_normal(y.shape)
    da = rng.standard_normal(n)
    da -= da.mean()  # keeps the masses equal
    fd = lambda shift: (value(*shift(h)) - value(*shift(-h))) / (2 * h)
    checks = [
        (fd(lambda t: (x + t * dx, y, a, eps)), np.sum(gx * dx)),
        (fd(lambda t: (x, y + t * dy, a, eps)), np.sum(gy * dy)),
        (fd(lambda t: (x, y, a + t * da, eps)), np.sum(ga * da)),
        (fd(lambda t: (x, y, a, eps + t)), geps),
    ]
    for numeric, analytic in checks:
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-9)
    # new points, weights and ε (every test's calls) never compiled anything again
    assert _cloud64._cache_size() == 1


with jax.enable_x64(False):
    _cloud32 = jax.jit(jax.value_and_grad(_cloud_loss, argnums=0, has_aux=True))


def test_float32_defaults_recover_the_correspondence_and_give_the_float64_gradient():
    x, y, perm = _rotated_permuted(1)
    solver = js.ot.GromovWasserstein(epsilon=0.002)  # every other default
    with jax.enable_x64(False):
        u = jnp.full(n, 1 / n, jnp.float32)
        x32, y32 = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
        (reg, (plan, cost, result)), g = _cloud32(x32, y32, u, u, 0.002, solver)
        assert plan.dtype == jnp.float32 and g.dtype == jnp.float32
    assert result == R.successful, R[result]
    assert np.all(np.argmax(plan, axis=0) == perm)
    assert np.all(np.isfinite(g))
    if X64:
        u64 = jnp.asarray(np.full(n, 1 / n))
        (_, _), (g64, *_) = _cloud64(x, y, u64, u64, 0.002, TIGHT)
        np.testing.assert_allclose(g, g64, atol=2e-3 * np.abs(g64).max())


# ---- the KL loss, with throw=True ----------------------------------------------------------
@jax.jit
def _kl(Cx, Cy):
    sol = js.ot.solve_gw(js.ot.Geometry(Cx), js.ot.Geometry(Cy), loss="kl", solver=PLAIN)
    return sol.plan, sol.cost


@needs_x64
def test_kl_loss_matches_pot_and_throw_raises_on_nan():
    Cx, Cy, *_ = _dense_data()
    Cx, Cy = Cx + 0.1, Cy + 0.1  # the KL loss needs positive costs
    plan, cost = _kl(Cx, Cy)
    T, log = pot.gromov.entropic_gromov_wasserstein(
        Cx, Cy, loss_fun="kl_loss", epsilon=0.05, log=True, max_iter=5000, tol=1e-13
    )
    np.testing.assert_allclose(plan, T, atol=1e-9)
    np.testing.assert_allclose(cost, log["gw_dist"], rtol=1e-8)
    with pytest.raises(Exception, match="NaN|nonfinite"):
        bad = Cx.copy()
        bad[0, 1] = np.nan
        jax.block_until_ready(_kl(bad, Cy))


# ---- static misuse: clear errors at trace time (nothing is compiled) -----------------------
def test_static_misuse_raises_clear_errors():
    x = jnp.zeros((4, 2))
    gx, gy = js.ot.PointCloud(x, x), js.ot.PointCloud(jnp.zeros((3, 3)), jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="geom_xy.*4 × 3"):
        js.ot.solve_gw(gx, gy, geom_xy=js.ot.Geometry(jnp.zeros((3, 4))), fused_penalty=0.5)
    with pytest.raises(ValueError, match="fused_penalty.*>= 0"):
        js.ot.solve_gw(gx, gy, fused_penalty=-1.0)
    with pytest.raises(ValueError, match="epsilon.*positive"):
        js.ot.GromovWasserstein(epsilon=0.0)
    with pytest.raises(ValueError, match="square"):
        js.ot.solve_gw(js.ot.PointCloud(x, jnp.zeros((3, 2))), gy)
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        js.ot.solve_gw(gx, gy, b=jnp.ones(4) / 4)
    with pytest.raises(ValueError, match="loss"):
        js.ot.solve_gw(gx, gy, loss="l1")
    with pytest.raises(TypeError, match="GromovWasserstein"):
        js.ot.solve_gw(gx, gy, solver=js.ot.Sinkhorn())
    with pytest.raises(TypeError, match="geometry"):
        js.ot.solve_gw(jnp.zeros((4, 4)), gy)
