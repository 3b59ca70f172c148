"""Stationary (relaxation) iterations: Jacobi, SOR(ω) and SSOR(ω), run by the core loop."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
from jaxtyping import Array, Scalar

from .._solution import RESULTS
from .._tree import tree_add, tree_dtype, tree_ravel, tree_sub
from ._common import (
    DEFAULT_MAX_SWEEPS,
    AbstractIterativeLinearSolver,
    AbstractLinearIteration,
    LinearProblem,
    check_matrix_vectors,
    check_omega,
    check_square,
    dot,
    initial_status,
    omega_and_valid,
)
from ._stencil import Stencil5, StencilSweep


class _RelaxState(eqx.Module):
    r: Any  # a vector: an array, or a pytree of arrays (Jacobi)
    res_norm: Scalar
    num_matvecs: Array
    status: RESULTS


class _RelaxIteration(AbstractLinearIteration):
    """`x ← x + M⁻¹ (b − Ax)` for a splitting `M` given by `solve_m` (and, for SSOR, a second
    half-sweep with `solve_m2`). The residual is recomputed with a matvec every sweep: it is
    the true residual. `valid`: ω lies in (0, 2) (else `invalid_input`, before any sweep)."""

    tol: Any
    solve_m: Callable[[Array], Array]
    solve_m2: Callable[[Array], Array] | None
    valid: Any = True
    exact_residual = True

    def init(self, problem, y, options):
        r = tree_sub(problem.b, problem.operator.mv(y))
        status = initial_status(jnp.asarray(self.valid))
        return _RelaxState(r, jnp.sqrt(dot(r, r)), jnp.array(1, jnp.int32), status)

    def step(self, problem, y, state):
        b, mv = problem.b, problem.operator.mv
        y = tree_add(y, self.solve_m(state.r))
        k = 1
        r = tree_sub(b, mv(y))
        if self.solve_m2 is not None:
            y = tree_add(y, self.solve_m2(r))
            r = tree_sub(b, mv(y))
            k = 2
        return y, _RelaxState(r, jnp.sqrt(dot(r, r)), state.num_matvecs + k, state.status)


class DiagonalSolve(eqx.Module):
    """`r -> r / d` leafwise (Jacobi's splitting and preconditioner), for any vector structure."""

    d: Any

    def __call__(self, r):
        return jax.tree_util.tree_map(lambda ri, di: ri / di, r, self.d)


def read_diagonal(operator: lx.AbstractLinearOperator, diagonal=None):
    """`diagonal` as a vector shaped like the operator's, else the diagonal of `A` read with
    `lineax.diagonal` (free for matrices and diagonal-tagged operators; one matvec per column
    for a matvec callable), unflattened onto the operator's (possibly pytree) vectors."""
    struct = operator.in_structure()
    if diagonal is not None:
        return jax.tree_util.tree_map(jnp.asarray, diagonal)
    flat = lx.diagonal(operator)
    _, unravel = tree_ravel(jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), struct))
    return unravel(flat)


class _TriSolve(eqx.Module):
    t: Array
    lower: bool = eqx.field(static=True)

    def __call__(self, r):
        return jsl.solve_triangular(self.t, r.reshape(-1), lower=self.lower).reshape(r.shape)


class _AbstractRelaxation(AbstractIterativeLinearSolver):
    """State: `(operator, (solve_m, solve_m2, valid))`."""

    def splitting(self, operator) -> tuple[Any, Any, Any]:
        raise NotImplementedError

    def init(self, operator, options):
        check_square(operator, type(self).__name__)
        return operator, self.splitting(operator)

    def iteration(self, state, vector):
        operator, (m1, m2, valid) = state
        tol = self.resolved_tol(tree_dtype(vector))
        return _RelaxIteration(tol, m1, m2, valid), LinearProblem(operator, vector)

    def transpose(self, state, options):
        operator, _ = state
        return self.init(operator.transpose(), options), options

    def conj(self, state, options):
        operator, _ = state
        return self.init(lx.conj(operator), options), options


class Jacobi(_AbstractRelaxation):
    """Jacobi iteration `x ← x + D⁻¹ (b − Ax)`; converges for strictly diagonally dominant `A`.

    The error measure is the relative residual `‖b − Ax‖ / ‖b‖`. The diagonal is read with
    `lineax.diagonal` (pass `diagonal=` for a matvec callable to avoid materialising `A`).
    Works on pytree vectors too (`diagonal=` then has the vector's structure).

    **Arguments:**

    - `tol`: tolerance on the relative residual (`None`: 1e-6 in float64, 1e-5 in float32).
    - `max_steps`: the largest number of sweeps.
    - `diagonal`: the diagonal of `A` if known (shaped like `b`, a pytree for pytree `b`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    sol = js.linear.solve(A, jnp.ones(2), solver=js.linear.Jacobi(tol=1e-6))
    assert jnp.allclose(A @ sol.value, 1.0, atol=1e-5)
    ```
    """

    tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=DEFAULT_MAX_SWEEPS)
    diagonal: Array | None = None

    def splitting(self, operator):
        return DiagonalSolve(read_diagonal(operator, self.diagonal)), None, True


class SOR(_AbstractRelaxation):
    """Successive over-relaxation `x ← x + (D/ω + L)⁻¹ (b − Ax)` (Gauss-Seidel at ω = 1).

    Converges for symmetric positive definite `A` and `0 < ω < 2`; the best ω depends on the
    system, which is what `js.linear.RelaxationBandit` learns over a sequence. The matrix is
    read once per solve with `operator.as_matrix()` for a dense triangular sweep, except for a
    `js.linear.Stencil5` operator, which is swept row by row in `O(N M²)` (the residual uses
    the operator's own matvec). The error measure is the relative residual.

    **Arguments:**

    - `omega`: the relaxation ω in (0, 2) (a pytree leaf: a new ω does not recompile; a
      traced ω outside (0, 2) gives `RESULTS.invalid_input`, per member under `vmap`).
    - `tol`: tolerance on the relative residual (`None`: 1e-6 in float64, 1e-5 in float32).
    - `max_steps`: the largest number of sweeps.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    A = jnp.array([[4.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 4.0]])
    sol = js.linear.solve(A, jnp.ones(3), solver=js.linear.SOR(omega=1.1, tol=1e-6))
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, jnp.ones(3)), atol=1e-6)
    ```
    """

    omega: float | Array = 1.0
    tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=DEFAULT_MAX_SWEEPS)

    def __check_init__(self):
        check_omega(self.omega, "SOR")

    def splitting(self, operator):
        check_matrix_vectors(operator, "SOR")
        omega, valid = omega_and_valid(self.omega, operator.in_structure().dtype)
        if isinstance(operator, Stencil5):
            return StencilSweep.build(operator, omega, True), None, valid
        A = operator.as_matrix()
        lower = jnp.tril(A, -1) + jnp.diag(jnp.diag(A) / omega)
        return _TriSolve(lower, True), None, valid


class SSOR(_AbstractRelaxation):
    """Symmetric SOR: a forward SOR sweep then a backward one, per step (two matvecs).

    For symmetric `A` the SSOR splitting is symmetric, which makes it a preconditioner for CG
    too (`js.linear.SSORPreconditioner`). The error measure is the relative residual.

    **Arguments:**

    - `omega`: the relaxation ω in (0, 2) (a pytree leaf).
    - `tol`: tolerance on the relative residual (`None`: 1e-6 in float64, 1e-5 in float32).
    - `max_steps`: the largest number of (double) sweeps.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    A = jnp.array([[4.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 4.0]])
    sol = js.linear.solve(A, jnp.ones(3), solver=js.linear.SSOR(omega=1.2, tol=1e-6))
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, jnp.ones(3)), atol=1e-6)
    ```
    """

    omega: float | Array = 1.0
    tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=DEFAULT_MAX_SWEEPS)

    def __check_init__(self):
        check_omega(self.omega, "SSOR")

    def splitting(self, operator):
        check_matrix_vectors(operator, "SSOR")
        omega, valid = omega_and_valid(self.omega, operator.in_structure().dtype)
        if isinstance(operator, Stencil5):
            fwd = StencilSweep.build(operator, omega, True)
            return fwd, StencilSweep.build(operator, omega, False), valid
        A = operator.as_matrix()
        d = jnp.diag(jnp.diag(A) / omega)
        lower = jnp.tril(A, -1) + d
        upper = jnp.triu(A, 1) + d
        return _TriSolve(lower, True), _TriSolve(upper, False), valid
