"""minimise: solutions against closed forms; derivatives against closed forms, finite differences
and unrolling; jvp against vjp; second order."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
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


# The closed forms and their derivatives, jitted: one compiled program each, shared by the
# tests (eagerly, each of their ops was a compilation of its own).
_ridge_closed = jax.jit(ridge_closed)
_closed_grad = jax.jit(jax.grad(lambda ll: val_loss(ridge_closed(ll))))


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
    assert jnp.allclose(sol.value, _ridge_closed(0.3), atol=1e-7)


def hyper_loss(log_lam, adjoint=js.ImplicitAdjoint()):
    w = js.minimise(ridge, jnp.zeros(4), log_lam, tol=1e-11, max_steps=500, adjoint=adjoint).value
    return val_loss(w)


# Jitted: the solve and its derivative in one compiled program per adjoint (eagerly they are
# compiled apart), shared by the tests; the adjoint is static.
_hyper_grad = eqx.filter_jit(jax.grad(hyper_loss))


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
    g = _hyper_grad(0.3, adjoint)
    g_true = _closed_grad(0.3)
    rtol = 1e-4 if name == "neumann" else 1e-8
    assert jnp.allclose(g, g_true, rtol=rtol), (g, g_true)


def test_hypergradient_matches_finite_differences():
    g = _hyper_grad(0.3, js.ImplicitAdjoint())  # the "auto" case's program
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
    assert jnp.allclose(
        _hyper_grad(0.3, js.ImplicitAdjoint()), jax.jit(jax.grad(unrolled))(0.3), rtol=1e-6
    )


def test_jvp_matches_vjp_and_jacobians():
    solve = lambda ll: js.minimise(ridge, jnp.zeros(4), ll, tol=1e-11).value
    # each jitted: one compilation, not one per piece or eager op
    J_fwd = jax.jit(jax.jacfwd(solve))(0.3)
    J_rev = jax.jit(jax.jacrev(solve))(0.3)
    assert jnp.allclose(J_fwd, J_rev, atol=1e-10)
    assert jnp.allclose(J_fwd, jax.jit(jax.jacobian(ridge_closed))(0.3), atol=1e-8)


def test_second_order_matches_closed_form():
    # d²/dλ² of the validation loss: the implicit rule differentiated again.
    h = jax.jit(jax.grad(jax.grad(hyper_loss)))(0.3)  # jitted: one compilation
    h_true = jax.jit(jax.grad(jax.grad(lambda ll: val_loss(ridge_closed(ll)))))(0.3)
    assert jnp.allclose(h, h_true, rtol=1e-6)


def test_hessian_vector_product_through_solve():
    # HVP of an outer loss of a per-feature regularised solution, forward-over-reverse.
    def inner(w, log_lams):
        return 0.5 * jnp.sum((X @ w - T) ** 2) + 0.5 * jnp.sum(jnp.exp(log_lams) * w**2)

    closed = lambda lls: jnp.linalg.solve(X.T @ X + jnp.diag(jnp.exp(lls)), X.T @ T)
    outer = lambda lls: val_loss(js.minimise(inner, jnp.zeros(4), lls, tol=1e-11).value)
    lls, v = jnp.array([0.1, -0.3, 0.5, 0.0]), jnp.array([1.0, 0.5, -1.0, 2.0])
    # jitted: one compilation each
    hvp = jax.jit(lambda lls, v: jax.jvp(jax.grad(outer), (lls,), (v,))[1])(lls, v)
    hvp_true = jax.jit(
        lambda z, v: jax.jvp(jax.grad(lambda z: val_loss(closed(z))), (z,), (v,))[1]
    )(lls, v)
    assert jnp.allclose(hvp, hvp_true, rtol=1e-6)


def test_closed_over_arrays_are_differentiated():
    # The design matrix is closed over by the objective, not passed in args.
    def outer(Xc):
        fn = lambda w, _: 0.5 * jnp.sum((Xc @ w - T) ** 2) + 0.5 * jnp.sum(w**2)
        return val_loss(js.minimise(fn, jnp.zeros(4), None, tol=1e-11).value)

    closed = lambda Xc: val_loss(jnp.linalg.solve(Xc.T @ Xc + jnp.eye(4), Xc.T @ T))
    # jitted: one compilation each
    assert jnp.allclose(
        jax.jit(jax.grad(outer))(X), jax.jit(jax.grad(closed))(X), rtol=1e-6, atol=1e-9
    )


def test_pytree_variables():
    def fn(params, lam):
        pred = X @ params["w"] + params["b"]
        return 0.5 * jnp.sum((pred - T) ** 2) + 0.5 * lam * jnp.sum(params["w"] ** 2)

    sol = js.minimise(fn, {"w": jnp.zeros(4), "b": jnp.array(0.0)}, 0.5, tol=1e-9)
    # NumPy (no eager op to compile)
    Xa = np.concatenate([np.asarray(X), np.ones((30, 1))], axis=1)
    reg = np.diag([0.5, 0.5, 0.5, 0.5, 0.0])
    wb = np.linalg.solve(Xa.T @ Xa + reg, Xa.T @ np.asarray(T))
    assert jnp.allclose(sol.value["w"], wb[:4], atol=1e-7)
    assert jnp.allclose(sol.value["b"], wb[4], atol=1e-7)


def test_float32_works():
    X32, T32 = X.astype(jnp.float32), T.astype(jnp.float32)
    fn = lambda w, lam: 0.5 * jnp.sum((X32 @ w - T32) ** 2) + 0.5 * lam * jnp.sum(w**2)
    sol = js.minimise(fn, jnp.zeros(4, jnp.float32), jnp.float32(0.5), tol=1e-3)
    assert sol.value.dtype == jnp.float32
    Xn, Tn = np.asarray(X), np.asarray(T)
    w = np.linalg.solve(Xn.T @ Xn + 0.5 * np.eye(4), Xn.T @ Tn)
    assert jnp.allclose(sol.value, w, atol=1e-3)
    g = jax.grad(
        lambda lam: jnp.sum(js.minimise(fn, jnp.zeros(4, jnp.float32), lam, tol=1e-3).value)
    )
    g32 = jax.jit(g)(jnp.float32(0.5))  # jitted: one compilation
    g_true = jnp.sum(
        jax.jit(jax.jacobian(lambda lam: jnp.linalg.solve(X.T @ X + lam * jnp.eye(4), X.T @ T)))(
            0.5
        )
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
