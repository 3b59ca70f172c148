"""Hyperparameters are data in `js.bilevel`: objectives re-created as new lambdas closing over
new arrays (the same code) compile nothing, give the answer for the new arrays (closed forms),
and pass derivatives to the closed-over arrays (finite differences)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from test_contract import _compiles

import jaxsolve as js
from jaxsolve._functions import function_as_data

F32 = not jax.config.read("jax_enable_x64")


def _data(seed):
    kx, kt = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(kx, (8, 3)), jax.random.normal(kt, (8,))


def _objectives(X, t, target):
    """A factory: every call makes new lambdas (the same code) closing over new arrays."""
    inner = lambda th, w, _: 0.5 * jnp.sum((X @ w - t) ** 2) + 0.5 * jnp.sum(jnp.exp(th) * w**2)
    outer = lambda th, w, _: 0.5 * jnp.sum((w - target) ** 2)
    return outer, inner


def _closed_form(X, t, target, theta):
    """Ridge with weights e^θ: w* = (XᵀX + D)⁻¹Xᵀt; loss, dloss/dθ = −e^θ w* ⊙ H⁻¹(w* − target)."""
    X, t, target, theta = (np.asarray(a, np.float64) for a in (X, t, target, theta))
    H = X.T @ X + np.diag(np.exp(theta))
    w = np.linalg.solve(H, X.T @ t)
    return 0.5 * np.sum((w - target) ** 2), -np.exp(theta) * w * np.linalg.solve(H, w - target)


def _hypergradient(X, t, target, theta):
    outer, inner = _objectives(X, t, target)
    return js.bilevel.hypergradient(
        outer,
        inner,
        theta,
        jnp.zeros(3),
        inner_solver=js.GradientDescent(0.05),  # a small program: quick to compile
        inner_tol=1e-5 if F32 else 1e-10,
        inner_max_steps=5000,
    )


def test_hypergradient_new_lambda_over_new_arrays_compiles_nothing():
    theta = jnp.zeros(3)
    X1, t1 = _data(0)
    jax.block_until_ready(_hypergradient(X1, t1, jnp.ones(3), theta).grad)
    X2, t2 = _data(1)
    target2 = 0.5 * jnp.ones(3)  # (jnp.full(3, 0.5) is weakly typed: another type)
    assert _compiles(lambda: _hypergradient(X2, t2, target2, theta).grad) == 0
    hg = _hypergradient(X2, t2, target2, theta)  # the answer is the new arrays' one
    loss, grad = _closed_form(X2, t2, target2, theta)
    rtol = 1e-3 if F32 else 1e-7
    np.testing.assert_allclose(float(hg.loss), loss, rtol=rtol)
    np.testing.assert_allclose(np.asarray(hg.grad), grad, rtol=rtol, atol=rtol * np.abs(grad).max())


def test_grad_wrt_a_closed_over_array_matches_finite_differences():
    X, t = _data(2)
    theta, target = jnp.array([0.1, -0.2, 0.3]), jnp.ones(3)
    # d loss / d t through y*(t): t is closed over by `inner`, never an argument.
    g = jax.grad(lambda t: _hypergradient(X, t, target, theta).loss)(t)
    h, t = 1e-6, np.asarray(t, np.float64)  # perturb in float64
    fd = [
        (
            _closed_form(X, t + h * e, target, theta)[0]
            - _closed_form(X, t - h * e, target, theta)[0]
        )
        / (2 * h)
        for e in np.eye(8)
    ]
    rtol = 1e-3 if F32 else 1e-6
    np.testing.assert_allclose(np.asarray(g), fd, rtol=rtol, atol=rtol * np.abs(fd).max())


def _bilevel_solve(X, t, target, args=False):
    outer, inner = _objectives(X, t, target)
    if args:  # the same problem with its data as arguments: the reference
        inner = lambda th, w, d: (
            0.5 * jnp.sum((d[0] @ w - d[1]) ** 2) + 0.5 * jnp.sum(jnp.exp(th) * w**2)
        )
        outer = lambda th, w, tg: 0.5 * jnp.sum((w - tg) ** 2)
    return js.bilevel.solve(
        outer,
        inner,
        jnp.zeros(3),
        jnp.zeros(3),
        algorithm=js.bilevel.AID(js.GradientDescent(0.02), inner_max_steps=20),
        optimiser=optax.sgd(0.1),
        num_steps=5,
        outer_args=target if args else None,
        inner_args=(X, t) if args else None,
        metrics_fn=lambda th, w: {"fit": jnp.sum((X @ w - t) ** 2)},  # closes over X, t too
        throw=False,
    )


def test_bilevel_solve_new_lambda_over_new_arrays_compiles_nothing():
    X1, t1 = _data(3)
    first = _bilevel_solve(X1, t1, jnp.ones(3))
    X2, t2 = _data(4)
    target2 = 0.5 * jnp.ones(3)  # (jnp.full(3, 0.5) is weakly typed: another type)
    assert _compiles(lambda: _bilevel_solve(X2, t2, target2).value) == 0
    new = _bilevel_solve(X2, t2, target2)
    ref = _bilevel_solve(X2, t2, target2, args=True)
    rtol = 1e-5 if F32 else 1e-12
    np.testing.assert_allclose(np.asarray(new.value), np.asarray(ref.value), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(new.metrics["fit"], ref.metrics["fit"], rtol=rtol)
    assert not np.allclose(np.asarray(new.value), np.asarray(first.value))


def _helper(w, X):
    return X @ w


def test_function_as_data_hoists_the_arrays_of_closures_partials_and_nested_functions():
    X = jnp.arange(6.0).reshape(2, 3)
    N = np.ones(3)  # numpy: static (it may be used for shapes), compared by identity
    scale = 2.0  # a Python float: static, compared by value
    part = functools.partial(_helper, X=X)
    nested = lambda w: jnp.sum(part(w)) + scale * jnp.sum(N * w)
    f = lambda th, w, _: nested(w) * th
    g = function_as_data(f)
    arrays = [x for x in jax.tree_util.tree_leaves(g) if isinstance(x, jax.Array)]
    assert len(arrays) == 1 and arrays[0] is X  # the numpy array and the float stay static
    w = jnp.array([1.0, -1.0, 2.0])
    assert jnp.allclose(g(3.0, w, None), f(3.0, w, None))
    # The same code over another array: the same static part (one cache entry under jit).
    X2 = X + 1
    part = functools.partial(_helper, X=X2)
    g2 = function_as_data(lambda th, w, _: nested(w) * th)
    assert jax.tree_util.tree_structure(g2) != jax.tree_util.tree_structure(g)  # other code line
    g3 = function_as_data(f)
    assert jax.tree_util.tree_structure(g3) == jax.tree_util.tree_structure(g)
    assert jnp.allclose(g3(1.0, w, None), jnp.sum(X2 @ w) + 2.0 * jnp.sum(w))  # `part` rebound
    assert function_as_data(jnp.sum) is jnp.sum  # not a Python function: unchanged
