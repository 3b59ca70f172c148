"""Inner problems the size of a network's weights, in both dtypes: the default implicit adjoint
is matrix-free above a small size, reaches its tolerance in float32, and `js.minimise` works over
an equinox model's parameters (`eqx.partition`), with derivatives through it."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

import jaxsolve as js
from jaxsolve._raveled import Raveled

F32 = not jax.config.read("jax_enable_x64")


def test_default_adjoint_is_dense_only_for_small_problems():
    small, large = jnp.zeros(8), {"w": jnp.zeros((30, 30)), "b": jnp.zeros(30)}
    problem = js.MinimiseProblem(lambda y, _: 0.0, None)
    assert isinstance(problem.adjoint_solver(small), lx.AutoLinearSolver)
    # jaxsolve's CG (lineax's lx.CG gives NaN in float32 on Hessians with small eigenvalues),
    # on the flattened vector for a pytree of unknowns.
    solver = problem.adjoint_solver(large)
    assert isinstance(solver, Raveled) and isinstance(solver.solver, js.linear.CG)
    assert isinstance(problem.adjoint_solver(jnp.zeros(300)), js.linear.CG)
    root = js.RootProblem(lambda y, _: y, None)
    assert isinstance(root.adjoint_solver(large), lx.GMRES)


def test_ridge_hypergradient_with_the_default_adjoint_matches_the_closed_form():
    # The per-feature ridge of the benchmarks, at p = 300 unknowns: the default adjoint is CG.
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    n, p = 600, 300
    X = jax.random.normal(k1, (n, p))
    t = X @ jax.random.normal(k2, (p,)) + 0.1 * jax.random.normal(k3, (n,))
    Xv, tv = X[:100], t[:100]
    inner = lambda w, lam: 0.5 * jnp.mean((X @ w - t) ** 2) + 0.5 * jnp.sum(jnp.exp(lam) * w**2)

    def outer(lam):
        w = js.minimise(inner, jnp.zeros(p), lam).value
        return jnp.sum((Xv @ w - tv) ** 2)

    lam = jnp.full(p, -2.0)
    grad = jax.jit(jax.grad(outer))(lam)
    H = X.T @ X / n + jnp.diag(jnp.exp(lam))
    w = jnp.linalg.solve(H, X.T @ t / n)
    v = jnp.linalg.solve(H, 2 * Xv.T @ (Xv @ w - tv))
    ref = -jnp.exp(lam) * w * v
    err = jnp.linalg.norm(grad - ref) / jnp.linalg.norm(ref)
    assert err < (2e-3 if F32 else 1e-6), err


def test_minimise_over_an_equinox_model_and_differentiate_through_it():
    # Fit a small MLP (321 parameters: the matrix-free adjoint; tanh, so the fit is smooth)
    # with weight decay exp(log_wd); differentiate a validation loss through the fit.
    model = eqx.nn.MLP(2, 1, 16, 2, activation=jnp.tanh, key=jax.random.PRNGKey(1))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    x = jax.random.normal(jax.random.PRNGKey(2), (64, 2))
    y = jnp.sin(x[:, :1]) * jnp.cos(x[:, 1:])
    xv = jax.random.normal(jax.random.PRNGKey(3), (32, 2))
    yv = jnp.sin(xv[:, :1]) * jnp.cos(xv[:, 1:])

    def fit_loss(p, log_wd):
        m = eqx.combine(p, static)
        l2 = sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(p))
        return jnp.mean((jax.vmap(m)(x) - y) ** 2) + jnp.exp(log_wd) * l2

    def val_loss(log_wd, adjoint, tol=None):
        sol = js.minimise(fit_loss, params, log_wd, adjoint=adjoint, max_steps=5000, tol=tol)
        return jnp.mean((jax.vmap(eqx.combine(sol.value, static))(xv) - yv) ** 2), sol.result

    log_wd = jnp.asarray(-1.5)  # enough weight decay that the fit is a strict minimum
    assert sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)) > 256
    # The fit's result comes out of the differentiated program (no separate plain solve).
    grad = lambda adjoint: jax.jit(jax.grad(lambda lw: val_loss(lw, adjoint), has_aux=True))
    g, result = grad(js.ImplicitAdjoint())(log_wd)
    assert result == js.RESULTS.successful
    dense = js.ImplicitAdjoint(lx.AutoLinearSolver(well_posed=None))
    g_dense, result = grad(dense)(log_wd)
    assert result == js.RESULTS.successful
    assert jnp.isfinite(g) and jnp.allclose(g, g_dense, rtol=2e-2 if F32 else 1e-6)
    if not F32:  # central finite differences of the whole fit
        h, tight = 1e-3, 1e-11  # a tight fit, or its error swamps the difference quotient
        loss = jax.jit(lambda lw: val_loss(lw, dense, tight)[0])  # one program for both points
        fd = (loss(log_wd + h) - loss(log_wd - h)) / (2 * h)
        assert jnp.allclose(g, fd, rtol=1e-4), (g, fd)


# An MLP inner problem as in benchmarks/bilevel_mlp_hypergradient.py: 337 weights (above the
# dense-adjoint size, so the defaults are matrix-free: CG on Hessian-vector products of the
# flattened pytree), one log-penalty per layer pulling the weights toward their initial values.
_MLP = eqx.nn.MLP(2, 1, 16, 2, activation=jnp.tanh, key=jax.random.PRNGKey(4))
_P0, _STATIC = eqx.partition(_MLP, eqx.is_inexact_array)
_TEACHER = eqx.nn.MLP(2, 1, 8, 1, activation=jnp.tanh, key=jax.random.PRNGKey(5))


def _mlp_data(key, n):
    x = jax.random.normal(key, (n, 2))
    return x, jax.vmap(_TEACHER)(x)


def _mlp_inner(theta, p, data):
    x, y, anchor = data
    pred = jax.vmap(eqx.combine(p, _STATIC))(x)
    leaves = zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(anchor))
    penalty = sum(jnp.exp(t) * jnp.sum((w - w0) ** 2) for t, (w, w0) in zip(theta, leaves))
    return 0.5 * jnp.mean((pred - y) ** 2) + 0.5 * penalty


def _mlp_outer(theta, p, data):
    x, y = data
    return 0.5 * jnp.mean((jax.vmap(eqx.combine(p, _STATIC))(x) - y) ** 2)


@jax.jit
def _mlp_hypergradient(theta, p0, train, val):
    # Default settings. (`jax.grad` through `js.minimise` with its default adjoint, the other
    # path, is checked against finite differences above.)
    hg = js.bilevel.hypergradient(_mlp_outer, _mlp_inner, theta, p0, val, train)
    return hg.grad, hg.stats["adjoint_num_steps"]


@jax.jit
def _mlp_val_loss_tight(theta, p0, train, val):
    fit = js.minimise(
        lambda p, a: _mlp_inner(a[0], p, a[1]),
        p0,
        (theta, train),
        tol=1e-5 if F32 else 1e-11,  # as tight as the dtype allows
        max_steps=1000 if F32 else 5000,
        throw=False,
    )
    return _mlp_outer(theta, fit.value, val), fit.value


def test_mlp_hypergradient_with_default_settings_matches_finite_differences():
    p0 = jax.tree_util.tree_map(jnp.asarray, _P0)
    train = _mlp_data(jax.random.PRNGKey(6), 64) + (p0,)
    val = _mlp_data(jax.random.PRNGKey(7), 32)
    theta = jnp.log(jnp.array([1e-2, 3e-2, 1e-2, 3e-2, 1e-2, 3e-2]))
    g, cg_steps = _mlp_hypergradient(theta, p0, train, val)
    assert sum(leaf.size for leaf in jax.tree_util.tree_leaves(p0)) > 256
    assert 0 < cg_steps < 300
    if F32:
        # Reference: the implicit hypergradient with the dense Hessian, at a tight fit.
        from jax.flatten_util import ravel_pytree

        _, p = _mlp_val_loss_tight(theta, p0, train, val)

        @jax.jit  # one program, not hundreds of eagerly dispatched (and compiled) operations
        def dense_reference(theta, p, train, val):
            flat, unravel = ravel_pytree(p)
            gy = lambda th, f: ravel_pytree(jax.grad(_mlp_inner, 1)(th, unravel(f), train))[0]
            H = jax.jacfwd(lambda f: gy(theta, f))(flat)
            v = jnp.linalg.solve(H, ravel_pytree(jax.grad(_mlp_outer, 1)(theta, p, val))[0])
            return -jax.jacfwd(lambda th: gy(th, flat))(theta).T @ v

        ref = dense_reference(theta, p, train, val)
        rtol = 3e-2
    else:
        h = 1e-4
        eye = jnp.eye(theta.size)
        ref = jnp.stack(
            [
                (
                    _mlp_val_loss_tight(theta + h * e, p0, train, val)[0]
                    - _mlp_val_loss_tight(theta - h * e, p0, train, val)[0]
                )
                / (2 * h)
                for e in eye
            ]
        )
        rtol = 1e-3  # the default inner tolerance (‖∇G‖ <= 1e-6) leaves about 1e-4
    err = jnp.linalg.norm(g - ref) / jnp.linalg.norm(ref)
    assert err < rtol, (err, g, ref)
