"""The linear family's reliability contract: precise result codes (NaN is `nonfinite`, CG's
failure `not_positive_definite`, BiCGStab's `krylov_breakdown`, GMRES's `krylov_stagnation`),
`successful` only on the TRUE residual, per-member `invalid_input` under vmap, throw=False
never raising under grad/jvp/vmap, exact matvec counts, iteration counts, sizes at the edges."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import jaxsolve as js

N = 8


def _dense_solve(A, b):
    """The dense reference, in NumPy (an eager jnp.linalg.solve compiles for every shape)."""
    return np.linalg.solve(np.asarray(A), np.asarray(b))


def _spd(seed=0, n=N):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    return jnp.asarray(M @ M.T / n + np.eye(n))


def _general(seed=0, n=N):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    return jnp.asarray(M + np.diag(np.abs(M).sum(1) + 1.0))


ALL = {
    "cg": lambda: js.linear.CG(tol=1e-10),
    "pcg": lambda: js.linear.CG(tol=1e-10, preconditioner=js.linear.JacobiPreconditioner()),
    "gmres": lambda: js.linear.GMRES(tol=1e-10, restart=3),
    "bicgstab": lambda: js.linear.BiCGStab(tol=1e-10),
    "jacobi": lambda: js.linear.Jacobi(tol=1e-10),
    "sor": lambda: js.linear.SOR(1.2, tol=1e-10),
    "ssor": lambda: js.linear.SSOR(1.2, tol=1e-10),
    "fcg": lambda: js.linear.FlexibleCG(tol=1e-10),
}


# --- result codes -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("where", ["b", "A"])
def test_nan_in_data_is_nonfinite(name, where):
    A, b = _spd(1), jnp.ones(N)
    if where == "b":
        b = b.at[3].set(jnp.nan)
    else:
        A = A.at[2, 5].set(jnp.nan).at[5, 2].set(jnp.nan)
    sol = js.linear.solve(A, b, ALL[name](), throw=False)
    assert sol.result == js.RESULTS.nonfinite, js.RESULTS[sol.result]


def test_bicgstab_breakdown_is_krylov_breakdown():
    # r0 = e1, A r0 = e2 ⟂ r̂ = r0: the first inner product r̂ᵀA p vanishes.
    A = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    sol = js.linear.solve(A, jnp.array([1.0, 0.0]), js.linear.BiCGStab(), throw=False)
    assert sol.result == js.RESULTS.krylov_breakdown
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    with pytest.raises(Exception, match="BiCGStab broke down"):
        js.linear.solve(A, jnp.array([1.0, 0.0]), js.linear.BiCGStab())


def test_gmres_stagnation_message_fits_gmres():
    # b has a component outside the range of a singular A: no cycle can make progress.
    A = jnp.diag(jnp.array([1.0, 2.0, 0.0]))
    sol = js.linear.solve(A, jnp.ones(3), js.linear.GMRES(restart=2), throw=False)
    assert sol.result == js.RESULTS.krylov_stagnation
    msg = js.RESULTS[sol.result]
    assert "restart" in msg and "stagnation_iters" not in msg
    assert bool(jnp.all(jnp.isfinite(sol.value)))


def test_cg_message_does_not_mention_restart():
    assert "restart" not in js.RESULTS[js.RESULTS.not_positive_definite]


# --- the true residual ------------------------------------------------------------------------


def _ill_conditioned(n=40, cond=1e6, dtype=jnp.float32):
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(n, n)))
    A = (q * np.geomspace(1.0, 1.0 / cond, n)) @ q.T
    return jnp.asarray(A, dtype), jnp.asarray(np.ones(n), dtype), A


@pytest.mark.parametrize("name", ["cg", "bicgstab", "gmres"])
def test_successful_only_when_true_residual_meets_tol(name):
    # float32, κ = 1e6, tol = 1e-7: the recurrences' residuals go below tol long before the
    # true residual does (if it ever does). Whatever the result, `successful` must mean the
    # TRUE residual (recomputed here in float64) met tol, and stats["error"] is that residual.
    A32, b32, A64 = _ill_conditioned()
    tol = 1e-7
    solver = {
        "cg": js.linear.CG(tol=tol, max_steps=2000),
        "bicgstab": js.linear.BiCGStab(tol=tol, max_steps=2000),
        "gmres": js.linear.GMRES(tol=tol, restart=10, max_steps=2000),
    }[name]
    sol = js.linear.solve(A32, b32, solver, throw=False)
    x = np.asarray(sol.value, np.float64)
    true = np.linalg.norm(1.0 - A64 @ x) / np.sqrt(40)
    np.testing.assert_allclose(float(sol.stats["error"]), true, rtol=0.2)
    if sol.result == js.RESULTS.successful:
        assert true <= tol * 1.5
    else:
        assert true > tol * 0.5


def test_recursive_residual_drift_is_reported():
    # CG in float32 at tol 1e-9 (two orders below float32's eps): the recursive residual gets
    # there, the true residual cannot. That is `inaccurate_residual`, not `successful`.
    A32, b32, _ = _ill_conditioned(cond=1e3)
    sol = js.linear.solve(A32, b32, js.linear.CG(tol=1e-9, max_steps=2000), throw=False)
    assert sol.result == js.RESULTS.inaccurate_residual
    assert float(sol.stats["error"]) > 1e-9
    with pytest.raises(Exception, match="true relative residual"):
        js.linear.solve(A32, b32, js.linear.CG(tol=1e-9, max_steps=2000))


@pytest.mark.parametrize("name", ["cg", "gmres", "bicgstab", "ssor"])
def test_default_tol_reachable_in_float32(name):
    A, b = _spd(2).astype(jnp.float32), jnp.ones(N, jnp.float32)
    solver = {
        "cg": js.linear.CG(),
        "gmres": js.linear.GMRES(),
        "bicgstab": js.linear.BiCGStab(),
        "ssor": js.linear.SSOR(1.2),
    }[name]
    sol = js.linear.solve(A, b, solver)
    assert sol.result == js.RESULTS.successful
    assert float(sol.stats["error"]) <= 1e-5


# --- vmap: one bad member ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", [js.linear.SOR, js.linear.SSOR])
def test_vmap_over_omega_one_bad_member(cls):
    A, b = _spd(3), jnp.ones(N)
    omegas = jnp.array([1.0, 1.4, 2.5, 0.8])
    f = jax.jit(jax.vmap(lambda w: js.linear.solve(A, b, cls(w, tol=1e-10), throw=False)))
    sol = f(omegas)
    res = np.asarray(sol.result._value)
    assert res[2] == js.RESULTS.invalid_input._value
    for i in (0, 1, 3):
        assert res[i] == js.RESULTS.successful._value
        one = js.linear.solve(A, b, cls(float(omegas[i]), tol=1e-10))
        np.testing.assert_allclose(sol.value[i], one.value, atol=1e-12)
        assert sol.stats["num_steps"][i] == one.stats["num_steps"]


def test_vmap_over_ssor_preconditioner_omega_one_bad_member():
    A, b = _spd(4), jnp.ones(N)
    pcg = lambda w: js.linear.CG(tol=1e-10, preconditioner=js.linear.SSORPreconditioner(w))
    sol = jax.vmap(lambda w: js.linear.solve(A, b, pcg(w), throw=False))(jnp.array([1.2, -1.0]))
    res = np.asarray(sol.result._value)
    assert res[0] == js.RESULTS.successful._value and res[1] == js.RESULTS.invalid_input._value
    np.testing.assert_allclose(sol.value[0], _dense_solve(A, b), atol=1e-9)


def test_recycled_cg_jacobi_non_positive_diagonal_is_invalid_input_per_member():
    rcg = js.linear.RecycledCG(recycle=2, jacobi=True, tol=1e-10)
    As = jnp.stack([_spd(5), -jnp.eye(N)])
    b = jnp.ones(N)
    sols, _ = jax.vmap(lambda A: rcg.solve(A, b, rcg.init(b)))(As)
    res = np.asarray(sols.result._value)
    assert res[0] == js.RESULTS.successful._value and res[1] == js.RESULTS.invalid_input._value
    np.testing.assert_allclose(sols.value[0], _dense_solve(As[0], b), atol=1e-8)


# --- throw=False under derivatives ------------------------------------------------------------


def _failing_loss(t, throw):
    # Two CG steps on an 8x8 SPD system: neither the solve nor its adjoint solve converges.
    A = _spd(6) + t * jnp.eye(N)
    x = js.linear.solve(A, jnp.ones(N), js.linear.CG(max_steps=2), throw=throw).value
    return jnp.sum(x**2)


def test_reverse_mode_through_failing_cg_with_throw_false_does_not_raise():
    g = jax.grad(_failing_loss)(0.1, False)
    assert bool(jnp.isfinite(g))
    # jitted: one compilation (eagerly, the solve's forward and backward were compiled apart)
    g_vmapped = jax.jit(jax.vmap(jax.grad(_failing_loss), in_axes=(0, None)), static_argnums=1)(
        jnp.array([0.1, 0.2]), False
    )
    assert bool(jnp.all(jnp.isfinite(g_vmapped)))
    with pytest.raises(Exception, match="maximum number of solver steps"):
        jax.grad(_failing_loss)(0.1, True)


def test_forward_mode_through_failing_cg_with_throw_false_does_not_raise():
    _, t = jax.jvp(lambda t: _failing_loss(t, False), (0.1,), (1.0,))
    assert bool(jnp.isfinite(t))
    with pytest.raises(Exception, match="maximum number of solver steps"):
        jax.jvp(lambda t: _failing_loss(t, True), (0.1,), (1.0,))


def test_failing_result_still_reported_under_grad():
    def f(t):
        sol = js.linear.solve(
            _spd(6) + t * jnp.eye(N), jnp.ones(N), js.linear.CG(max_steps=2), throw=False
        )
        return jnp.sum(sol.value), sol.result

    (_, result), _ = jax.value_and_grad(f, has_aux=True)(0.1)
    assert result == js.RESULTS.max_steps_reached


# --- counts -----------------------------------------------------------------------------------


def _counting_operator(A):
    calls = []

    def mv(v):
        jax.debug.callback(lambda: calls.append(1))
        return A @ v

    return lx.FunctionLinearOperator(mv, jax.ShapeDtypeStruct((A.shape[0],), A.dtype)), calls


COUNTED = {
    "cg": lambda: js.linear.CG(tol=1e-10),
    "gmres": lambda: js.linear.GMRES(tol=1e-10, restart=3),
    "bicgstab": lambda: js.linear.BiCGStab(tol=1e-10),
    "fcg": lambda: js.linear.FlexibleCG(tol=1e-10),
    "jacobi": lambda: js.linear.Jacobi(tol=1e-10, diagonal=jnp.diag(_general(7))),
}


@pytest.mark.parametrize("name", sorted(COUNTED))
def test_num_matvecs_counts_operator_applications(name):
    A = _general(7) if name in ("gmres", "bicgstab", "jacobi") else _spd(7)
    op, calls = _counting_operator(A)
    sol = js.linear.solve(op, jnp.ones(N), COUNTED[name]())
    jax.effects_barrier()
    assert sol.result == js.RESULTS.successful
    assert int(sol.stats["num_matvecs"]) == len(calls) > 0


def test_gmres_counts_iterations_not_cycles():
    A, b = _general(8, n=30), jnp.ones(30)
    sol = js.linear.solve(A, b, js.linear.GMRES(tol=1e-10, restart=4))
    steps, mvs = int(sol.stats["num_steps"]), int(sol.stats["num_matvecs"])
    cycles = -(-steps // 4)
    # one matvec per iteration, one per restart (the true residual), one initial residual
    assert mvs == steps + cycles + 1
    # max_steps counts iterations: 6 iterations are a cycle and a half
    short = js.linear.solve(A, b, js.linear.GMRES(tol=1e-10, restart=4, max_steps=6), throw=False)
    assert short.result == js.RESULTS.max_steps_reached
    assert int(short.stats["num_steps"]) == 6
    # a full GMRES (restart = n) needs at most n iterations; its count matches CG's role
    full = js.linear.solve(A, b, js.linear.GMRES(tol=1e-10, restart=30))
    assert int(full.stats["num_steps"]) <= 30


# --- sizes at the edges -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL))
def test_one_by_one_system(name):
    sol = js.linear.solve(jnp.array([[4.0]]), jnp.array([2.0]), ALL[name]())
    np.testing.assert_allclose(sol.value, [0.5], rtol=1e-9)


def test_empty_b_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        js.linear.solve(jnp.zeros((0, 0)), jnp.zeros(0))


def test_restart_larger_than_n_is_correct():
    A, b = _general(9), jnp.ones(N)
    sol = js.linear.solve(A, b, js.linear.GMRES(tol=1e-12, restart=50))
    np.testing.assert_allclose(sol.value, _dense_solve(A, b), atol=1e-10)
    assert int(sol.stats["num_steps"]) <= N


def test_num_orth_larger_than_n_is_correct():
    A, b = _spd(10, n=3), jnp.ones(3)
    sol = js.linear.solve(A, b, js.linear.FlexibleCG(tol=1e-12, num_orth=5))
    np.testing.assert_allclose(sol.value, _dense_solve(A, b), atol=1e-10)


def test_recycling_sizes_larger_than_n():
    b = jnp.ones(6)
    with pytest.raises(ValueError, match="system size"):
        g = js.linear.GCRODR(restart=10, recycle=6)
        g.solve(_spd(11, n=6), b, g.init(b))
    with pytest.raises(ValueError, match="system size"):
        r = js.linear.RecycledCG(recycle=7)
        r.solve(_spd(11, n=6), b, r.init(b))
    # restart > n with recycle < n: a correct answer
    g = js.linear.GCRODR(tol=1e-10, restart=10, recycle=3)
    A = _spd(11, n=6)
    sol, space = g.solve(A, b, g.init(b))
    sol, _ = g.solve(A + 0.01 * jnp.eye(6), b, space)
    assert sol.result == js.RESULTS.successful
    np.testing.assert_allclose(sol.value, _dense_solve(A + 0.01 * jnp.eye(6), b), atol=1e-8)


def test_no_recompilation_for_new_python_float_hyperparameters():
    from jaxsolve.linear._solve import _solve

    A, b = _spd(0), jnp.ones(N)
    js.linear.solve(A, b, js.linear.SOR(1.1, tol=1e-8))
    before = _solve._cached._cache_size()
    js.linear.solve(A, b, js.linear.SOR(1.3, tol=1e-9))
    assert _solve._cached._cache_size() == before
