"""`js.ot.solve`: validate, build the `OTProblem`, run a solver, differentiate implicitly."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from .._adjoint import AbstractAdjoint, ImplicitAdjoint
from .._solution import RESULTS
from .._solve import iterative_solve
from ._base import AbstractOTSolver
from ._geometry import AbstractGeometry
from ._output import OTSolution
from ._problem import OTProblem, ot_optimality
from ._sinkhorn import Sinkhorn

_TAGS = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})


def default_linear_solver(dtype) -> lx.AbstractLinearSolver:
    """The implicit-derivative solve's default: matrix-free CG (the Jacobian of
    `ot_optimality` is symmetric positive definite)."""
    if jnp.finfo(dtype).bits <= 32:
        return lx.CG(rtol=1e-6, atol=1e-9, max_steps=2000)
    return lx.CG(rtol=1e-10, atol=1e-14, max_steps=5000)


def _check_weights(w, size, name, side):
    if w is None:
        return None
    w = jnp.asarray(w)
    if w.ndim != 1 or w.shape[0] != size:
        raise ValueError(
            f"`{name}` must be a vector with one weight per {side} point, shape ({size},); got "
            f"shape {w.shape}."
        )
    if not jnp.issubdtype(w.dtype, jnp.inexact):
        w = w.astype(float)
    return w


def _check_tau(tau, name):
    if isinstance(tau, (int, float)) and not 0 < tau <= 1:
        raise ValueError(
            f"`{name}` must be in (0, 1] (1 = balanced, smaller = looser marginal); got {tau!r}."
        )


def solve(
    geom: AbstractGeometry,
    a=None,
    b=None,
    *,
    tau_a=1.0,
    tau_b=1.0,
    solver: AbstractOTSolver | None = None,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    init=None,
    throw: bool = True,
    progress: bool | Callable = False,
) -> OTSolution:
    """Solve an entropic optimal-transport problem, differentiably.

    Finds the potentials `(f, g)` of `min_P ⟨C, P⟩ + ε KL(P | a⊗b)` (+ `ρ KL` marginal
    penalties when unbalanced) with `P_ij = exp((f_i + g_j − C_ij)/ε)`. Derivatives of
    everything in the returned `OTSolution` with respect to the points, cost matrix,
    epsilon, `a`, `b` come from the implicit function theorem on the first-order conditions
    (default; memory independent of the iterations, second order correct), or from
    unrolling (`adjoint=js.UnrollAdjoint()`).

    **Arguments:**

    - `geom`: `js.ot.PointCloud(...)` or `js.ot.Geometry(...)`.
    - `a`, `b`: nonnegative weights of the `n` source / `m` target points (default uniform,
      summing to 1). Zero weights are allowed. In the balanced case they must have the
      same total mass.
    - `tau_a`, `tau_b`: in `(0, 1]`; 1 (default) makes the marginal a hard constraint,
      smaller relaxes it with `ρ KL(P1 | a)`, `ρ = ε τ/(1 − τ)` (OTT-JAX's convention).
    - `solver`: an `AbstractOTSolver`; default `js.ot.Sinkhorn()`.
    - `adjoint`: `js.ImplicitAdjoint()` (default; its default linear solver is matrix-free
      CG on the symmetric positive definite Jacobian) or `js.UnrollAdjoint()`.
    - `init`: optional starting potentials `(f0, g0)` (warm start).
    - `throw`: raise on failure; with `False` read `sol.result` (use under `vmap`).
    - `progress`: `True` for a progress bar on stderr or a callback `fn(step, error)`.

    **Returns:** an `OTSolution` (`f`, `g`, `plan`, `apply`, `transport_cost`, `reg_cost`,
    `result`, `stats` with `num_steps` and `marginal_error`).

    Invalid values (negative or NaN weights, unequal masses in a balanced problem,
    `ε ≤ 0`) give `js.RESULTS.invalid_input` (an error with `throw=True`).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (30, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (40, 2)) + 2.0

    def loss(x):
        return js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.1)).reg_cost

    val, grad = jax.value_and_grad(loss)(x)
    # The gradient of the regularised cost is 2 (x_i − T(x_i)) a_i, T the barycentric map.
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.1), solver=js.ot.Sinkhorn(tol=1e-9))
    T = sol.apply(y) / sol.apply(jnp.ones(40))[:, None]
    assert jnp.allclose(grad, 2 * (x - T) / 30, atol=1e-5)
    ```
    """
    if not isinstance(geom, AbstractGeometry):
        raise TypeError(
            "`geom` must be js.ot.PointCloud(x, y, ...) or js.ot.Geometry(cost_matrix, ...); "
            f"got {type(geom).__name__}."
        )
    solver = Sinkhorn() if solver is None else solver
    if not isinstance(solver, AbstractOTSolver):
        raise TypeError(
            "`solver` must be an OT solver such as js.ot.Sinkhorn(...); got "
            f"{type(solver).__name__}."
        )
    n, m = geom.shape
    a = _check_weights(a, n, "a", "source")
    b = _check_weights(b, m, "b", "target")
    _check_tau(tau_a, "tau_a")
    _check_tau(tau_b, "tau_b")
    if init is not None:
        if not (isinstance(init, (tuple, list)) and len(init) == 2):
            raise TypeError("`init` must be None or a pair of potentials (f0, g0).")
        f0, g0 = (jnp.asarray(init[0]), jnp.asarray(init[1]))
        if f0.shape != (n,) or g0.shape != (m,):
            raise ValueError(
                f"`init` potentials must have shapes ({n},) and ({m},); got {f0.shape} and "
                f"{g0.shape}."
            )
        init = (f0, g0)
    return _solve(geom, a, b, tau_a, tau_b, solver, adjoint, init, throw, progress)


@eqx.filter_jit
def _solve(geom, a, b, tau_a, tau_b, solver, adjoint, init, throw, progress):
    geom = geom.dense()
    dtype = geom.dtype
    n, m = geom.shape
    a = jnp.full(n, 1.0 / n, dtype) if a is None else a.astype(dtype)
    b = jnp.full(m, 1.0 / m, dtype) if b is None else b.astype(dtype)
    tau_a = jnp.asarray(tau_a, dtype)
    tau_b = jnp.asarray(tau_b, dtype)
    eps = geom.epsilon

    # Value checks: a failed check gives RESULTS.invalid_input; the solve itself then runs on
    # harmless stand-ins (uniform weights, epsilon 1) so that nothing else misbehaves.
    balanced = (tau_a == 1) & (tau_b == 1)
    mass_a, mass_b = jnp.sum(a), jnp.sum(b)
    rtol = 100 * jnp.finfo(dtype).eps
    bad_weights = (
        jnp.any(~(a >= 0)) | jnp.any(~(b >= 0)) | ~jnp.isfinite(mass_a) | ~jnp.isfinite(mass_b)
    )
    bad_weights = bad_weights | (mass_a <= 0) | (mass_b <= 0)
    bad_mass = balanced & (jnp.abs(mass_a - mass_b) > rtol * jnp.maximum(mass_a, mass_b))
    bad_eps = ~(eps > 0) | ~jnp.isfinite(eps)
    bad_tau = ~((tau_a > 0) & (tau_a <= 1) & (tau_b > 0) & (tau_b <= 1))
    invalid = bad_weights | bad_mass | bad_eps | bad_tau
    a = jnp.where(invalid, 1.0 / n, a)
    b = jnp.where(invalid, 1.0 / m, b)
    eps = jnp.where(invalid, 1.0, eps)
    tau_a = jnp.where(invalid, 1.0, tau_a)
    tau_b = jnp.where(invalid, 1.0, tau_b)

    problem = OTProblem(geom, a, b, tau_a, tau_b, eps)
    if init is None:
        y0 = (jnp.zeros(n, dtype), jnp.zeros(m, dtype))
    else:
        y0 = (init[0].astype(dtype), init[1].astype(dtype))
        y0 = problem.normalise(*y0)
    y0 = jax.lax.stop_gradient(y0)
    if isinstance(adjoint, ImplicitAdjoint) and adjoint.linear_solver is None:
        adjoint = ImplicitAdjoint(default_linear_solver(dtype))
    sol = iterative_solve(
        solver,
        None,
        y0,
        problem,
        optimality=ot_optimality,
        tags=_TAGS,
        tol=solver.tol,
        max_steps=solver.loop_steps(),
        adjoint=adjoint,
        progress=progress,
        name=type(solver).__name__,
    )
    result = RESULTS.where(invalid, RESULTS.invalid_input, sol.result)
    stats = dict(sol.stats)
    # A solver's own error can be that of an intermediate epsilon (epsilon scaling stopped by
    # `max_steps`): an unsuccessful solve reports the true error of the returned potentials.
    err = stats.pop("error")
    f_, g_ = jax.lax.stop_gradient(sol.value)
    stats["marginal_error"] = jax.lax.cond(
        result == RESULTS.successful,
        lambda: jnp.asarray(err, dtype),
        lambda: problem.marginal_error(f_, g_).astype(dtype),
    )
    f, g = sol.value
    if throw:
        f = result.error_if(f, result != RESULTS.successful)
    return OTSolution(f=f, g=g, problem=problem, result=result, stats=stats)
