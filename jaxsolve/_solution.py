"""Result codes and the `Solution` every solver returns."""

from typing import Any

import equinox as eqx
import lineax as lx
from jaxtyping import Array, PyTree


class RESULTS(lx.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """Why a solver stopped. Each member carries the message shown by `throw=True`.

    Extends `lineax.RESULTS`, so lineax's linear-solve results (`singular`, `breakdown`,
    `stagnation`, ...) are members too. Compare with `sol.result == js.RESULTS.successful`;
    turn a result into its message with `js.RESULTS[sol.result]`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    sol = js.minimise(lambda y, _: jnp.sum(y**2), jnp.ones(2), max_steps=1,
                      solver=js.GradientDescent(0.1), throw=False)
    assert sol.result == js.RESULTS.max_steps_reached
    assert "max_steps" in js.RESULTS[sol.result]
    ```
    """

    nonfinite = (
        "A NaN or inf appeared in the inputs, the iterates or the error. Check the data, "
        "weights and initial point for NaN/inf, or make the step smaller (learning rate, "
        "damping)."
    )
    line_search_failed = (
        "The line search could not decrease the objective along the search direction. The "
        "problem may be badly scaled or non-smooth; try another solver or a looser `tol`."
    )
    invalid_input = (
        "An input value is invalid (for example a negative weight, a non-positive "
        "regularisation, a relaxation outside (0, 2), or marginals of different total mass). "
        "See the solver's docstring for what it expects."
    )
    inner_not_converged = (
        "An inner solve did not converge, so derivatives computed from it are approximate. "
        "Increase the inner `max_steps` or loosen the inner `tol`."
    )
    adjoint_not_converged = (
        "The linear solve of an implicit derivative (the adjoint system "
        "∇²_yy G v = ∇_y F of a hypergradient) did not converge, so the hypergradient is "
        "approximate. Give the estimator's linear solver more steps or a looser tolerance "
        "(e.g. lx.CG(rtol, atol, max_steps)), or check that the inner Hessian is positive "
        "definite (CG needs it; lx.GMRES does not)."
    )
    not_positive_definite = (
        "The conjugate-gradient recurrence met a direction of non-positive curvature "
        "(pᵀAp ≤ 0) or a preconditioner that is not positive definite: CG needs a symmetric "
        "positive definite operator. Use js.linear.GMRES or js.linear.BiCGStab for other "
        "systems, or check the preconditioner."
    )
    krylov_breakdown = (
        "BiCGStab broke down: an inner product of its recurrence vanished (the shadow "
        "residual became orthogonal to the residual). Try js.linear.GMRES, or another "
        "starting point `x0`."
    )
    krylov_stagnation = (
        "The restarted Krylov solve (GMRES / GCRO-DR) made no progress over a whole cycle of "
        "`restart` iterations: A may be singular, or the Krylov space of one cycle too small "
        "for this system. Increase `restart`, precondition the system, or try "
        "js.linear.BiCGStab."
    )
    inaccurate_residual = (
        "The solver's recurrence met `tol`, but the true relative residual ‖b − Ax‖/‖b‖ did "
        "not: rounding limits the accuracy this solver can reach on this system in this dtype. "
        "Loosen `tol`, solve in float64, or precondition the system."
    )

    primal_infeasible = (
        "The constraints cannot all hold: the problem is primal infeasible (for a QP: no x "
        "satisfies Ax = b, Gx <= h and lower <= x <= upper, e.g. some lower > upper). Check "
        "the constraint data; `sol.dual_*` hold the certificate."
    )
    dual_infeasible = (
        "The objective is unbounded below on the feasible set (dual infeasible): for a QP, a "
        "direction d with Qd = 0, cᵀd < 0 keeps every constraint. Add bounds or constraints, "
        "or check the signs of Q and c."
    )
    nonconvex = (
        "The quadratic term is not positive semidefinite, so the problem is not convex and "
        "has no well-defined global solution for this solver. Check Q (it must be "
        "symmetric positive semidefinite; only its symmetric part counts)."
    )


class Solution(eqx.Module):
    """What a jaxsolve solver returns; every family's output is a subclass.

    **Attributes:**

    - `value`: the solution (same pytree structure as the initial point).
    - `result`: a `js.RESULTS` member; `js.RESULTS.successful` when the family's error
      measure reached `tol`.
    - `stats`: a dict of scalars: always `num_steps` and the family's error measure at
      `value` (`error`, or `marginal_error` for optimal transport), plus solver-specific
      counts.
    - `state`: the solver's final internal state (for warm starts and inspection).
    - `aux`: auxiliary output, when a family has one; else `None`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    sol = js.minimise(lambda y, a: jnp.sum((y - a) ** 2), jnp.zeros(3), jnp.ones(3))
    assert sol.result == js.RESULTS.successful
    print(sol.value, sol.stats["num_steps"])
    ```
    """

    value: PyTree[Array]
    result: RESULTS
    stats: dict[str, Array]
    state: Any = None
    aux: Any = None
