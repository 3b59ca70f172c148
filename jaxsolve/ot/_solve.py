"""`js.ot.solve`: check the arguments, build the `OTProblem`, run a solver with
`js.iterative_solve` (loop, implicit derivative, value checks, `throw`), wrap an
`OTSolution`."""

from collections.abc import Callable
from typing import overload

import equinox as eqx
import jax.numpy as jnp

from .._adjoint import AbstractAdjoint, ImplicitAdjoint
from .._checks import floats_to_arrays
from .._solve import iterative_solve, with_tol
from ._base import AbstractOTSolver
from ._geometry import AbstractGeometry
from ._low_rank import LowRankOTSolution, LowRankSinkhorn, solve_low_rank
from ._output import OTSolution
from ._problem import OTProblem
from ._sinkhorn import Sinkhorn


def _check_real(x, what):
    if jnp.issubdtype(jnp.result_type(x), jnp.complexfloating):
        raise TypeError(f"{what} must be real; got dtype {jnp.result_type(x)}.")


def _check_weights(w, size, name, side):
    if w is None:
        return None
    w = jnp.asarray(w)
    _check_real(w, f"`{name}`")
    if w.ndim != 1 or w.shape[0] != size:
        raise ValueError(
            f"`{name}` must be a vector with one weight per {side} point, shape ({size},); got "
            f"shape {w.shape}."
        )
    if not jnp.issubdtype(w.dtype, jnp.inexact):
        w = w.astype(float)
    return w


def _check_tau(tau, name):
    _check_real(tau, f"`{name}`")
    if isinstance(tau, (int, float)) and not 0 < tau <= 1:
        raise ValueError(
            f"`{name}` must be in (0, 1] (1 = balanced, smaller = looser marginal); got {tau!r}."
        )


@overload
def solve(
    geom: AbstractGeometry,
    a=None,
    b=None,
    *,
    tau_a=1.0,
    tau_b=1.0,
    solver: LowRankSinkhorn,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    init=None,
    throw: bool = True,
    progress: bool | Callable = False,
) -> LowRankOTSolution: ...


@overload
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
) -> OTSolution: ...


def solve(
    geom: AbstractGeometry,
    a=None,
    b=None,
    *,
    tau_a=1.0,
    tau_b=1.0,
    solver: AbstractOTSolver | LowRankSinkhorn | None = None,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    init=None,
    throw: bool = True,
    progress: bool | Callable = False,
) -> OTSolution | LowRankOTSolution:
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
    `ε ≤ 0`) give `js.RESULTS.invalid_input`, NaN/inf in the cost or points
    `js.RESULTS.nonfinite` (errors with `throw=True`; `OTProblem.validate`). Complex costs,
    points or weights, and empty point sets, are refused at trace time.

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
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.1), solver=js.ot.Sinkhorn(tol=1e-6))
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
    if not isinstance(solver, (AbstractOTSolver, LowRankSinkhorn)):
        raise TypeError(
            "`solver` must be an OT solver such as js.ot.Sinkhorn(...) or "
            f"js.ot.LowRankSinkhorn(rank=...); got {type(solver).__name__}."
        )
    _check_real(jnp.zeros((), geom.dtype), "The geometry's cost")
    n, m = geom.shape
    if n == 0 or m == 0:
        raise ValueError(
            f"js.ot.solve needs at least one source and one target point; got {n} and {m}."
        )
    a = _check_weights(a, n, "a", "source")
    b = _check_weights(b, m, "b", "target")
    if isinstance(solver, LowRankSinkhorn):
        # Its own problem and solution types: the iterate is the factors (Q, R, g), not
        # potentials (see jaxsolve/ot/_low_rank.py).
        if not all(isinstance(t, (int, float)) and t == 1 for t in (tau_a, tau_b)):
            raise ValueError(
                "LowRankSinkhorn solves balanced problems only: leave tau_a and tau_b at 1, "
                "or use js.ot.Sinkhorn for unbalanced OT."
            )
        return solve_low_rank(geom, a, b, solver, adjoint, init, throw, progress)
    _check_tau(tau_a, "tau_a")
    _check_tau(tau_b, "tau_b")
    if init is not None:
        if not (isinstance(init, (tuple, list)) and len(init) == 2):
            raise TypeError("`init` must be None or a pair of potentials (f0, g0).")
        f0, g0 = (jnp.asarray(init[0]), jnp.asarray(init[1]))
        _check_real(f0, "`init`")
        _check_real(g0, "`init`")
        if f0.shape != (n,) or g0.shape != (m,):
            raise ValueError(
                f"`init` potentials must have shapes ({n},) and ({m},); got {f0.shape} and "
                f"{g0.shape}."
            )
        init = (f0, g0)
    # The solver's Python floats (tol, ε-scaling decay, momentum, Newton's forcing, ...) become
    # arrays: new values are new data, never a recompilation.
    solver = with_tol(floats_to_arrays(solver), None, OTProblem.default_tol(geom.dtype))
    # `_solve` reads tau as an array anyway: a Python number would be a static argument of the
    # jitted solve, and every new value (e.g. an unbalanced tau next to the balanced 1.0) a new
    # compilation.
    tau_a, tau_b = (jnp.asarray(t) if isinstance(t, (int, float)) else t for t in (tau_a, tau_b))
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
    # Invalid values are recorded in the problem (its `validate()` says so) and replaced by
    # harmless stand-ins, so that the solve and its derivative run on a sane problem.
    problem = OTProblem(geom, a, b, tau_a, tau_b, geom.epsilon).with_stand_ins()
    if init is None:
        y0 = (jnp.zeros(n, dtype), jnp.zeros(m, dtype))
    else:
        y0 = problem.normalise(init[0].astype(dtype), init[1].astype(dtype))
    sol = iterative_solve(
        problem,
        solver,
        y0,
        max_steps=solver.max_steps,
        adjoint=adjoint,
        throw=throw,
        progress=progress,
        name=type(solver).__name__,
    )
    return OTSolution(value=sol.value, result=sol.result, stats=sol.stats, problem=problem)
