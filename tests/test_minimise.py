"""minimise: solutions against closed forms; derivatives against closed forms, finite differences
and unrolling; jvp against vjp; second order."""

import jax
import jax.numpy as jnp
import lineax as lx
import optax
import pytest
from conftest import finite_difference

import jaxsolve as js

X = jax.random.normal(jax.random.PRNGKey(1), (30, 4))
T = X @ jnp.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * jax.random.normal(jax.random.PRNGKey(2), (30,))
XV = jax.random.normal(jax.random.PRNGKey(3), (10, 4))
TV = XV @ jnp.array([1.0, -2.0, 0.5, 3.0])


def ridge(w, log_lam):
    return 0.5 * jnp.sum((X @ w - T) ** 2) + 0.5 * jnp.exp(log_lam) * jnp.sum(w**2)


def ridge_closed(log_lam):
    return jnp.linalg.solve(X.T @ X + jnp.exp(log_lam) * jnp.eye(4), X.T @ T)


def val_loss(w):
    return 0.5 * jnp.sum((XV @ w - TV) ** 2)


SOLVERS = {
    "lbfgs": (js.LBFGS(), 200),
    "gd": (js.GradientDescent(learning_rate=0.01), 20000),
    "adam": (js.OptaxMinimiser(optax.adam(0.05)), 20000),
}


@pytest.mark.parametrize("name", SOLVERS)
def test_solution_matches_closed_form(name):
    solver, steps = SOLVERS[name]
    sol = js.minimise(ridge, jnp.zeros(4), 0.3, solver=solver, tol=1e-8, max_steps=steps)
    assert sol.result == js.RESULTS.successful
    assert sol.stats["error"] <= 1e-8
    assert 0 < int(sol.stats["num_steps"]) <= steps
    assert jnp.allclose(sol.value, ridge_closed(0.3), atol=1e-7)


def hyper_loss(log_lam, adjoint=js.ImplicitAdjoint()):
    w = js.minimise(ridge, jnp.zeros(4), log_lam, tol=1e-11, max_steps=500, adjoint=adjoint).value
    return val_loss(w)


LINEAR_SOLVERS = {
    "auto": None,
    "cg": lx.CG(rtol=1e-12, atol=1e-12),
    "gmres": lx.GMRES(rtol=1e-12, atol=1e-12),
    "lu": lx.LU(),
    "neumann": js.Neumann(steps=3000, alpha=1.0 / 400.0),
}


@pytest.mark.parametrize("name", LINEAR_SOLVERS)
def test_hypergradient_matches_closed_form(name):
    adjoint = js.ImplicitAdjoint(linear_solver=LINEAR_SOLVERS[name])
    g = jax.grad(hyper_loss)(0.3, adjoint)
    g_true = jax.grad(lambda ll: val_loss(ridge_closed(ll)))(0.3)
    rtol = 1e-4 if name == "neumann" else 1e-8
    assert jnp.allclose(g, g_true, rtol=rtol), (g, g_true)


def test_hypergradient_matches_finite_differences():
    g = jax.grad(hyper_loss)(0.3)
    assert jnp.allclose(g, finite_difference(hyper_loss, 0.3, eps=1e-5), rtol=1e-6)


def test_implicit_matches_unrolled():
    unrolled = lambda ll: val_loss(
        js.minimise(
            ridge,
            jnp.zeros(4),
            ll,
            solver=js.GradientDescent(0.01),
            tol=1e-10,
            max_steps=5000,
            adjoint=js.UnrollAdjoint(),
        ).value
    )
    assert jnp.allclose(jax.grad(hyper_loss)(0.3), jax.grad(unrolled)(0.3), rtol=1e-6)


def test_jvp_matches_vjp_and_jacobians():
    solve = lambda ll: js.minimise(ridge, jnp.zeros(4), ll, tol=1e-11).value
    J_fwd = jax.jacfwd(solve)(0.3)
    J_rev = jax.jacrev(solve)(0.3)
    assert jnp.allclose(J_fwd, J_rev, atol=1e-10)
    assert jnp.allclose(J_fwd, jax.jacobian(ridge_closed)(0.3), atol=1e-8)


def test_second_order_matches_closed_form():
    # d²/dλ² of the validation loss: the implicit rule differentiated again.
    h = jax.grad(jax.grad(hyper_loss))(0.3)
    h_true = jax.grad(jax.grad(lambda ll: val_loss(ridge_closed(ll))))(0.3)
    assert jnp.allclose(h, h_true, rtol=1e-6)


def test_hessian_vector_product_through_solve():
    # HVP of an outer loss of a per-feature regularised solution, forward-over-reverse.
    def inner(w, log_lams):
        return 0.5 * jnp.sum((X @ w - T) ** 2) + 0.5 * jnp.sum(jnp.exp(log_lams) * w**2)

    closed = lambda lls: jnp.linalg.solve(X.T @ X + jnp.diag(jnp.exp(lls)), X.T @ T)
    outer = lambda lls: val_loss(js.minimise(inner, jnp.zeros(4), lls, tol=1e-11).value)
    lls, v = jnp.array([0.1, -0.3, 0.5, 0.0]), jnp.array([1.0, 0.5, -1.0, 2.0])
    hvp = jax.jvp(jax.grad(outer), (lls,), (v,))[1]
    hvp_true = jax.jvp(jax.grad(lambda z: val_loss(closed(z))), (lls,), (v,))[1]
    assert jnp.allclose(hvp, hvp_true, rtol=1e-6)


def test_closed_over_arrays_are_differentiated():
    # The design matrix is closed over by the objective, not passed in args.
    def outer(Xc):
        fn = lambda w, _: 0.5 * jnp.sum((Xc @ w - T) ** 2) + 0.5 * jnp.sum(w**2)
        return val_loss(js.minimise(fn, jnp.zeros(4), None, tol=1e-11).value)

    closed = lambda Xc: val_loss(jnp.linalg.solve(Xc.T @ Xc + jnp.eye(4), Xc.T @ T))
    assert jnp.allclose(jax.grad(outer)(X), jax.grad(closed)(X), rtol=1e-6, atol=1e-9)


def test_pytree_variables():
    def fn(params, lam):
        pred = X @ params["w"] + params["b"]
        return 0.5 * jnp.sum((pred - T) ** 2) + 0.5 * lam * jnp.sum(params["w"] ** 2)

    sol = js.minimise(fn, {"w": jnp.zeros(4), "b": jnp.array(0.0)}, 0.5, tol=1e-9)
    Xa = jnp.concatenate([X, jnp.ones((30, 1))], axis=1)
    reg = jnp.diag(jnp.array([0.5, 0.5, 0.5, 0.5, 0.0]))
    wb = jnp.linalg.solve(Xa.T @ Xa + reg, Xa.T @ T)
    assert jnp.allclose(sol.value["w"], wb[:4], atol=1e-7)
    assert jnp.allclose(sol.value["b"], wb[4], atol=1e-7)


def test_float32_works():
    X32, T32 = X.astype(jnp.float32), T.astype(jnp.float32)
    fn = lambda w, lam: 0.5 * jnp.sum((X32 @ w - T32) ** 2) + 0.5 * lam * jnp.sum(w**2)
    sol = js.minimise(fn, jnp.zeros(4, jnp.float32), jnp.float32(0.5), tol=1e-3)
    assert sol.value.dtype == jnp.float32
    w = jnp.linalg.solve(X.T @ X + 0.5 * jnp.eye(4), X.T @ T)
    assert jnp.allclose(sol.value, w, atol=1e-3)
    g = jax.grad(
        lambda lam: jnp.sum(js.minimise(fn, jnp.zeros(4, jnp.float32), lam, tol=1e-3).value)
    )
    g32 = g(jnp.float32(0.5))
    g_true = jnp.sum(
        jax.jacobian(lambda lam: jnp.linalg.solve(X.T @ X + lam * jnp.eye(4), X.T @ T))(0.5)
    )
    assert g32.dtype == jnp.float32 and jnp.allclose(g32, g_true, rtol=1e-3)


def test_progress_callback_is_called():
    calls = []
    js.minimise(
        ridge,
        jnp.zeros(4),
        0.3,
        solver=js.GradientDescent(0.01),
        tol=1e-8,
        max_steps=2000,
        progress=lambda step, err: calls.append((int(step), float(err))),
    )
    assert len(calls) >= 2
    steps = [c[0] for c in calls]
    assert steps == sorted(steps) and calls[-1][1] <= 1e-8
