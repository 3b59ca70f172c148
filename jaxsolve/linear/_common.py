"""The linear family on the core protocol: `LinearProblem`, the base of the inner iterations,
the family's defaults, and `run_linear`, which runs an iteration through `iterative_solve` and
hands lineax its `(solution, result, stats)` triple."""

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Bool, Scalar

from .._adjoint import AbstractAdjoint
from .._checks import check_max_steps, check_tol
from .._iterate import AbstractIterativeSolver, LoopKind, converged_by, tree_all_finite
from .._problem import AbstractProblem, default_tol
from .._solution import RESULTS
from .._solve import iterative_solve
from .._tree import (
    check_vector_structure,
    is_single_array,
    same_vector_structure,
    tree_dot,
    tree_dtype,
    tree_norm_scaled,
    tree_sub,
    zeros_like,
)

# The family's defaults, in one place: the most iterations of a Krylov solve and of a
# relaxation, and the relative-residual tolerance for each dtype.
DEFAULT_MAX_STEPS = 10_000
DEFAULT_MAX_SWEEPS = 100_000


def linear_default_tol(dtype) -> float:
    """The linear family's default tolerance on `‖b − Ax‖/‖b‖` for `dtype`."""
    return default_tol(dtype, 1e-6, 1e-5)


# Vectors are arrays of any shape (grids stay grids) or pytrees of arrays of one dtype.
dot = tree_dot


def safe_norm_b(b) -> Scalar:
    nb = jnp.sqrt(dot(b, b))
    return jnp.where(nb > 0, nb, jnp.ones_like(nb))


class LinearProblem(AbstractProblem):
    """`A y = b` for a square lineax `operator` and a vector `b` (an array of any shape —
    grids stay grids — or a pytree of arrays); optimality `A y − b`. Error measure: the
    relative residual `‖b − Ay‖/‖b‖` (`‖b‖ = 0` counts as 1), `stats["error"]`.

    **Example:**

    ```python
    import jax.numpy as jnp, lineax as lx
    import jaxsolve as js

    problem = js.linear.LinearProblem(lx.MatrixLinearOperator(2.0 * jnp.eye(2)), jnp.ones(2))
    assert jnp.allclose(problem.optimality(jnp.full(2, 0.5)), 0.0)
    ```
    """

    operator: lx.AbstractLinearOperator
    b: Any
    norm_b: Scalar
    error_name: ClassVar[str] = "error"

    def __init__(self, operator, b, norm_b=None):
        self.operator = operator
        self.b = b
        self.norm_b = safe_norm_b(b) if norm_b is None else norm_b

    def optimality(self, y):
        return tree_sub(self.operator.mv(y), self.b)

    def adjoint_solver(self, y):
        return lx.AutoLinearSolver(well_posed=None)

    def validate(self):
        finite = tree_all_finite(self.b)
        if isinstance(self.operator, lx.MatrixLinearOperator):
            finite = finite & jnp.all(jnp.isfinite(self.operator.matrix))
        return RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite)

    @staticmethod
    def default_tol(dtype) -> float:
        return linear_default_tol(dtype)


class AbstractLinearIteration(AbstractIterativeSolver[LinearProblem, Array, Any]):
    """Base of the inner iterations. The state has `res_norm` (the solver's residual norm),
    `num_matvecs` and `status` (`successful` while the iteration is healthy, else why it
    failed); `valid` says the solver's hyperparameters are valid for this problem (a traced
    out-of-range ω: `invalid_input`, for that member of a batch only).

    `exact_residual`: the state's residual is `b − Ay` computed with a matvec (relaxation,
    GMRES's restarts); otherwise the residual is a recurrence that can drift, and the true
    residual is checked after the loop (one matvec).
    """

    tol: eqx.AbstractVar[Any]
    exact_residual: ClassVar[bool] = False

    def error(self, problem, y, state) -> Scalar:
        return state.res_norm / problem.norm_b

    def converged(self, problem, y, state) -> tuple[Bool[Array, ""], RESULTS]:
        return converged_by(self.error(problem, y, state), self.tol)

    def terminate(self, problem, y, state):
        done, result = self.converged(problem, y, state)
        failed = state.status != RESULTS.successful
        return done | failed, RESULTS.where(failed, state.status, result)

    def postprocess(self, problem, y, state):
        stats = {"num_matvecs": state.num_matvecs}
        if not self.exact_residual:
            r = tree_sub(problem.b, problem.operator.mv(y))
            stats["error"] = tree_norm_scaled(r) / problem.norm_b
            stats["num_matvecs"] = state.num_matvecs + 1
        return y, stats


def status_of(finite, ok, failure) -> RESULTS:
    """`successful` when `ok`, `nonfinite` when a quantity was not finite, else `failure`."""
    return RESULTS.where(  # pyright: ignore[reportReturnType]
        ~finite, RESULTS.nonfinite, RESULTS.where(ok, RESULTS.successful, failure)
    )


def initial_status(valid) -> RESULTS:
    return RESULTS.where(valid, RESULTS.successful, RESULTS.invalid_input)  # pyright: ignore


class _LoopOnly(AbstractAdjoint):
    """The inner iterations are a plain `lax` loop, never differentiated: lineax's
    `linear_solve` rule differentiates `js.linear.solve` (one more solve, not the loop)."""

    @property
    def loop_kind(self) -> LoopKind:
        return "lax"

    def apply(self, fn_primal, fn_rewrite, inputs, tags, default_solver, throw):
        return fn_primal(inputs)


def run_iteration(
    iteration: AbstractLinearIteration,
    problem: LinearProblem,
    y0: Array,
    max_steps: int,
    options: dict[str, Any] | None = None,
):
    """Run `iteration` on `problem` through `iterative_solve`; return the `js.Solution` with
    its result checked against the TRUE residual: `successful` only when `‖b − Ay‖/‖b‖ ≤ tol`."""
    sol = iterative_solve(
        problem,
        iteration,
        y0,
        max_steps=max_steps,
        adjoint=_LoopOnly(),
        throw=False,
        options=options,
    )
    short = (sol.result == RESULTS.successful) & ~(sol.stats["error"] <= iteration.tol)
    result = RESULTS.where(short, RESULTS.inaccurate_residual, sol.result)
    return eqx.tree_at(lambda s: s.result, sol, result)


def to_lx_result(result: RESULTS) -> lx.RESULTS:
    """Map a jaxsolve result onto the lineax members lineax.linear_solve carries (the precise
    jaxsolve code travels in `stats["result"]`)."""
    r = lx.RESULTS
    return r.where(  # pyright: ignore[reportReturnType]
        result == RESULTS.successful,
        r.successful,
        r.where(
            result == RESULTS.max_steps_reached,
            r.max_steps_reached,
            r.where(result == RESULTS.krylov_stagnation, r.stagnation, r.breakdown),
        ),
    )


class AbstractIterativeLinearSolver(lx.AbstractLinearSolver):
    """Base of jaxsolve's iterative lineax solvers: `tol` (`None`: the family default for the
    dtype), `max_steps`; `iteration(state, vector)` builds the inner iteration and its
    problem; `compute` runs it and reports lineax's triple with the precise jaxsolve result in
    `stats["result"]`."""

    tol: eqx.AbstractVar[Any]
    max_steps: eqx.AbstractVar[int]

    def __check_init__(self):
        if self.tol is not None:
            check_tol(self.tol)
        check_max_steps(self.max_steps)

    def resolved_tol(self, dtype):
        tol = linear_default_tol(dtype) if self.tol is None else self.tol
        return jnp.asarray(tol, dtype)

    def loop_steps(self, vector) -> int:
        """The most loop steps needed for `max_steps` iterations."""
        return self.max_steps

    def iteration(self, state, vector) -> tuple[AbstractLinearIteration, LinearProblem]:
        raise NotImplementedError

    def compute(self, state, vector, options):
        iteration, problem = self.iteration(state, vector)
        y0 = options.get("y0", None)
        dtype = tree_dtype(vector)
        y0 = (
            zeros_like(vector)
            if y0 is None
            else jax.tree_util.tree_map(lambda y: jnp.asarray(y, dtype), y0)
        )
        sol = run_iteration(iteration, problem, y0, self.loop_steps(vector))
        stats = dict(sol.stats, result=sol.result)
        return sol.value, to_lx_result(sol.result), stats

    def assume_full_rank(self):
        return True


def check_square(operator: lx.AbstractLinearOperator, who: str) -> None:
    """Static checks of a Krylov solver's operator: square (the same input and output
    structure, which may be a pytree), its vectors' leaves of one dtype."""
    if not same_vector_structure(operator.in_structure(), operator.out_structure()):
        raise ValueError(
            f"{who} needs a square operator (same input and output structure); got "
            f"{operator.in_structure()} -> {operator.out_structure()}."
        )
    check_vector_structure(operator.in_structure(), who)


def check_matrix_vectors(operator: lx.AbstractLinearOperator, who: str) -> None:
    """For the solvers that sweep the entries of a matrix (SOR, SSOR, the SSOR
    preconditioner): refuse an operator on pytree vectors, saying what to use instead."""
    if not is_single_array(operator.in_structure()):
        raise TypeError(
            f"{who} sweeps the rows of a matrix, so it needs an operator on single-array "
            f"vectors; got the pytree structure {operator.in_structure()}. For pytree vectors "
            "use js.linear.CG (symmetric positive definite; preconditioner="
            "js.linear.JacobiPreconditioner() works on pytrees), GMRES, BiCGStab or Jacobi; or "
            "flatten the system with jax.flatten_util.ravel_pytree and pass "
            "lx.MatrixLinearOperator(operator.as_matrix())."
        )


def check_omega(omega, who: str):
    if isinstance(omega, (int, float)) and not (0 < omega < 2):
        raise ValueError(
            f"{who} needs a relaxation `omega` strictly between 0 and 2 (it diverges "
            f"otherwise); got {omega!r}. Typical values: 1.0 (Gauss-Seidel) to 1.9."
        )


def omega_and_valid(omega, dtype) -> tuple[Array, Bool[Array, ""]]:
    """ω as an array, and whether it lies in (0, 2). An invalid (traced) ω is replaced by 1
    so that nothing downstream divides by zero; the solve then reports `invalid_input`."""
    omega = jnp.asarray(omega, dtype=dtype)
    valid = (omega > 0) & (omega < 2)
    return jnp.where(valid, omega, jnp.ones_like(omega)), valid
