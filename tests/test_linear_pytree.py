"""Pytree vectors and operators in `js.linear`: solves against numpy's dense solution of the
flattened system, derivatives against finite differences, compile counts, and the solvers
that need a matrix refusing a pytree with a message saying what to use. Runs in both dtypes
(tests/test_float32.py)."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from test_contract import _compiles

import jaxsolve as js

F32 = not jax.config.read("jax_enable_x64")
DTYPE = jnp.float32 if F32 else jnp.float64
TOL = 1e-5 if F32 else 1e-10
ATOL = 1e-4 if F32 else 1e-8

# x = {"u": (2,), "w": (3, 1)}: 5 unknowns in two leaves, one of them a grid.
TEMPLATE = {"u": jnp.zeros(2, DTYPE), "w": jnp.zeros((3, 1), DTYPE)}
_, UNRAVEL = ravel_pytree(TEMPLATE)
STRUCT = jax.eval_shape(lambda: TEMPLATE)


def _system(seed, spd=True):
    rng = np.random.default_rng(seed)
    R = rng.normal(size=(5, 5))
    # Strictly diagonally dominant (Jacobi converges) and, with spd, symmetric positive definite.
    M = 0.3 * (R @ R.T if spd else R) / 5 + 3 * np.eye(5)
    b = rng.normal(size=5)
    return jnp.asarray(M, DTYPE), UNRAVEL(jnp.asarray(b, DTYPE)), np.linalg.solve(M, b)


def _matvec(M):
    return lambda v: UNRAVEL(M @ ravel_pytree(v)[0])


def _check(x, ref):
    flat = np.asarray(ravel_pytree(x)[0])
    assert jax.tree_util.tree_structure(x) == jax.tree_util.tree_structure(TEMPLATE)
    assert x["w"].shape == (3, 1) and x["w"].dtype == DTYPE
    np.testing.assert_allclose(flat, ref, rtol=0, atol=ATOL * np.abs(ref).max())


SOLVERS = {
    "CG": js.linear.CG(tol=TOL),  # on a PyTreeLinearOperator (the others: a function operator)
    "CG-Jacobi": js.linear.CG(tol=TOL, preconditioner=js.linear.JacobiPreconditioner()),
    "GMRES": js.linear.GMRES(tol=TOL, restart=3),
    "BiCGStab": js.linear.BiCGStab(tol=TOL),
    "FlexibleCG": js.linear.FlexibleCG(tol=TOL),
    "Jacobi": js.linear.Jacobi(tol=TOL),
    "LU": lx.LU(),
}


# The float32 pass (CI time) runs the three Krylov recurrences; float64 runs every solver.
@pytest.mark.parametrize("name", ["BiCGStab", "CG", "GMRES"] if F32 else sorted(SOLVERS))
def test_solvers_on_pytrees_match_the_dense_solution(name):
    spd = name in ("CG", "CG-Jacobi", "FlexibleCG")
    M, b, ref = _system(1, spd=spd)
    op = lx.FunctionLinearOperator(_matvec(M), STRUCT)
    if name == "CG":
        op = lx.materialise(op)
        assert isinstance(op, lx.PyTreeLinearOperator)
    sol = js.linear.solve(op, b, SOLVERS[name])
    _check(sol.value, ref)
    assert sol.result == js.RESULTS.successful
    if name != "LU":
        assert sol.stats["error"] <= TOL


def test_recycled_cg_on_pytrees():
    # (GCRO-DR shares RecycledCG's flattening, `flat_system`.)
    M, b, ref = _system(2)
    rcg = js.linear.RecycledCG(tol=TOL, recycle=2)
    sol, space = rcg.solve(_matvec(M), b, rcg.init(b))
    _check(sol.value, ref)


@jax.jit
def _loss(M, t, b):
    # A(t) = M + t·I on pytrees; differentiable in t (closed over by the matvec) and in b.
    mv = lambda v: jax.tree_util.tree_map(lambda a, c: a + t * c, _matvec(M)(v), v)
    x = js.linear.solve(mv, b, js.linear.CG(tol=TOL)).value
    return jnp.sum(x["u"] ** 2) + jnp.sum(jnp.sin(x["w"]))


def test_grad_through_a_pytree_solve_matches_finite_differences():
    M, b, _ = _system(3)
    M64, b64 = np.asarray(M, np.float64), np.asarray(ravel_pytree(b)[0], np.float64)

    def dense(t, bf):
        x = np.linalg.solve(M64 + t * np.eye(5), bf)
        return np.sum(x[:2] ** 2) + np.sum(np.sin(x[2:]))

    t, h = 0.4, 1e-6
    g_t, g_b = jax.grad(_loss, argnums=(1, 2))(M, jnp.asarray(t, DTYPE), b)
    fd_t = (dense(t + h, b64) - dense(t - h, b64)) / (2 * h)
    fd_b = [(dense(t, b64 + h * e) - dense(t, b64 - h * e)) / (2 * h) for e in np.eye(5)]
    rtol = 1e-3 if F32 else 1e-6
    np.testing.assert_allclose(float(g_t), fd_t, rtol=rtol)
    np.testing.assert_allclose(np.asarray(ravel_pytree(g_b)[0]), fd_b, rtol=rtol, atol=rtol)
    assert g_b["w"].shape == (3, 1)


def test_new_pytree_data_compiles_nothing():
    M, b, _ = _system(4)
    jax.block_until_ready(_loss(M, jnp.asarray(0.1, DTYPE), b))
    M2, b2, _ = _system(5)
    assert _compiles(lambda: _loss(M2, jnp.asarray(0.2, DTYPE), b2)) == 0


@pytest.mark.parametrize(
    "solver",
    [
        js.linear.SOR(omega=1.2),
        js.linear.SSOR(omega=1.2),
        js.linear.CG(preconditioner=js.linear.SSORPreconditioner(1.2)),
    ],
    ids=["SOR", "SSOR", "SSOR-PCG"],
)
def test_matrix_solvers_refuse_pytrees_saying_what_to_use(solver):
    M, b, _ = _system(6)
    with pytest.raises(TypeError, match="pytree vectors use js.linear.CG"):
        js.linear.solve(_matvec(M), b, solver)


def test_pytree_misuse_is_a_clear_error():
    M, b, _ = _system(7)
    with pytest.raises(TypeError, match="PyTreeLinearOperator"):
        js.linear.solve(M, b)  # a matrix on a pytree right-hand side
    mixed = {"u": b["u"].astype(jnp.float16), "w": b["w"]}
    with pytest.raises(TypeError, match="one dtype"):
        js.linear.solve(lambda v: v, mixed)
    with pytest.raises(ValueError, match="structure"):
        js.linear.solve(lx.FunctionLinearOperator(_matvec(M), STRUCT), {"u": b["u"]})
