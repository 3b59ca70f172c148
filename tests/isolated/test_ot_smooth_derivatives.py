"""Derivatives of quadratically regularised and sparsity-constrained OT (`js.ot.solve_smooth`):
gradients of the transport cost `<P, C>` and of the regularised cost `<P, C> + (γ/2)‖P‖²` with
respect to the cost matrix and to the points of a point cloud against central finite
differences, forward against reverse mode, vmap against a Python loop, and bad inputs.

The problem is chosen so that the sparsity constraint binds (some column has more than `k`
positive `f_i + g_j − C_ij`, so the plan differs from quadratic OT's), the plan has more nonzeros
than a spanning tree (so it moves with the cost, not only with the marginals), and the solution
map is differentiable there: every kept entry is away from 0 and, in binding columns, the k-th
entry is well above the (k+1)-th. `_check_smooth_point` asserts all of this, so the finite
differences (steps far below that margin) are taken where the function is smooth.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsolve as js
import jaxsolve.ot  # noqa: F401

N, M, K, GAMMA = 8, 6, 3, 3.0
KINDS = ("quadratic", "sparse")


def _solver(kind, gamma):
    if kind == "quadratic":
        return js.ot.QuadraticOT(gamma=gamma, tol=1e-12)
    return js.ot.SparsityConstrainedOT(gamma=gamma, k=K, tol=1e-12)


@functools.cache
def _data():
    kx, ky, kv, ku = jax.random.split(jax.random.PRNGKey(3), 4)
    x = jax.random.normal(kx, (N, 2))
    y = jax.random.normal(ky, (M, 2)) + 0.5
    v = jax.random.normal(kv, (N, M))  # an input direction for the cost matrix
    u = jax.random.normal(ku, (N, M))  # an output direction for the plan
    # Small shifts of the checked problem, for test_vmap_over_cost_matrices_equals_loop.
    dCs = 1e-3 * jax.random.uniform(jax.random.PRNGKey(1), (3, N, M))
    # Drawn once, as NumPy arrays: the tests' arithmetic on them compiles nothing.
    return jax.device_get((x, y, v, u, dCs))


def _problem():
    return _data()[:4]


def _outputs(kind, x, y, dC, gamma, v, u):
    """Everything the tests compare, from one compiled function per kind (compiling is what
    costs time here): values, their Jacobians, and the plan's jvp and vjp."""

    def solve(x, y, dC, gamma):
        # The cost of the point cloud (x, y), shifted by dC so that d/dC is d/d(cost matrix).
        C = js.ot.PointCloud(x, y).cost_matrix + dC
        return js.ot.solve_smooth(C, solver=_solver(kind, gamma))

    def values(x, y, dC, gamma):
        sol = solve(x, y, dC, gamma)
        return jnp.stack([sol.transport_cost, sol.reg_cost]), sol

    # Reverse mode: d<P,C> and d(<P,C> + γ/2‖P‖²) by x, y, the cost matrix and γ.
    jac, sol = jax.jacrev(values, argnums=(0, 1, 2, 3), has_aux=True)(x, y, dC, gamma)
    vals = jnp.stack([sol.transport_cost, sol.reg_cost])

    def plan(dC):
        return solve(x, y, dC, gamma).plan

    _, jv = jax.jvp(plan, (dC,), (v,))
    _, pullback = jax.vjp(plan, dC)
    (ju,) = pullback(u)
    return dict(
        values=vals,
        jac=dict(zip(("x", "y", "C", "gamma"), jac)),
        plan=sol.plan,
        x=sol.f[:, None] + sol.g[None] - sol.cost_matrix,
        marginal_error=sol.stats["marginal_error"],
        jv=jv,
        ju=ju,
    )


_run = jax.jit(_outputs, static_argnums=0)


def _batch_values(kind, x, y, dC):
    C = js.ot.PointCloud(x, y).cost_matrix + dC
    sol = js.ot.solve_smooth(C, solver=_solver(kind, GAMMA))
    return jnp.stack([sol.transport_cost, sol.reg_cost])


# Batched over cost matrices: the values and their gradients by the cost matrix.
_run_batch = jax.jit(
    jax.vmap(
        lambda kind, x, y, dC: (
            _batch_values(kind, x, y, dC),
            jax.jacrev(_batch_values, argnums=3)(kind, x, y, dC),
        ),
        in_axes=(None, None, None, 0),
    ),
    static_argnums=0,
)


def _values(kind, x, y, dC=None, gamma=GAMMA):
    dC = np.zeros((N, M)) if dC is None else dC
    _, _, v, u = _problem()
    # γ as a float64 array always (a Python float is weakly typed: another program).
    return jax.device_get(_run(kind, x, y, dC, np.asarray(gamma, np.float64), v, u))


def _fd(f, z, eps):
    """Central differences of `f` (a vector of values) at the array `z`: (values, *z.shape).

    As `conftest.finite_difference`, but all values from each pair of solves."""
    z = np.asarray(z, np.float64)
    cols = []
    for i in range(z.size):
        e = np.zeros(z.size)
        e[i] = eps
        e = e.reshape(z.shape)
        cols.append((f(z + e) - f(z - e)) / (2 * eps))
    return np.stack(cols, -1).reshape((-1,) + z.shape)


def _check_smooth_point(kind, out):
    """Assert the solve converged to a point where the solution map is differentiable: every
    kept entry of `f_i + g_j − C_ij` is away from 0 (no entry of the plan switches on or off)
    and, where the sparsity constraint binds, the k-th entry of the column is well above the
    (k+1)-th (no tie for the k-th place). Finite-difference steps stay far below that margin."""
    assert float(out["marginal_error"]) < 1e-10
    xs = np.sort(np.asarray(out["x"]), axis=0)[::-1]
    plan = out["plan"]
    margin = np.abs(xs[: N if kind == "quadratic" else K]).min()
    if kind == "sparse":
        binding = xs[K] > 0  # columns where the constraint removes a positive entry
        assert binding.sum() >= 1, "the sparsity constraint should bind in some column"
        margin = min(margin, (xs[K - 1] - xs[K])[binding].min())
        assert int(np.max(np.sum(plan > 0, axis=0))) <= K
    assert margin > 5e-3
    # More nonzeros than a spanning tree: the plan moves with the cost, not only the marginals.
    assert int(np.sum(plan > 0)) > N + M - 1


@pytest.fixture(scope="module")
def solved():
    x, y, _, _ = _problem()
    out = {kind: _values(kind, x, y) for kind in KINDS}
    # The constraint changes the plan: the sparse problem is not quadratic OT in disguise.
    assert float(np.abs(out["sparse"]["plan"] - out["quadratic"]["plan"]).max()) > 1e-3
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_wrt_cost_matrix_and_gamma_finite_differences(kind, solved):
    out = solved[kind]
    _check_smooth_point(kind, out)
    x, y, _, _ = _problem()
    # On a fixed support the potentials are linear in C, so central differences are exact
    # up to the solver's 1e-12 tolerance; steps of 1e-4 stay far below the 5e-3 margin.
    fd = _fd(lambda dC: _values(kind, x, y, dC)["values"], np.zeros((N, M)), 1e-4)
    np.testing.assert_allclose(out["jac"]["C"], fd, atol=1e-7, rtol=1e-6)
    # d<P,C>/dC is not just P: the plan's own derivative contributes.
    assert float(np.abs(out["jac"]["C"][0] - out["plan"]).max()) > 1e-3
    fd = _fd(lambda g: _values(kind, x, y, gamma=g)["values"], np.asarray(GAMMA), 1e-4)
    np.testing.assert_allclose(out["jac"]["gamma"], fd, atol=1e-7, rtol=1e-6)
    # Envelope theorem: d/dγ of the optimal regularised cost is ½‖P*‖².
    assert abs(float(out["jac"]["gamma"][1]) - 0.5 * float(np.sum(out["plan"] ** 2))) < 1e-9


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_wrt_points_finite_differences(kind, solved):
    out = solved[kind]
    _check_smooth_point(kind, out)
    x, y, _, _ = _problem()
    fdx = _fd(lambda x: _values(kind, x, y)["values"], x, 1e-5)
    fdy = _fd(lambda y: _values(kind, x, y)["values"], y, 1e-5)
    np.testing.assert_allclose(out["jac"]["x"], fdx, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(out["jac"]["y"], fdy, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_plan_jvp_matches_vjp_and_finite_differences(kind, solved):
    out = solved[kind]
    _check_smooth_point(kind, out)
    x, y, v, u = _problem()
    jv, ju = out["jv"], out["ju"]
    # <u, J v> = <Jᵀ u, v>: forward mode and its transpose agree.
    lhs, rhs = float(np.vdot(u, jv)), float(np.vdot(ju, v))
    assert abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs))
    # J v against a central difference of the plan along v.
    t = 1e-4
    fd = (_values(kind, x, y, t * v)["plan"] - _values(kind, x, y, -t * v)["plan"]) / (2 * t)
    np.testing.assert_allclose(jv, fd, atol=1e-7)
    assert float(np.abs(jv).max()) > 1e-3  # the plan does move along v
    # Reverse-mode d<P,C>/dC along v equals the forward-mode derivative <J v, C> + <P, v>.
    C = np.asarray(js.ot.PointCloud(x, y).cost_matrix)
    forward = float(np.vdot(jv, C) + np.vdot(out["plan"], v))
    assert abs(float(np.vdot(out["jac"]["C"][0], v)) - forward) <= 1e-9 * max(1.0, abs(forward))


def test_vmap_over_cost_matrices_equals_loop():
    # The sparse solver only: quadratic OT differs from it by `top_k` alone, and
    # test_ot_sparse.py vmaps its plans already (each vmap compilation costs ~10 s).
    kind = "sparse"
    x, y, _, _ = _problem()
    # Small shifts of the checked problem: the same smooth piece, different answers.
    dCs = _data()[4]
    values, jacs = _run_batch(kind, x, y, dCs)
    for i in range(3):
        single = _values(kind, x, y, dCs[i])
        np.testing.assert_allclose(values[i], single["values"], atol=1e-10)
        np.testing.assert_allclose(jacs[i], single["jac"]["C"], atol=1e-9)
    assert float(np.abs(values[0] - values[1]).max()) > 1e-6


@jax.jit
def _solve_checked(C, a, b, gamma):
    # k > n: documented to act as k = n, i.e. quadratic OT (a column has only n entries).
    solver = js.ot.SparsityConstrainedOT(gamma=gamma, k=N + 5, tol=1e-12)
    sol = js.ot.solve_smooth(C, a, b, solver=solver, throw=False)
    return sol.plan, sol.result


def test_k_above_n_is_quadratic_ot_and_bad_values_are_reported(solved):
    x, y, _, _ = _problem()
    C = np.asarray(js.ot.PointCloud(x, y).cost_matrix)
    a, b = np.ones(N) / N, np.ones(M) / M
    plan, result = _solve_checked(C, a, b, GAMMA)
    assert result == js.RESULTS.successful
    np.testing.assert_allclose(plan, solved["quadratic"]["plan"], atol=1e-10)
    # Values known only at run time (traced): γ ≤ 0, a negative weight, unequal masses, NaN.
    bad_b = b.copy()
    bad_b[0], bad_b[1] = -b[0], b[1] + 2 * b[0]  # same mass, one negative entry
    bad_C = C.copy()
    bad_C[0, 0] = np.nan
    for args in [
        (C, a, b, 0.0),
        (C, a, b, -1.0),
        (C, a, bad_b, GAMMA),
        (C, -a, b, GAMMA),
        (C, a, 2 * b, GAMMA),
        (bad_C, a, b, GAMMA),
    ]:
        assert _solve_checked(*args)[1] == js.RESULTS.invalid_input


def test_bad_arguments_raise_clear_errors():
    C = jnp.ones((N, M))
    for k in (0, -2):
        with pytest.raises(ValueError, match="`k`"):
            js.ot.SparsityConstrainedOT(gamma=1.0, k=k)
    for k in (True, 2.0, None):
        with pytest.raises(TypeError, match="`k`"):
            js.ot.SparsityConstrainedOT(gamma=1.0, k=k)
    for gamma in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="gamma"):
            js.ot.QuadraticOT(gamma=gamma)
        with pytest.raises(ValueError, match="gamma"):
            js.ot.SparsityConstrainedOT(gamma=gamma, k=2)
    with pytest.raises(ValueError, match="max_steps"):
        js.ot.SparsityConstrainedOT(gamma=1.0, k=2, max_steps=0)
    with pytest.raises(ValueError, match="tol"):
        js.ot.QuadraticOT(gamma=1.0, tol=-1.0)
    # Shapes: weights against the cost matrix, a 2-D cost, a floating-point cost, the solver.
    with pytest.raises(ValueError, match=r"b of shape \(6,\)"):
        js.ot.solve_smooth(C, jnp.ones(N) / N, jnp.ones(M + 1) / (M + 1))
    with pytest.raises(ValueError, match=r"a of shape \(8,\)"):
        js.ot.solve_smooth(C, jnp.ones((N, 1)) / N)
    with pytest.raises(ValueError, match="cost matrix"):
        js.ot.solve_smooth(jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="at least one"):
        js.ot.solve_smooth(jnp.ones((0, M)))
    with pytest.raises(TypeError, match="floating"):
        js.ot.solve_smooth(jnp.ones((3, 4), dtype=jnp.int32))
    with pytest.raises(TypeError, match="solver"):
        js.ot.solve_smooth(C, solver=js.ot.Sinkhorn())
