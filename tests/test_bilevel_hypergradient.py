"""js.bilevel.hypergradient: estimators against closed forms, finite differences and explicit
unrolling; warm starts; failure flags; vmap; float32; bad inputs."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from conftest import finite_difference

import jaxsolve as js

# Ridge with one regularisation weight per feature: closed-form hypergradient.
_kx, _kv, _kw = jax.random.split(jax.random.PRNGKey(1), 3)
N, P = 60, 8
X = jax.random.normal(_kx, (N, P))
XV = jax.random.normal(_kv, (30, P))
W_TRUE = jax.random.normal(_kw, (P,))
T = X @ W_TRUE + 0.5 * jax.random.normal(_kw, (N,))
TV = XV @ W_TRUE


def ridge_inner(theta, w, data):
    x, t = data
    return 0.5 * jnp.sum((x @ w - t) ** 2) + 0.5 * jnp.sum(jnp.exp(theta) * w**2)


def ridge_outer(theta, w, data):
    x, t = data
    return 0.5 * jnp.sum((x @ w - t) ** 2)


def ridge_closed_form(theta):
    H = X.T @ X + jnp.diag(jnp.exp(theta))
    w = jnp.linalg.solve(H, X.T @ T)
    v = jnp.linalg.solve(H, XV.T @ (XV @ w - TV))
    return -jnp.exp(theta) * w * v


THETA = jnp.linspace(-1.0, 1.0, P)
TRAIN, VAL = (X, T), (XV, TV)

# The dense references, jitted: one compiled program each, shared by the tests (run eagerly,
# each of their ops was a compilation of its own).
_closed_form = jax.jit(ridge_closed_form)


@jax.jit
def _ridge(theta):
    """The inner Hessian, the inner solution and its largest eigenvalue."""
    H = X.T @ X + jnp.diag(jnp.exp(theta))
    return H, jnp.linalg.solve(H, X.T @ T), jnp.linalg.eigvalsh(H)[-1]


@jax.jit
def _adjoint(theta, w):
    """The adjoint vector: the solution of H v = ∇_w F at w."""
    return jnp.linalg.solve(_ridge(theta)[0], XV.T @ (XV @ w - TV))


def _hg(estimator, theta=THETA, y0=jnp.zeros(P), **kw):
    kw.setdefault("inner_tol", 1e-11)
    return js.bilevel.hypergradient(
        ridge_outer, ridge_inner, theta, y0, VAL, TRAIN, estimator=estimator, **kw
    )


@pytest.mark.parametrize(
    "estimator",
    [
        js.bilevel.Implicit(),
        js.bilevel.Implicit(lx.GMRES(rtol=1e-11, atol=1e-11)),
        js.bilevel.Implicit(lx.Cholesky()),
    ],
    ids=["cg", "gmres", "cholesky"],
)
def test_implicit_matches_closed_form(estimator):
    hg = _hg(estimator)
    assert hg.result == js.RESULTS.successful
    np.testing.assert_allclose(hg.grad, _closed_form(THETA), rtol=1e-6, atol=1e-9)
    w = _ridge(THETA)[1]
    np.testing.assert_allclose(hg.loss, jax.jit(ridge_outer)(THETA, w, VAL), rtol=1e-9)
    assert isinstance(hg, js.Solution) and hg.grad is hg.value
    np.testing.assert_allclose(hg.y, w, rtol=1e-8)


def test_adjoint_warm_start_matches_and_saves_work():
    exact = _closed_form(THETA)
    cold = _hg(js.bilevel.Implicit(), adjoint0=jnp.zeros(P))
    np.testing.assert_allclose(cold.grad, exact, rtol=1e-6, atol=1e-9)
    # the adjoint vector is the solution of H v = ∇_w F
    np.testing.assert_allclose(cold.adjoint, _adjoint(THETA, cold.y))
    # warm start from the previous adjoint and inner solution at a nearby theta
    theta2 = THETA + 1e-3
    warm = _hg(js.bilevel.Implicit(), theta=theta2, adjoint0=cold.adjoint, y0=cold.y)
    np.testing.assert_allclose(warm.grad, _closed_form(theta2), rtol=1e-6, atol=1e-9)
    assert warm.inner.stats["num_steps"] < cold.inner.stats["num_steps"]


def test_neumann_error_decreases_with_terms():
    H, w, top = _ridge(THETA)
    alpha = 1.0 / float(top)
    exact = np.asarray(_closed_form(THETA))
    errors = []
    for steps in (5, 3000):
        hg = _hg(js.bilevel.TruncatedNeumann(steps=steps, alpha=alpha))
        errors.append(float(np.linalg.norm(hg.grad - exact) / np.linalg.norm(exact)))
    assert errors[0] > 1e-2 and errors[1] < 1e-6

    # the bias of K terms is exactly (I - αH)^K applied to the adjoint: check K = 5
    @jax.jit  # one compilation, not one per eager op
    def truncated(H, w, alpha):
        gF = XV.T @ (XV @ w - TV)
        v5 = alpha * sum(jnp.linalg.matrix_power(jnp.eye(P) - alpha * H, j) @ gF for j in range(5))
        return -jnp.exp(THETA) * w * v5

    expected = truncated(H, w, alpha)
    hg = _hg(js.bilevel.TruncatedNeumann(steps=5, alpha=alpha))
    np.testing.assert_allclose(hg.grad, expected, rtol=1e-6, atol=1e-9)


def test_unrolled_matches_explicit_unrolling():
    lr = 1.0 / float(_ridge(THETA)[2])
    steps = 40

    def gd(theta, w, n):
        step = lambda _, w: w - lr * jax.grad(ridge_inner, argnums=1)(theta, w, TRAIN)
        return jax.lax.fori_loop(0, n, step, w)

    def explicit(theta, w0):
        return ridge_outer(theta, gd(theta, w0, steps), VAL)

    w0 = jnp.zeros(P)
    hg = js.bilevel.hypergradient(
        ridge_outer,
        ridge_inner,
        THETA,
        w0,
        VAL,
        TRAIN,
        estimator=js.bilevel.Unrolled(),
        inner_solver=js.GradientDescent(lr),
        inner_tol=1e-30,
        inner_max_steps=steps,
        throw=False,
    )
    # the explicit unrollings are jitted (one compilation each, not one per eager op)
    np.testing.assert_allclose(
        hg.grad, jax.jit(jax.grad(explicit))(THETA, w0), rtol=1e-8, atol=1e-12
    )
    # truncated: the first steps are a constant warm start
    k = 10
    w_head = jax.jit(gd, static_argnums=2)(THETA, w0, steps - k)

    def explicit_tail(theta):
        return ridge_outer(theta, gd(theta, w_head, k), VAL)

    hg_t = js.bilevel.hypergradient(
        ridge_outer,
        ridge_inner,
        THETA,
        w0,
        VAL,
        TRAIN,
        estimator=js.bilevel.Unrolled(truncate=k),
        inner_solver=js.GradientDescent(lr),
        inner_tol=1e-30,
        inner_max_steps=steps,
        throw=False,
    )
    np.testing.assert_allclose(
        hg_t.grad, jax.jit(jax.grad(explicit_tail))(THETA), rtol=1e-8, atol=1e-12
    )


# A non-quadratic inner problem: L2-regularised logistic regression with per-feature weights.
YL = (T > 0).astype(jnp.float64)
YLV = (TV > 0).astype(jnp.float64)


def logreg_inner(theta, w, data):
    x, y = data
    z = x @ w
    return jnp.sum(jnp.logaddexp(0.0, z) - y * z) + 0.5 * jnp.sum(jnp.exp(theta) * w**2)


def logreg_outer(theta, w, data):
    x, y = data
    z = x @ w
    return jnp.sum(jnp.logaddexp(0.0, z) - y * z)


def _logreg_fit(w, theta):
    return logreg_inner(theta, w, (X, YL))


@jax.jit
def _logreg_value(theta):
    w = js.minimise(_logreg_fit, jnp.zeros(P), theta, tol=1e-12, max_steps=500).value
    return logreg_outer(theta, w, (XV, YLV))


def test_implicit_matches_finite_differences_nonquadratic():
    estimator = js.bilevel.Implicit()
    theta = 0.3 * THETA
    hg = js.bilevel.hypergradient(
        logreg_outer,
        logreg_inner,
        theta,
        jnp.zeros(P),
        (XV, YLV),
        (X, YL),
        estimator=estimator,
        inner_tol=1e-12,
        inner_max_steps=500,
    )
    fd = finite_difference(_logreg_value, theta, eps=1e-5)
    np.testing.assert_allclose(hg.grad, fd, rtol=1e-5, atol=1e-7)


def test_inner_not_converged_is_flagged_and_thrown():
    hg = _hg(js.bilevel.Implicit(), inner_max_steps=2, throw=False, inner_tol=1e-12)
    assert hg.result == js.RESULTS.inner_not_converged
    assert hg.inner.result == js.RESULTS.max_steps_reached
    with pytest.raises(Exception, match="inner solve did not converge"):
        _hg(js.bilevel.Implicit(), inner_max_steps=2, inner_tol=1e-12).grad.block_until_ready()


def test_vmap_over_hyperparameters_equals_loop():
    thetas = jnp.stack([THETA, THETA + 0.5, -THETA])

    def one(theta):
        return js.bilevel.hypergradient(
            ridge_outer,
            ridge_inner,
            theta,
            jnp.zeros(P),
            VAL,
            TRAIN,
            inner_tol=1e-11,
            throw=False,
        ).grad

    batched = jax.vmap(one)(thetas)
    for i in range(3):
        np.testing.assert_allclose(batched[i], _closed_form(thetas[i]), rtol=1e-6, atol=1e-9)


def test_float32():
    x32, t32 = X.astype(jnp.float32), T.astype(jnp.float32)
    xv32, tv32 = XV.astype(jnp.float32), TV.astype(jnp.float32)
    theta = THETA.astype(jnp.float32)
    hg = js.bilevel.hypergradient(
        ridge_outer,
        ridge_inner,
        theta,
        jnp.zeros(P, jnp.float32),
        (xv32, tv32),
        (x32, t32),
        estimator=js.bilevel.Implicit(lx.CG(rtol=1e-6, atol=1e-6)),
        inner_tol=1e-3,
        # (js.LBFGS upcasts float32 iterates when x64 is on: a core issue, reported)
        inner_solver=js.GradientDescent(5e-3),
        inner_max_steps=2000,
    )
    assert hg.grad.dtype == jnp.float32
    exact = np.asarray(_closed_form(THETA))
    assert float(np.linalg.norm(hg.grad - exact) / np.linalg.norm(exact)) < 1e-3


def test_bad_inputs():
    with pytest.raises(TypeError, match="estimator"):
        js.bilevel.hypergradient(
            ridge_outer, ridge_inner, THETA, jnp.zeros(P), VAL, TRAIN, estimator="implicit"
        )
    with pytest.raises(TypeError, match="inner_solver"):
        js.bilevel.hypergradient(
            ridge_outer,
            ridge_inner,
            THETA,
            jnp.zeros(P),
            VAL,
            TRAIN,
            inner_solver=lx.CG(rtol=1e-6, atol=1e-6),
        )
    with pytest.raises(ValueError, match="scalar"):
        js.bilevel.hypergradient(lambda th, w, d: w, ridge_inner, THETA, jnp.zeros(P), VAL, TRAIN)
    with pytest.raises(TypeError, match="floating"):
        js.bilevel.hypergradient(ridge_outer, ridge_inner, jnp.arange(P), jnp.zeros(P), VAL, TRAIN)
    with pytest.raises(ValueError, match="adjoint0"):
        js.bilevel.hypergradient(
            ridge_outer, ridge_inner, THETA, jnp.zeros(P), VAL, TRAIN, adjoint0=jnp.zeros(P + 1)
        )
    with pytest.raises(ValueError, match="Unrolled"):
        js.bilevel.hypergradient(
            ridge_outer,
            ridge_inner,
            THETA,
            jnp.zeros(P),
            VAL,
            TRAIN,
            estimator=js.bilevel.Unrolled(),
            adjoint0=jnp.zeros(P),
        )
    with pytest.raises(ValueError, match="steps"):
        js.bilevel.TruncatedNeumann(steps=0)
    with pytest.raises(ValueError, match="alpha"):
        js.bilevel.TruncatedNeumann(steps=3, alpha=-1.0)
    with pytest.raises(ValueError, match="truncate"):
        js.bilevel.Unrolled(truncate=0)
    with pytest.raises(TypeError, match="linear_solver"):
        js.bilevel.Implicit("cg")
    with pytest.raises(ValueError, match="max_steps"):
        js.bilevel.hypergradient(
            ridge_outer, ridge_inner, THETA, jnp.zeros(P), VAL, TRAIN, inner_max_steps=0
        )


def test_nan_input_is_flagged():
    bad = THETA.at[0].set(jnp.nan)
    hg = js.bilevel.hypergradient(
        ridge_outer, ridge_inner, bad, jnp.zeros(P), VAL, TRAIN, throw=False
    )
    assert hg.result != js.RESULTS.successful


def test_no_recompilation_for_new_data_of_same_shape():
    from jaxsolve.bilevel._hypergradient import _hypergradient_jit

    inner_q = lambda lam, y, t: 0.5 * jnp.sum((y - t) ** 2) + 0.5 * lam * jnp.sum(y**2)
    outer_q = lambda lam, y, _: jnp.sum(y)
    sizes = []
    cases = [
        (jnp.ones(2), 1.0, 1e-8),
        (jnp.array([2.0, 3.0]), 0.5, 1e-9),
        (jnp.zeros(2), 2.0, 1e-10),
    ]
    for t, lam, tol in cases:
        hg = js.bilevel.hypergradient(
            outer_q,
            inner_q,
            lam,
            jnp.zeros(2),
            None,
            t,
            inner_solver=js.GradientDescent(0.5),
            inner_tol=tol,
        )
        # y* = t / (1 + lam): d/dlam sum(y*) = -sum(t) / (1 + lam)^2
        np.testing.assert_allclose(hg.grad, -jnp.sum(t) / (1 + lam) ** 2, atol=1e-7)
        sizes.append(_hypergradient_jit._cached._cache_size())
    assert sizes[2] == sizes[1] == sizes[0]


# --- the protocol: Solution subclass, user-written estimators, fixed steps, reliability ---


class JacobianFree(js.bilevel.AbstractEstimator):
    """A user-written estimator: the inner Hessian replaced by the identity."""

    def hypergradient(self, problem, theta, y0, adjoint0=None):
        inner = problem.solve_inner(jax.lax.stop_gradient(theta), y0)
        y = inner.value
        loss, (g_theta, g_y) = jax.value_and_grad(problem.outer, argnums=(0, 1))(theta, y)
        _, vjp = jax.vjp(lambda th: problem.inner_grad_y(th, y), theta)
        return js.bilevel.Hypergradient.from_inner(g_theta - vjp(g_y)[0], loss, inner)


def test_user_estimator_plugs_in():
    # ridge: ∂²G/∂θ∂w = diag(e^θ w), so the Jacobian-free estimate is -e^θ w ⊙ ∇_w F
    hg = _hg(JacobianFree())
    assert isinstance(hg, js.bilevel.Hypergradient) and hg.result == js.RESULTS.successful
    w = _ridge(THETA)[1]
    jacobian_free = jax.jit(lambda w: -jnp.exp(THETA) * w * (XV.T @ (XV @ w - TV)))(w)
    np.testing.assert_allclose(hg.grad, jacobian_free, rtol=1e-6)
    assert hg.stats["num_steps"] > 0 and hg.adjoint is None

    class Broken(js.bilevel.AbstractEstimator):
        def hypergradient(self, problem, theta, y0, adjoint0=None):
            return theta

    with pytest.raises(TypeError, match="Hypergradient"):
        _hg(Broken())
    with pytest.raises(ValueError, match="adjoint0"):
        _hg(JacobianFree(), adjoint0=jnp.zeros(P))


def test_unrolled_fixed_steps_equals_python_loop_from_an_optimal_warm_start():
    # From the exact inner solution a tol-based loop stops at once (no dependence on θ);
    # fixed_steps runs exactly `steps` gradient steps, like this explicit Python loop.
    _, w_star, top = _ridge(THETA)
    lr, steps = 1.0 / float(top), 7
    w_start = w_star + 0.1

    def explicit(theta, w):
        for _ in range(steps):
            w = w - lr * jax.grad(ridge_inner, argnums=1)(theta, w, TRAIN)
        return ridge_outer(theta, w, VAL), w

    # jitted: one compilation, not one per eager op of the Python loop
    (loss, w_end), g = jax.jit(jax.value_and_grad(explicit, has_aux=True))(THETA, w_start)
    for truncate in (None, 3):
        hg = _hg(
            js.bilevel.Unrolled(fixed_steps=True, truncate=truncate),
            y0=w_start,
            inner_solver=js.GradientDescent(lr),
            inner_tol=1e3,  # would stop at once without fixed_steps
            inner_max_steps=steps,
        )
        assert hg.result == js.RESULTS.successful and hg.stats["num_steps"] == steps
        np.testing.assert_allclose(hg.y, w_end, rtol=1e-12)
        np.testing.assert_allclose(hg.loss, loss, rtol=1e-12)
        if truncate is None:
            np.testing.assert_allclose(hg.grad, g, rtol=1e-10, atol=1e-14)
    loose = _hg(
        js.bilevel.Unrolled(),
        y0=w_start,
        inner_solver=js.GradientDescent(lr),
        inner_tol=1e3,
        inner_max_steps=steps,
    )
    assert loose.stats["num_steps"] == 0


def test_failed_adjoint_solve_is_a_result_never_an_exception():
    # CG with one iteration cannot solve the 8×8 adjoint system.
    est = js.bilevel.Implicit(lx.CG(rtol=1e-12, atol=1e-12, max_steps=1))
    hg = _hg(est, throw=False)
    assert hg.result == js.RESULTS.adjoint_not_converged
    assert hg.inner.result == js.RESULTS.successful
    with pytest.raises(Exception, match="adjoint system"):
        _hg(est).grad.block_until_ready()

    def total(theta):
        return jnp.sum(_hg(est, theta=theta, throw=False).value)

    # nothing raises under jit, grad and vmap (lineax raises on failed derivative solves
    # unless they are reported: ReportedSolver)
    jax.block_until_ready(jax.jit(jax.grad(total))(THETA))
    out = jax.vmap(lambda th: _hg(est, theta=th, throw=False))(jnp.stack([THETA, -THETA]))
    assert (out.result == js.RESULTS.adjoint_not_converged).all()


def test_hypergradient_is_differentiable():
    # d/dθ Σ_j hypergrad_j against autodiff of the closed form (dense solves)
    total = lambda th: jnp.sum(_hg(js.bilevel.Implicit(), theta=th, throw=False).value)
    # both jitted: one compilation each (eagerly, the hypergradient's forward and transposed
    # passes were compiled apart, and each op of the closed form on its own)
    expected = jax.jit(jax.grad(lambda th: jnp.sum(ridge_closed_form(th))))(THETA)
    np.testing.assert_allclose(jax.jit(jax.grad(total))(THETA), expected, rtol=1e-5, atol=1e-8)


def test_vmap_one_bad_member_does_not_change_the_others():
    thetas = jnp.stack([THETA, THETA.at[2].set(jnp.nan), 0.5 * THETA])
    for est in (js.bilevel.Implicit(), js.bilevel.Unrolled()):
        kw = dict(estimator=est, inner_solver=js.GradientDescent(2e-3), inner_max_steps=300)
        kw |= dict(throw=False, inner_tol=1e-6)
        run = lambda th: js.bilevel.hypergradient(
            ridge_outer, ridge_inner, th, jnp.zeros(P), VAL, TRAIN, **kw
        )
        out = jax.vmap(run)(thetas)
        assert (out.result == js.RESULTS.nonfinite).tolist() == [False, True, False]
        for i in (0, 2):
            one = run(thetas[i])
            assert (out.result == one.result)[i]
            np.testing.assert_allclose(out.grad[i], one.grad, rtol=1e-10, atol=1e-14)
