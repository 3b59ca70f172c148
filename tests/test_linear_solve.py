"""js.linear.solve: every solver against jnp.linalg.solve and SciPy, derivatives against finite
differences and against differentiating jnp.linalg.solve, vmap, and each kind of bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from conftest import finite_difference

import jaxsolve as js

N = 8


def _spd(seed=0, n=N):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    return jnp.asarray(M @ M.T / n + np.eye(n))


def _diag_dominant(seed=0, n=N):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    return jnp.asarray(M + np.diag(np.abs(M).sum(1) + 1.0))


def _poisson_1d(n=N):
    return jnp.asarray(2 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1))


TOL = 1e-11
SPD_SOLVERS = {
    "cg": js.linear.CG(tol=TOL),
    "pcg_jacobi": js.linear.CG(tol=TOL, preconditioner=js.linear.JacobiPreconditioner()),
    "pcg_ssor": js.linear.CG(tol=TOL, preconditioner=js.linear.SSORPreconditioner(1.3)),
    "pcg_callable": js.linear.CG(tol=TOL, preconditioner=lambda r: 0.5 * r),
    "gmres": js.linear.GMRES(tol=TOL, restart=4),
    "bicgstab": js.linear.BiCGStab(tol=TOL),
    "sor": js.linear.SOR(omega=1.3, tol=TOL),
    "ssor": js.linear.SSOR(omega=1.3, tol=TOL),
    "lu": lx.LU(),
}
GENERAL_SOLVERS = ["gmres", "bicgstab", "sor", "ssor", "lu"]


@eqx.filter_jit
def _solve_value(A, b, solver):
    return js.linear.solve(A, b, solver).value


@pytest.mark.parametrize("name", sorted(SPD_SOLVERS))
def test_spd_matches_dense_solve(name):
    A, b = _spd(1), jnp.arange(1.0, N + 1)
    x = _solve_value(A, b, SPD_SOLVERS[name])
    np.testing.assert_allclose(x, np.linalg.solve(A, b), atol=1e-8)


@pytest.mark.parametrize("name", GENERAL_SOLVERS)
def test_nonsymmetric_matches_dense_solve(name):
    A, b = _diag_dominant(2), jnp.sin(jnp.arange(N) * 1.0)
    x = _solve_value(A, b, SPD_SOLVERS[name])
    np.testing.assert_allclose(x, np.linalg.solve(A, b), atol=1e-8)


def test_jacobi_on_diagonally_dominant():
    A, b = _diag_dominant(3), jnp.ones(N)
    x = _solve_value(A, b, js.linear.Jacobi(tol=TOL))
    np.testing.assert_allclose(x, np.linalg.solve(A, b), atol=1e-8)


def test_cg_iterates_match_scipy_on_poisson():
    # Same problem, same relative tolerance: the same number of CG iterations as SciPy.
    n = 30
    A = _poisson_1d(n)
    b = jnp.cos(jnp.arange(n) * 0.3)
    sol = js.linear.solve(A, b, js.linear.CG(tol=1e-10))
    count = [0]
    x_sp, info = spla.cg(
        sp.csr_matrix(np.asarray(A)),
        np.asarray(b),
        rtol=1e-10,
        atol=0.0,
        callback=lambda _: count.__setitem__(0, count[0] + 1),
    )
    assert info == 0
    np.testing.assert_allclose(sol.value, x_sp, atol=1e-8)
    assert abs(int(sol.stats["num_steps"]) - count[0]) <= 1


def test_matrix_free_grid_vector():
    # A 2-D Laplacian as a matvec on a grid-shaped vector (no flattening).
    def lap(u):
        p = jnp.pad(u, 1)
        return 4 * u - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]

    b = jnp.ones((6, 5))
    x = js.linear.solve(lap, b, js.linear.CG(tol=1e-12)).value
    np.testing.assert_allclose(lap(x), b, atol=1e-10)


def test_x0_warm_start_fewer_steps():
    A, b = _spd(4), jnp.ones(N)
    exact = np.linalg.solve(A, b)  # NumPy: no eager compilation
    # the cold start from zeros (what x0=None starts from): one program for both solves
    cold = js.linear.solve(A, b, js.linear.SOR(omega=1.0, tol=1e-10), x0=np.zeros(N))
    warm = js.linear.solve(A, b, js.linear.SOR(omega=1.0, tol=1e-10), x0=exact + 1e-6)
    assert warm.stats["num_steps"] < cold.stats["num_steps"]


# --- derivatives ------------------------------------------------------------------------------

GRAD_SOLVERS = ["cg", "pcg_ssor", "gmres", "bicgstab", "sor", "ssor"]


def _loss_matrix(A, b, solver):
    x = js.linear.solve(A, b, solver).value
    return jnp.sum(jnp.sin(x) * jnp.arange(1.0, N + 1))


_grad_matrix = jax.jit(jax.grad(_loss_matrix, argnums=(0, 1)), static_argnums=2)


def _ref_loss(A, b):
    return jnp.sum(jnp.sin(jnp.linalg.solve(A, b)) * jnp.arange(1.0, N + 1))


# jitted: one compilation shared by the cases (eagerly, each op was compiled on its own)
_ref_grad = jax.jit(jax.grad(_ref_loss, argnums=(0, 1)))


@pytest.mark.parametrize("name", GRAD_SOLVERS)
def test_grad_matches_dense_solve(name):
    A, b = _spd(5), jnp.linspace(-1.0, 1.0, N)
    gA, gb = _grad_matrix(A, b, SPD_SOLVERS[name])

    rA, rb = _ref_grad(A, b)
    np.testing.assert_allclose(gb, rb, atol=1e-7)
    # CG's derivative treats A as symmetric, so compare the symmetric part for it.
    if name in ("cg", "pcg_ssor"):
        gA, rA = gA + gA.T, rA + rA.T
    np.testing.assert_allclose(gA, rA, atol=1e-7)


def _theta_operator(theta):
    # A matrix-free operator whose entries depend on two parameters.
    def mv(v):
        p = jnp.pad(v, 1)
        return (2 + theta[0]) * v - p[:-2] - p[2:] + theta[1] * jnp.cos(jnp.arange(N)) * v

    return mv


def _theta_loss(theta, solver):
    x = js.linear.solve(_theta_operator(theta), jnp.ones(N), solver).value
    return jnp.sum(x**2)


_theta_grad = jax.jit(jax.grad(_theta_loss), static_argnums=1)
# Jitted for the finite differences: eagerly, every new theta is a new closure (the operator's
# matvec), a static argument of the solve, and so a compilation of its own.
_theta_value = jax.jit(_theta_loss, static_argnums=1)


@pytest.mark.parametrize("name", ["cg", "bicgstab"])
def test_grad_closed_over_parameters_vs_finite_differences(name):
    theta = jnp.array([0.3, 0.2])
    g = _theta_grad(theta, SPD_SOLVERS[name])
    fd = finite_difference(lambda t: _theta_value(t, SPD_SOLVERS[name]), theta)
    np.testing.assert_allclose(g, fd, rtol=1e-5)


def test_forward_equals_reverse():
    theta = jnp.array([0.3, 0.2])
    solver = js.linear.BiCGStab(tol=1e-12)
    x = lambda t: js.linear.solve(_theta_operator(t), jnp.ones(N), solver).value
    # one jitted program for both (eagerly: the solve's pieces and each op compiled apart)
    J_fwd, J_rev = jax.jit(lambda t: (jax.jacfwd(x)(t), jax.jacrev(x)(t)))(theta)
    np.testing.assert_allclose(J_fwd, J_rev, atol=1e-9)


def test_as_implicit_adjoint_linear_solver():
    # The linear solvers plug into the core's implicit adjoint for other families.
    def inner(y, lam):
        return 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * lam * jnp.sum(y**2)

    adjoint = js.ImplicitAdjoint(linear_solver=js.linear.CG(tol=1e-12))
    outer = lambda lam: js.minimise(inner, jnp.zeros(3), lam, adjoint=adjoint).value.sum()
    np.testing.assert_allclose(jax.jit(jax.grad(outer))(1.0), -3 / 4, atol=1e-6)  # one program


# --- vmap -------------------------------------------------------------------------------------


@jax.jit
def _batched(As, bs):
    f = lambda A, b: js.linear.solve(A, b, js.linear.CG(tol=1e-10, max_steps=50), throw=False)
    return jax.vmap(f)(As, bs)


def test_vmap_per_system_results_and_counts():
    As = jnp.stack([_spd(s) for s in range(3)] + [-_spd(9)])  # the last one is not SPD
    bs = jnp.stack([jnp.full(N, s + 1.0) for s in range(4)])
    sol = _batched(As, bs)
    for i in range(3):
        one = js.linear.solve(As[i], bs[i], js.linear.CG(tol=1e-10, max_steps=50))
        np.testing.assert_allclose(sol.value[i], one.value, atol=1e-12)
        assert sol.stats["num_steps"][i] == one.stats["num_steps"]
    ok = sol.result == js.RESULTS.successful
    assert list(np.asarray(ok)) == [True, True, True, False]
    assert bool((sol.result == js.RESULTS.not_positive_definite)[3])
    assert bool(jnp.all(jnp.isfinite(sol.value)))


def test_no_recompilation_for_new_data():
    f = eqx.filter_jit(lambda A, b, w: js.linear.solve(A, b, js.linear.SOR(omega=w)).value)
    f(_spd(0), jnp.ones(N), jnp.array(1.1))
    before = f._cached._cache_size()
    f(_spd(1), jnp.zeros(N) + 2.0, jnp.array(1.5))
    assert f._cached._cache_size() == before


# --- bad input --------------------------------------------------------------------------------


def test_non_square_matrix():
    with pytest.raises(ValueError, match="square"):
        js.linear.solve(jnp.ones((3, 4)), jnp.ones(3))


def test_mismatched_b():
    with pytest.raises(ValueError, match="shape"):
        js.linear.solve(jnp.eye(3), jnp.ones(4))


def test_mismatched_x0():
    with pytest.raises(ValueError, match="x0"):
        js.linear.solve(jnp.eye(3), jnp.ones(3), x0=jnp.ones(2))


@pytest.mark.parametrize("omega", [0.0, 2.0, -0.5, 2.5])
def test_omega_outside_open_interval(omega):
    for cls in (js.linear.SOR, js.linear.SSOR, js.linear.SSORPreconditioner):
        with pytest.raises(ValueError, match="between 0 and 2"):
            cls(omega=omega)


def test_traced_omega_outside_interval_raises():
    with pytest.raises(Exception, match="relaxation outside"):
        _solve_value(_spd(0), jnp.ones(N), js.linear.SOR(omega=jnp.array(2.5)))


def test_non_spd_to_cg_is_not_positive_definite_not_nan():
    A = jnp.diag(jnp.array([1.0, -1.0, 2.0]))
    sol = js.linear.solve(A, jnp.array([1.0, 1.0, 0.0]), js.linear.CG(), throw=False)
    assert sol.result == js.RESULTS.not_positive_definite
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    with pytest.raises(Exception, match="non-positive curvature"):
        js.linear.solve(A, jnp.array([1.0, 1.0, 0.0]), js.linear.CG())


def test_not_converged_within_max_steps():
    A = _poisson_1d(30)
    sol = js.linear.solve(A, jnp.ones(30), js.linear.Jacobi(max_steps=5), throw=False)
    assert sol.result == js.RESULTS.max_steps_reached
    assert sol.stats["num_steps"] == 5
    with pytest.raises(Exception, match="maximum number of solver steps"):
        js.linear.solve(A, jnp.ones(30), js.linear.Jacobi(max_steps=5))


def test_wrong_kinds():
    with pytest.raises(TypeError, match="solver"):
        js.linear.solve(jnp.eye(2), jnp.ones(2), solver="cg")
    with pytest.raises(TypeError, match="`A`"):
        js.linear.solve("A", jnp.ones(2))
    with pytest.raises(TypeError, match="preconditioner"):
        js.linear.CG(preconditioner=3)
    with pytest.raises(ValueError, match="restart"):
        js.linear.GMRES(restart=0)


def test_float32():
    A, b = _spd(6).astype(jnp.float32), jnp.ones(N, jnp.float32)
    for solver in (js.linear.CG(tol=1e-5), js.linear.GMRES(tol=1e-5), js.linear.SSOR(1.2, 1e-5)):
        sol = js.linear.solve(A, b, solver)
        assert sol.value.dtype == jnp.float32
        np.testing.assert_allclose(sol.value, np.linalg.solve(A, b), rtol=1e-3, atol=1e-4)
