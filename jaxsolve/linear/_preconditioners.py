"""Preconditioners for `CG`: Jacobi, SSOR, or any callable `r -> M⁻¹ r`."""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
from jaxtyping import Array

from ._common import check_matrix_vectors, check_omega, omega_and_valid
from ._relaxation import DiagonalSolve, read_diagonal
from ._stencil import Stencil5, StencilSweep


class AbstractPreconditioner(eqx.Module):
    """A preconditioner is built from the operator once per solve: `build(operator)` returns a
    function `r -> M⁻¹ r` (symmetric positive definite for `CG`)."""

    @abc.abstractmethod
    def build(self, operator: lx.AbstractLinearOperator) -> Callable[[Array], Array]: ...

    def valid(self, operator: lx.AbstractLinearOperator) -> Array:
        """Whether the preconditioner's (possibly traced) parameters are valid; a solve with an
        invalid one reports `RESULTS.invalid_input` (per member under `vmap`)."""
        return jnp.array(True)


class JacobiPreconditioner(AbstractPreconditioner):
    """Diagonal (Jacobi) preconditioner `M = diag(A)`.

    The diagonal is read with `lineax.diagonal` (free for matrices and diagonal-tagged
    operators; for a matvec callable it costs one matvec per column, so pass `diagonal=` then).
    Works on pytree vectors (`diagonal=` then has the vector's structure).

    **Arguments:**

    - `diagonal`: the diagonal of `A`, if known (shaped like `b`: an array, or a pytree for
      pytree vectors); `None` reads it.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    A = jnp.array([[4.0, 1.0], [1.0, 100.0]])
    pcg = js.linear.CG(tol=1e-6, preconditioner=js.linear.JacobiPreconditioner())
    sol = js.linear.solve(A, jnp.ones(2), solver=pcg)
    assert jnp.allclose(A @ sol.value, 1.0, atol=1e-6)
    ```
    """

    diagonal: Any = None

    def build(self, operator):
        return DiagonalSolve(read_diagonal(operator, self.diagonal))


class SSORPreconditioner(AbstractPreconditioner):
    """Symmetric SOR preconditioner `M = (D/ω + L) (D/ω)⁻¹ (D/ω + U) · ω/(2 − ω)`.

    Two dense triangular solves per application (the matrix is read with
    `operator.as_matrix()`): meant for small and medium problems, and as the SSOR-PCG of
    Learning to Relax. SPD for SPD `A` and `0 < ω < 2`.

    **Arguments:**

    - `omega`: the relaxation `ω` in (0, 2) (a pytree leaf).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    A = jnp.array([[4.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 4.0]])
    pcg = js.linear.CG(tol=1e-6, preconditioner=js.linear.SSORPreconditioner(omega=1.2))
    sol = js.linear.solve(A, jnp.ones(3), solver=pcg)
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, jnp.ones(3)), atol=1e-6)
    ```
    """

    omega: float | Array = 1.0

    def __check_init__(self):
        check_omega(self.omega, "SSORPreconditioner")

    def valid(self, operator):
        check_matrix_vectors(operator, "SSORPreconditioner")
        return omega_and_valid(self.omega, operator.in_structure().dtype)[1]

    def build(self, operator):
        check_matrix_vectors(operator, "SSORPreconditioner")
        shape = operator.in_structure().shape
        if isinstance(operator, Stencil5):
            omega, _ = omega_and_valid(self.omega, operator.center.dtype)
            fwd = StencilSweep.build(operator, omega, True)
            bwd = StencilSweep.build(operator, omega, False)
            return _StencilSSORApply(fwd, bwd, operator.center / omega, (2 - omega) / omega)
        A = operator.as_matrix()
        omega, _ = omega_and_valid(self.omega, A.dtype)
        d = jnp.diag(A) / omega
        lower = jnp.tril(A, -1) + jnp.diag(d)
        upper = jnp.triu(A, 1) + jnp.diag(d)
        return _SSORApply(lower, upper, d, (2 - omega) / omega, shape)


class _SSORApply(eqx.Module):
    lower: Array
    upper: Array
    d: Array
    scale: Array
    shape: tuple = eqx.field(static=True)

    def __call__(self, r):
        y = jsl.solve_triangular(self.lower, r.reshape(-1), lower=True)
        z = jsl.solve_triangular(self.upper, self.d * y, lower=False)
        return (self.scale * z).reshape(self.shape)


class _StencilSSORApply(eqx.Module):
    fwd: StencilSweep
    bwd: StencilSweep
    d: Array
    scale: Array

    def __call__(self, r):
        return self.scale * self.bwd(self.d * self.fwd(r))


class _CallablePreconditioner(AbstractPreconditioner):
    fn: Callable

    def build(self, operator):
        # Closure-convert, so arrays the callable closes over are leaves of the solver state.
        return eqx.filter_closure_convert(self.fn, operator.in_structure())


class _OperatorPreconditioner(AbstractPreconditioner):
    operator: lx.AbstractLinearOperator

    def build(self, operator):
        return self.operator.mv


def as_preconditioner(p) -> AbstractPreconditioner | None:
    if p is None or isinstance(p, AbstractPreconditioner):
        return p
    if isinstance(p, lx.AbstractLinearOperator):
        return _OperatorPreconditioner(p)
    if callable(p):
        return _CallablePreconditioner(p)
    raise TypeError(
        "`preconditioner` must be None, js.linear.JacobiPreconditioner(), "
        "js.linear.SSORPreconditioner(omega), a lineax operator applying M⁻¹, or a callable "
        f"r -> M⁻¹ r; got {type(p).__name__}."
    )
