"""JAXopt's implicit-differentiation idioms work with js.custom_root / js.custom_fixed_point: a
solver that ignores its `init` (called with None, positionally or by keyword), keyword
arguments (differentiated like positional ones), `has_aux`. Checked against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxsolve as js

X = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)))
Y = jnp.asarray(np.random.default_rng(1).normal(size=8))


def ridge_objective(params, l2reg, X, y):  # JAXopt's documentation example
    residuals = X @ params - y
    return 0.5 * jnp.mean(residuals**2) + 0.5 * l2reg * jnp.sum(params**2)


@js.custom_root(jax.grad(ridge_objective))
def ridge_solver(init_params, l2reg, X, y):
    del init_params  # the solver ignores its init, as in JAXopt's example
    n = X.shape[0]
    return jnp.linalg.solve(X.T @ X / n + l2reg * jnp.eye(X.shape[1]), X.T @ y / n)


def closed_form_jacobian(l2reg):  # d/dl2reg (X'X/n + l I)^-1 X'y/n = -(X'X/n + l I)^-1 w
    n = X.shape[0]
    H = X.T @ X / n + l2reg * jnp.eye(3)
    return -jnp.linalg.solve(H, jnp.linalg.solve(H, X.T @ Y / n))


@js.custom_root(jax.grad(ridge_objective), has_aux=True)
def ridge_solver_aux(init_params, l2reg, X, y):
    w = ridge_solver(None, l2reg, X, y)
    return w, {"norm": jnp.linalg.norm(w)}


@jax.jit
def _derivatives(lam, y):
    """Every idiom in one compiled program (compilation dominates these tiny solves)."""
    by_keyword = lambda lam: ridge_solver(init_params=None, l2reg=lam, X=X, y=y)
    return {
        "positional None": jax.jacobian(ridge_solver, argnums=1)(None, lam, X, y),
        "keywords, reverse": jax.jacrev(by_keyword)(lam),
        "keywords, forward": jax.jacfwd(by_keyword)(lam),
        "has_aux": jax.jacobian(lambda lam: ridge_solver_aux(None, lam, X, y)[0])(lam),
        # a keyword array argument is differentiated too
        "d/dy by keyword": jax.jacobian(lambda y: ridge_solver(None, lam, X, y=y))(y),
    }


def test_init_none_keywords_and_has_aux():
    out = _derivatives(0.3, Y)
    for name in ("positional None", "keywords, reverse", "keywords, forward", "has_aux"):
        assert jnp.allclose(out[name], closed_form_jacobian(0.3), atol=1e-10), name
    H = X.T @ X / 8 + 0.3 * jnp.eye(3)  # d w / d y = (X'X/n + l I)^-1 X'/n
    assert jnp.allclose(out["d/dy by keyword"], jnp.linalg.solve(H, X.T / 8), atol=1e-10)


def test_solver_without_init_argument_raises():
    import pytest

    @js.custom_root(jax.grad(ridge_objective))
    def solver(l2reg=1.0):
        return jnp.zeros(3)

    with pytest.raises(TypeError, match="first argument"):
        solver()


def test_custom_fixed_point_with_init_none():
    T = lambda h, theta: 0.5 * jnp.tanh(h) + theta

    @js.custom_fixed_point(T)
    def equilibrium(init, theta):
        return jax.lax.fori_loop(0, 100, lambda _, h: T(h, theta), jnp.zeros_like(theta))

    theta = jnp.array([0.3, -0.2])
    J, h = jax.jit(lambda t: (jax.jacobian(lambda t: equilibrium(None, theta=t))(t),
                              equilibrium(None, t)))(theta)  # fmt: skip
    assert jnp.allclose(J, jnp.diag(1 / (1 - 0.5 / jnp.cosh(h) ** 2)), atol=1e-10)
