"""Projections, proxes and the constrained minimisers (ProjectedGradient, ProximalGradient,
LBFGSB): against SciPy / scikit-learn / closed forms, derivatives against finite differences and
active-set closed forms, vmap, failure channels. Runs in both dtypes (tests/test_float32.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize, nnls

import jaxsolve as js

F32 = not jax.config.read("jax_enable_x64")
DT = jnp.float32 if F32 else jnp.float64
TOL = 1e-4 if F32 else 1e-9  # solver tolerance
ATOL = 2e-3 if F32 else 1e-6  # agreement with a reference solution
P = js.projections


def _fd_jac(f, x, eps):
    """Central finite-difference Jacobian of `f` (array -> array) at `x`, in float64 numpy."""
    x = np.asarray(x, np.float64)
    cols = []
    for i in range(x.size):
        e = np.zeros_like(x).ravel()
        e[i] = eps
        e = e.reshape(x.shape)
        cols.append(
            (np.asarray(f(x + e), np.float64) - np.asarray(f(x - e), np.float64)) / (2 * eps)
        )
    return np.stack(cols, -1)


def _slsqp_projection(x, constraints, bounds=None):
    x = np.asarray(x, np.float64)
    r = minimize(
        lambda p: 0.5 * np.sum((p - x) ** 2),
        np.zeros_like(x),
        jac=lambda p: p - x,
        method="SLSQP",
        constraints=constraints,
        bounds=bounds,
        options=dict(ftol=1e-14, maxiter=500),
    )
    return r.x


X6 = np.array([0.9, -0.4, 1.7, 0.2, -1.3, 0.55])
A6 = np.array([1.0, 2.0, -0.5, 0.3, 1.5, -1.0])

# name: (projection of x, SLSQP reference of x)
PROJECTIONS = {
    "simplex": (
        lambda x: P.simplex(x, 2.0),
        lambda x: _slsqp_projection(
            x, [dict(type="eq", fun=lambda p: p.sum() - 2.0)], [(0, None)] * 6
        ),
    ),
    "l1_ball": (
        lambda x: P.l1_ball(x, 1.5),
        # |p| ≤ q, Σ q ≤ r, in the variables (p, q)
        lambda x: minimize(
            lambda pq: 0.5 * np.sum((pq[:6] - x) ** 2),
            np.zeros(12),
            jac=lambda pq: np.concatenate([pq[:6] - x, np.zeros(6)]),
            method="SLSQP",
            constraints=[
                dict(type="ineq", fun=lambda pq: 1.5 - pq[6:].sum()),
                dict(type="ineq", fun=lambda pq: pq[6:] - pq[:6]),
                dict(type="ineq", fun=lambda pq: pq[6:] + pq[:6]),
            ],
            options=dict(ftol=1e-15, maxiter=500),
        ).x[:6],
    ),
    "l2_ball": (
        lambda x: P.l2_ball(x, 1.0),
        lambda x: _slsqp_projection(x, [dict(type="ineq", fun=lambda p: 1.0 - p @ p)]),
    ),
    "box": (
        lambda x: P.box(x, (-0.5, jnp.array([1.0, 1.0, 1.0, 0.1, 1.0, 1.0]))),
        lambda x: _slsqp_projection(x, [], [(-0.5, 1.0)] * 3 + [(-0.5, 0.1)] + [(-0.5, 1.0)] * 2),
    ),
    "hyperplane": (
        lambda x: P.hyperplane(x, (jnp.asarray(A6, x.dtype), 0.7)),
        lambda x: _slsqp_projection(x, [dict(type="eq", fun=lambda p: A6 @ p - 0.7)]),
    ),
    "halfspace": (
        lambda x: P.halfspace(x, (jnp.asarray(A6, x.dtype), 0.7)),
        lambda x: _slsqp_projection(x, [dict(type="ineq", fun=lambda p: 0.7 - A6 @ p)]),
    ),
    "box_section": (
        lambda x: P.box_section(x, (-0.2, 0.8, jnp.asarray(A6, x.dtype), 0.9)),
        lambda x: _slsqp_projection(
            x, [dict(type="eq", fun=lambda p: A6 @ p - 0.9)], [(-0.2, 0.8)] * 6
        ),
    ),
    "nonnegative": (
        lambda x: P.nonnegative(x),
        lambda x: _slsqp_projection(x, [], [(0, None)] * 6),
    ),
}


@jax.jit
def _all_projections(x):
    """Every projection's value, Jacobian (autodiff) and vmap over a batch: one compilation."""
    out = {}
    xs = jnp.stack([x, 2 * x, -x])
    for name, (proj, _) in PROJECTIONS.items():
        out[name] = (proj(x), jax.jacobian(proj)(x), jax.vmap(proj)(xs))
    return out


def test_projections_values_jacobians_vmap():
    x = jnp.asarray(X6, DT)
    out = _all_projections(x)
    for name, (p, J, batch) in out.items():
        assert p.dtype == DT and p.shape == x.shape, name
        ref = PROJECTIONS[name][1]
        np.testing.assert_allclose(p, ref(X6), atol=1e-4 if F32 else 1e-6, err_msg=name)
        for v, b in zip([x, 2 * x, -x], batch):
            np.testing.assert_allclose(b, _all_projections(v)[name][0], atol=1e-6, err_msg=name)
        if not F32:  # the Jacobian against central differences of the values
            fd = _fd_jac(lambda v: _all_projections(jnp.asarray(v))[name][0], X6, 1e-7)
            np.testing.assert_allclose(J, fd, atol=1e-6, err_msg=name)


HYPER = np.array([2.0, 1.5, 1.0, 0.9, 0.7, 0.3])


@jax.jit
def _projections_of_hyperparameters(h):
    x = jnp.asarray(X6, h.dtype)
    a = jnp.asarray(A6, h.dtype)
    return jnp.stack(
        [
            P.simplex(x, h[0]),
            P.l1_ball(x, h[1]),
            P.l2_ball(x, h[2]),
            P.box_section(x, (-0.2, 0.8, a, h[3])),
            P.hyperplane(x, (a, h[4])),
            P.box(x, (-0.5, h[5])),
        ]
    )


def test_projection_hyperparameter_derivatives():
    if F32:
        pytest.skip("finite differences need float64")
    J = jax.jit(jax.jacobian(_projections_of_hyperparameters))(jnp.asarray(HYPER))
    fd = _fd_jac(lambda h: _projections_of_hyperparameters(jnp.asarray(h)), HYPER, 1e-7)
    # J[k, :, j]: derivative of projection k in hyperparameter j (only j = k is non-zero)
    np.testing.assert_allclose(J, fd, atol=1e-6)
    assert np.abs(np.einsum("kik->ki", J)).sum() > 1  # the derivatives are not all zero


PX = js.prox
PROXES = {  # prox at x with step η, and a check of its optimality (subgradient) conditions
    "l1": lambda x, eta: PX.l1(x, 0.4, eta),
    "nonnegative_l1": lambda x, eta: PX.nonnegative_l1(x, 0.4, eta),
    "elastic_net": lambda x, eta: PX.elastic_net(x, (0.4, 0.6), eta),
    "group_l2": lambda x, eta: PX.group_l2(x, 0.4, eta),
    "indicator_simplex": lambda x, eta: PX.indicator(P.simplex)(x, 1.0, eta),
}


def _prox_reference(name, x, eta):
    """argmin ½‖p − x‖² + η g(p) by a generic solver (Powell on the non-smooth objective,
    or SLSQP for the constrained ones)."""
    x = np.asarray(x, np.float64)
    g = {
        "l1": lambda p: 0.4 * np.abs(p).sum(),
        "elastic_net": lambda p: 0.4 * np.abs(p).sum() + 0.3 * p @ p,
        "group_l2": lambda p: 0.4 * np.linalg.norm(p),
    }
    if name == "nonnegative_l1":
        return _slsqp_projection(x - eta * 0.4, [], [(0, None)] * x.size)
    if name == "indicator_simplex":
        return _slsqp_projection(
            x, [dict(type="eq", fun=lambda p: p.sum() - 1)], [(0, None)] * x.size
        )
    obj = lambda p: 0.5 * np.sum((p - x) ** 2) + eta * g[name](p)
    return minimize(obj, x, method="Powell", options=dict(xtol=1e-10, ftol=1e-14, maxiter=20000)).x


@jax.jit
def _all_proxes(x, eta):
    return {
        name: (prox(x, eta), jax.jacobian(prox)(x, eta), jax.jacobian(prox, argnums=1)(x, eta))
        for name, prox in PROXES.items()
    }


def test_proxes_values_and_derivatives():
    x = jnp.asarray(X6, DT)
    eta = jnp.asarray(0.7, DT)
    out = _all_proxes(x, eta)
    for name, (p, J, d_eta) in out.items():
        assert p.dtype == DT, name
        ref = _prox_reference(name, X6, 0.7)
        np.testing.assert_allclose(p, ref, atol=1e-4 if F32 else 1e-5, err_msg=name)
        if not F32:
            fd = _fd_jac(lambda v: _all_proxes(jnp.asarray(v), eta)[name][0], X6, 1e-7)
            np.testing.assert_allclose(J, fd, atol=1e-6, err_msg=name)
            fd_eta = (
                _all_proxes(x, eta + 1e-7)[name][0] - _all_proxes(x, eta - 1e-7)[name][0]
            ) / 2e-7
            np.testing.assert_allclose(d_eta, fd_eta, atol=1e-6, err_msg=name)
    # NaN propagates through every prox (never thresholded to a clean 0)
    bad = _all_proxes(x.at[0].set(jnp.nan), eta)
    assert all(bool(jnp.isnan(v[0][0])) for v in bad.values())


# --------------------------------------------------------------------------------------------
# Solvers

KA, KB = jax.random.split(jax.random.PRNGKey(3))
A = jax.random.normal(KA, (30, 8), DT)
B = A @ jax.random.normal(KB, (8,), DT) + 0.3 * jax.random.normal(KB, (30,), DT)
INF = jnp.full(8, jnp.inf, DT)


def lsq(w, data):
    return 0.5 * jnp.sum((data[0] @ w - data[1]) ** 2)


def nonneg(y, data):
    return P.nonnegative(y)


def on_simplex(y, data):
    return P.simplex(y, data[2])


PG = js.ProjectedGradient(nonneg)
LBFGSB = js.LBFGSB()


def _pg_loss(b):
    sol = js.minimise(lsq, jnp.zeros(8, DT), (A, b), solver=PG, tol=TOL, max_steps=3000)
    return sol.value.sum(), sol


# value and gradient in one compilation
nnls_pg = jax.jit(jax.value_and_grad(_pg_loss, has_aux=True))


def _lbfgsb_value(b, lower, upper):
    sol = js.minimise(
        lsq,
        jnp.zeros(8, DT),
        (A, b),
        solver=LBFGSB,
        bounds=(lower, upper),
        tol=TOL,
        max_steps=500,
        throw=False,
    )
    return sol.value, sol


# the solution, its Jacobians in b and in the lower bounds, one compilation
nnls_lbfgsb = jax.jit(jax.jacfwd(_lbfgsb_value, argnums=(0, 1), has_aux=True))


def _nnls_reference(b):
    return nnls(np.asarray(A, np.float64), np.asarray(b, np.float64))[0]


def test_nnls_matches_scipy_and_active_set_derivative():
    ref = _nnls_reference(B)
    S = ref > 0
    assert 0 < S.sum() < 8  # some bounds active
    # d Σ w*(b) / db: on the support S, w_S = (A_Sᵀ A_S)⁻¹ A_Sᵀ b
    As = np.asarray(A, np.float64)[:, S]
    g_ref = As @ np.linalg.solve(As.T @ As, np.ones(S.sum()))
    (_, sol), g_pg = nnls_pg(B)
    (J_b, _), sol_b = nnls_lbfgsb(B, jnp.zeros(8, DT), INF)
    for s in (sol, sol_b):
        assert s.result == js.RESULTS.successful and s.stats["error"] <= TOL
        assert (s.value >= 0).all()
        np.testing.assert_allclose(s.value, ref, atol=ATOL)
    np.testing.assert_allclose(g_pg, g_ref, atol=10 * ATOL)
    np.testing.assert_allclose(J_b.sum(0), g_ref, atol=10 * ATOL)
    assert int(sol_b.stats["num_steps"]) < int(sol.stats["num_steps"])  # quasi-Newton pays


def test_bounds_derivative_nan_and_lower_above_upper():
    lower = jnp.full(8, -0.1, DT)
    (_, J_lo), sol = nnls_lbfgsb(B, lower, INF)
    active = np.asarray(sol.value) <= -0.1 + 1e-6
    assert 0 < active.sum() < 8
    # a coordinate on its bound moves with it; against central differences of the solutions
    if not F32:
        fd = _fd_jac(
            lambda lo: nnls_lbfgsb(B, jnp.asarray(lo), INF)[1].value, np.asarray(lower), 1e-6
        )
        np.testing.assert_allclose(J_lo, fd, atol=1e-5)
    np.testing.assert_allclose(np.diag(J_lo)[active], 1.0, atol=ATOL)
    # NaN data: nonfinite; lower > upper: invalid_input (both with throw=False, same program)
    _, bad = nnls_lbfgsb(B.at[0].set(jnp.nan), lower, INF)
    assert bad.result == js.RESULTS.nonfinite
    _, crossed = nnls_lbfgsb(B, lower.at[3].set(1.0), jnp.zeros(8, DT))
    assert crossed.result == js.RESULTS.invalid_input
    assert "invalid" in js.RESULTS[crossed.result]
    assert nnls_lbfgsb._cache_size() == 1  # new data and bounds compile nothing


@jax.jit
@jax.vmap
def _batched_nnls_pg(b):
    sol = js.minimise(
        lsq, jnp.zeros(8, DT), (A, b), solver=PG, tol=TOL, max_steps=3000, throw=False
    )
    return sol.value, sol.result


def test_vmap_one_bad_member():
    bs = jnp.stack([B, 0.5 * B, B.at[0].set(jnp.nan)])
    values, results = _batched_nnls_pg(bs)
    assert bool((results == js.RESULTS.successful)[0]) and bool(
        (results == js.RESULTS.successful)[1]
    )
    assert bool((results == js.RESULTS.nonfinite)[2])
    np.testing.assert_allclose(values[0], nnls_pg(B)[0][1].value, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(values[1], _nnls_reference(0.5 * B), atol=ATOL)


def _simplex_value(s):
    sol = js.minimise(
        lsq,
        jnp.full(8, 1 / 8, DT),
        (A, B, s),
        solver=js.ProjectedGradient(on_simplex),
        tol=TOL,
        max_steps=3000,
    )
    return sol.value, sol


simplex_fit = jax.jit(jax.jacfwd(_simplex_value, has_aux=True))


def test_simplex_regression_and_radius_derivative():
    if F32:
        pytest.skip("float64 only (the float32 pass covers ProjectedGradient with NNLS)")
    dw, sol = simplex_fit(2.0)
    An, Bn = np.asarray(A), np.asarray(B)
    ref = minimize(
        lambda w: 0.5 * np.sum((An @ w - Bn) ** 2),
        np.full(8, 0.25),
        jac=lambda w: An.T @ (An @ w - Bn),
        method="SLSQP",
        bounds=[(0, None)] * 8,
        constraints=[dict(type="eq", fun=lambda w: w.sum() - 2.0)],
        options=dict(ftol=1e-15, maxiter=1000),
    ).x
    np.testing.assert_allclose(sol.value, ref, atol=1e-6)
    assert abs(float(sol.value.sum()) - 2.0) < 1e-12
    # d w*/ds, implicit, against central differences of the solves
    fd = (simplex_fit(2.0 + 1e-5)[1].value - simplex_fit(2.0 - 1e-5)[1].value) / 2e-5
    np.testing.assert_allclose(dw, fd, atol=1e-5)


N = A.shape[0]


def _smooth(w, hyper):
    return 0.5 / N * jnp.sum((A @ w - B) ** 2)


def _en_prox(w, hyper, step):
    return js.prox.elastic_net(w, hyper, step)


def _elastic_net_value(l1, l2):
    sol = js.minimise(
        _smooth,
        jnp.zeros(8, DT),
        (l1, l2),
        solver=js.ProximalGradient(_en_prox),
        tol=TOL / 10,
        max_steps=5000,
    )
    return sol.value, sol


elastic_net_fit = jax.jit(jax.jacfwd(_elastic_net_value, has_aux=True))


def test_lasso_and_elastic_net_vs_sklearn_and_penalty_derivative():
    from sklearn.linear_model import ElasticNet, Lasso

    An, Bn = np.asarray(A, np.float64), np.asarray(B, np.float64)
    kw = dict(fit_intercept=False, tol=1e-14, max_iter=100000)
    for alpha, ratio in [(0.3, 1.0), (0.2, 0.5)]:
        dw, sol = elastic_net_fit(
            jnp.asarray(alpha * ratio, DT), jnp.asarray(alpha * (1 - ratio), DT)
        )
        est = (
            Lasso(alpha=alpha, **kw)
            if ratio == 1.0
            else ElasticNet(alpha=alpha, l1_ratio=ratio, **kw)
        )
        np.testing.assert_allclose(sol.value, est.fit(An, Bn).coef_, atol=ATOL)
    # Lasso: on the support S, w_S = H_SS⁻¹ (A_Sᵀb/n − λ sign w_S), so dw_S/dλ = −H_SS⁻¹ sign_S
    dw, sol = elastic_net_fit(jnp.asarray(0.3, DT), jnp.asarray(0.0, DT))
    w = np.asarray(sol.value, np.float64)
    S = w != 0
    assert 0 < S.sum() < 8
    d_ref = np.zeros(8)
    d_ref[S] = -np.linalg.solve(An[:, S].T @ An[:, S] / N, np.sign(w[S]))
    np.testing.assert_allclose(dw, d_ref, rtol=1e-3 if F32 else 1e-6, atol=1e-3 if F32 else 1e-6)
    assert elastic_net_fit._cache_size() == 1  # new penalties compile nothing


def rosen(y, _):
    x = jnp.concatenate([y["head"], y["tail"]])
    return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def test_bounded_rosenbrock_pytree_vs_scipy_lbfgsb():
    # a pytree unknown; bounds as pytrees and scalars, one coordinate unbounded below
    y0 = {"head": jnp.array([-1.2, 1.0, -1.2], DT), "tail": jnp.array([1.0, -1.2, 1.0], DT)}
    lower = {"head": jnp.array([-jnp.inf, -2.0, -2.0], DT), "tail": -2.0}
    upper = {"head": jnp.array([0.5, 2.0, 2.0], DT), "tail": jnp.array([0.5, 2.0, 2.0], DT)}
    sol = js.minimise(rosen, y0, solver=LBFGSB, bounds=(lower, upper), tol=TOL, max_steps=500)
    flat = lambda t: np.concatenate(
        [np.broadcast_to(np.asarray(t[k], np.float64), (3,)) for k in ("head", "tail")]
    )
    split = lambda x: {"head": x[:3].astype(DT), "tail": x[3:].astype(DT)}
    f = jax.jit(jax.value_and_grad(lambda x: rosen(split(x), None)))
    r = minimize(
        lambda x: tuple(np.asarray(v, np.float64) for v in f(x)),
        flat(y0),
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(flat(lower), flat(upper))),
        options=dict(gtol=1e-10, ftol=0, maxiter=5000),
    )
    np.testing.assert_allclose(flat(sol.value), r.x, atol=10 * ATOL)
    assert (flat(sol.value) <= flat(upper)).all() and (flat(sol.value) >= flat(lower)).all()
    assert int(sol.stats["num_steps"]) <= 3 * r.nit


@pytest.mark.slow  # the checkpointed unrolled loop compiles for tens of seconds
def test_implicit_matches_unrolled():
    if F32:
        pytest.skip("float64 only")
    L = float(jnp.linalg.eigvalsh(A.T @ A)[-1])
    solver = js.ProjectedGradient(nonneg, stepsize=1 / L)  # unrolling needs a fixed step

    def loss(b, adjoint):
        sol = js.minimise(
            lsq, jnp.zeros(8, DT), (A, b), solver=solver, tol=1e-10, max_steps=400, adjoint=adjoint
        )
        return sol.value.sum()

    g_imp = jax.grad(loss)(B, js.ImplicitAdjoint())
    g_unr = jax.grad(loss)(B, js.UnrollAdjoint())
    np.testing.assert_allclose(g_imp, g_unr, atol=1e-8)


def test_static_misuse_raises_at_trace_time():
    y0 = jnp.zeros(8, DT)
    with pytest.raises(ValueError, match="same structure and shapes"):
        js.minimise(lsq, y0, (A, B), solver=js.ProjectedGradient(lambda y, d: y[:3]))
    with pytest.raises(TypeError, match="LBFGSB"):
        js.minimise(lsq, y0, (A, B), bounds=(0.0, None))
    with pytest.raises(TypeError, match="projection"):
        js.minimise(lsq, y0, (A, B), solver=PG, bounds=(0.0, None))
    with pytest.raises(TypeError, match="projection"):
        js.ProjectedGradient(3.0)
    with pytest.raises(TypeError, match="prox"):
        js.ProximalGradient(None)
    with pytest.raises(ValueError, match="broadcast"):
        js.minimise(lsq, y0, (A, B), solver=LBFGSB, bounds=(jnp.zeros(3), None))
    with pytest.raises(TypeError, match="pair"):
        js.minimise(lsq, y0, (A, B), solver=LBFGSB, bounds=jnp.zeros(8))
    with pytest.raises(TypeError, match="one array"):
        P.simplex({"a": jnp.ones(2)})
