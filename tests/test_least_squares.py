"""js.least_squares: Gauss-Newton and Levenberg-Marquardt against scipy.optimize.least_squares,
implicit derivatives against finite differences and a closed form (linear least squares),
failures. One jitted, vmapped program checks a batch of data sets. Float64 and float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsolve as js

X64 = jax.config.jax_enable_x64
DT = jnp.float64 if X64 else jnp.float32
T = np.linspace(0.0, 2.0, 10)


def residual(y, data):  # a two-exponential model (nonlinear, non-zero residual at the fit)
    t = jnp.asarray(T, data.dtype)
    return y[0] * jnp.exp(-y[1] * t) + y[2] * jnp.exp(-y[3] * t) - data


def make_data(seed):
    rng = np.random.default_rng(seed)
    clean = 2.0 * np.exp(-1.3 * T) + 0.5 * np.exp(-0.2 * T)
    return clean + 0.01 * rng.normal(size=T.size)


Y0 = np.array([1.0, 1.0, 1.0, 0.1])
DIR = np.random.default_rng(9).normal(size=T.size)


def _fits(data):
    out = {}
    for name, solver in (("gn", js.GaussNewton()), ("lm", js.LevenbergMarquardt())):
        fit = lambda d: js.least_squares(
            residual,
            jnp.asarray(Y0, d.dtype),
            d,
            solver=solver,
            max_steps=200,
            throw=False,
            tol=1e-10 if X64 else None,
        )
        sol = fit(data)
        # derivative of the fit along DIR, forward and reverse mode
        jvp = jax.jvp(lambda d: fit(d).value, (data,), (jnp.asarray(DIR, data.dtype),))[1]
        jac = jax.jacrev(lambda d: fit(d).value)(data)
        out[name] = (sol.value, sol.result._value, sol.stats["error"], jvp, jac)
    return out


fits = jax.jit(jax.vmap(_fits))
EPS = 1e-5


@pytest.fixture(scope="module")
def batch():
    base = [make_data(s) for s in range(3)]
    nan = base[0].copy()
    nan[3] = np.nan
    shifted = [base[0] + EPS * DIR, base[0] - EPS * DIR]
    data = jnp.asarray(np.stack(base + [nan] + shifted), DT)
    return fits(data)


def test_against_scipy(batch):
    scipy_opt = pytest.importorskip("scipy.optimize")
    for s in range(3):
        d = make_data(s)
        ref = scipy_opt.least_squares(
            lambda y: np.asarray(residual(jnp.asarray(y), jnp.asarray(d))),
            Y0,
            method="lm",
            xtol=1e-15,
            ftol=1e-15,
            gtol=1e-15,
        )
        for name in ("gn", "lm"):
            value, result, err, *_ = batch[name]
            assert result[s] == js.RESULTS.successful._value, (name, s)
            tol = 1e-6 if X64 else 2e-2
            assert np.allclose(value[s], ref.x, atol=tol, rtol=tol), (name, s, value[s], ref.x)


def test_nan_data_is_a_result(batch):
    for name in ("gn", "lm"):
        assert batch[name][1][3] == js.RESULTS.nonfinite._value
        assert np.all(np.isfinite(np.asarray(batch[name][0][0])))  # the others are unaffected


@pytest.mark.skipif(not X64, reason="finite differences need float64")
def test_derivatives_against_finite_differences(batch):
    for name in ("gn", "lm"):
        value, _, _, jvp, jac = batch[name]
        fd = (value[4] - value[5]) / (2 * EPS)
        assert np.allclose(jvp[0], fd, atol=1e-6, rtol=1e-5), name
        assert np.allclose(jac[0] @ DIR, fd, atol=1e-6, rtol=1e-5), name


def test_forward_and_reverse_agree(batch):
    for name in ("gn", "lm"):
        _, _, _, jvp, jac = batch[name]
        tol = 1e-8 if X64 else 1e-2
        assert np.allclose(jac[0] @ jnp.asarray(DIR, DT), jvp[0], atol=tol, rtol=tol)


@pytest.mark.skipif(
    not X64, reason="one compilation less in the float32 pass; the batch covers float32"
)
def test_linear_least_squares_closed_form():
    X = np.random.default_rng(1).normal(size=(6, 3))
    t = np.random.default_rng(2).normal(size=6)
    Xj = jnp.asarray(X, DT)
    fit = lambda t: js.least_squares(lambda w, t: Xj @ w - t, jnp.zeros(3, DT), t).value
    J = jax.jacobian(fit)(jnp.asarray(t, DT))
    tol = 1e-6 if X64 else 1e-3
    assert np.allclose(fit(jnp.asarray(t, DT)), np.linalg.lstsq(X, t, rcond=None)[0], atol=tol)
    assert np.allclose(J, np.linalg.pinv(X), atol=tol)


def test_misuse_raises():
    with pytest.raises(ValueError, match="residual"):
        js.least_squares(lambda y, _: jnp.arange(3), jnp.zeros(2, DT))
    with pytest.raises(TypeError, match="AbstractLeastSquaresSolver"):
        js.least_squares(lambda y, _: y, jnp.zeros(2, DT), solver=js.LBFGS())
