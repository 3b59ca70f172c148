"""`js.qp.solve`: convex quadratic programs as differentiable layers (OptNet-style)."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._adjoint import AbstractAdjoint, ImplicitAdjoint
from .._checks import check_max_steps, check_tol, floats_to_arrays
from .._solution import Solution
from .._solve import iterative_solve, with_tol
from ._admm import ADMM
from ._problem import QPProblem, check_shapes


class QPSolution(Solution):
    """The solution of `js.qp.solve`: a `js.Solution` (`value` is `x`) with the multipliers.

    The KKT conditions at the solution read
    `Qx + c + Aᵀ dual_eq + Gᵀ dual_ineq − dual_lower + dual_upper = 0`, with
    `dual_ineq, dual_lower, dual_upper ≥ 0` and complementary slackness. All fields are
    differentiable (implicit derivative of the KKT system on the active set).

    **Attributes:** `x` (= `value`), `dual_eq` (shape `(p,)`), `dual_ineq` (`(q,)`),
    `dual_lower`, `dual_upper` (`(n,)`, or `(0,)` without bounds), `objective`
    (`½xᵀQx + cᵀx`), and `result`, `stats` (`num_steps`: ADMM iterations, `error`: the KKT
    error, `polished`, `num_polish`, `rho`), `state` as for every `js.Solution`. Pass the
    solution as `init=` to warm-start a related QP.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    Q, c = jnp.eye(2), jnp.zeros(2)           # min ½‖x‖² s.t. x0 + x1 = 1, x >= 0
    sol = js.qp.solve(Q, c, A=jnp.ones((1, 2)), b=jnp.array([1.0]), G=-jnp.eye(2),
                      h=jnp.zeros(2))
    assert jnp.allclose(sol.x, 0.5) and jnp.allclose(sol.dual_eq, -0.5)
    assert jnp.allclose(sol.dual_ineq, 0.0)   # the bounds x >= 0 are inactive
    ```
    """

    dual_eq: Array = None  # pyright: ignore[reportAssignmentType]
    dual_ineq: Array = None  # pyright: ignore[reportAssignmentType]
    dual_lower: Array = None  # pyright: ignore[reportAssignmentType]
    dual_upper: Array = None  # pyright: ignore[reportAssignmentType]
    objective: Array = None  # pyright: ignore[reportAssignmentType]
    duals: Array = None  # pyright: ignore[reportAssignmentType]  # stacked, for warm starts

    @property
    def x(self) -> Array:
        return self.value


def _as_float(v, dtype, name) -> Any:
    if v is None:
        return None
    if not eqx.is_array_like(v):
        raise TypeError(f"`{name}` must be an array; got {type(v).__name__}.")
    v = jnp.asarray(v)
    if not (jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)):
        raise TypeError(f"`{name}` must hold real numbers; got dtype {v.dtype}.")
    return v.astype(dtype)


def solve(
    Q: Float[Array, "n n"] | Callable[[Array], Array],
    c: Float[Array, " n"],
    *,
    A: Float[Array, "p n"] | None = None,
    b: Float[Array, " p"] | None = None,
    G: Float[Array, "q n"] | None = None,
    h: Float[Array, " q"] | None = None,
    lower: Float[Array, " n"] | float | None = None,
    upper: Float[Array, " n"] | float | None = None,
    solver: ADMM = ADMM(),
    init: Any = None,
    tol: float | None = None,
    max_steps: int = 10000,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    throw: bool = True,
) -> QPSolution:
    """Solve the convex QP `min ½xᵀQx + cᵀx` s.t. `Ax = b`, `Gx ≤ h`, `lower ≤ x ≤ upper`.

    Jittable and vmappable (a batch of QPs of one shape is one `jax.vmap`; pass
    `throw=False` and read one `result` per problem). Differentiable with respect to every
    input (`Q`, `c`, `A`, `b`, `G`, `h`, `lower`, `upper`, and arrays a matvec `Q` closes
    over) by the implicit function theorem on the KKT conditions on the active set at the
    solution (OptNet, Amos & Kolter 2017): one linear solve of size `n + p + q (+ n)`, dense up
    to 256 unknowns and GMRES above, never through the iterations. At a degenerate vertex
    (an active constraint with a zero multiplier) the derivative is the one that keeps it
    inactive.

    **Arguments:**

    - `Q`: an `(n, n)` positive semidefinite matrix (only its symmetric part is used), or a
      matvec `v -> Q v` (then the inner solves are CG and convexity is not checked).
    - `c`: the linear term, shape `(n,)`.
    - `A`, `b`: equality constraints `Ax = b`, shapes `(p, n)`, `(p,)` (both or neither).
    - `G`, `h`: inequality constraints `Gx ≤ h`, shapes `(q, n)`, `(q,)`.
    - `lower`, `upper`: bounds, scalars or `(n,)`; `±inf` for free coordinates.
    - `solver`: `js.qp.ADMM(...)` (OSQP's algorithm; the default).
    - `init`: a previous `QPSolution` (warm start from its `x` and multipliers, e.g. for the
      next QP of a sequence; its final ρ too), a pair `(x0, duals0)` or triple
      `(x0, duals0, rho0)` (`duals0` stacked as `QPSolution.duals`: equalities,
      inequalities, then bounds, upper positive), an array `x0`, or `None` (zeros).
    - `tol`: tolerance on the KKT error (relative primal, dual and complementarity residuals,
      ∞-norms); `None` takes the solver's, else 1e-8 in float64, 1e-4 in float32.
    - `max_steps`: the most ADMM iterations.
    - `adjoint`: `js.ImplicitAdjoint()` (default) or `js.UnrollAdjoint()`.
    - `throw`: raise if the solve fails (infeasible, unbounded, non-convex, NaN data, not
      converged); with `False` read `sol.result`.

    **Returns:** a `js.qp.QPSolution`. Failures are results: `RESULTS.primal_infeasible`
    (also for `lower > upper`), `RESULTS.dual_infeasible` (unbounded below),
    `RESULTS.nonconvex` (dense `Q` not positive semidefinite), `RESULTS.nonfinite` (NaN
    data), `RESULTS.max_steps_reached`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    Q, c = jnp.array([[2.0, 0.5], [0.5, 1.0]]), jnp.array([1.0, 1.0])
    G, h = -jnp.eye(2), jnp.zeros(2)                     # x >= 0, written as -x <= 0
    sol = js.qp.solve(Q, c, A=jnp.ones((1, 2)), b=jnp.array([1.0]), G=G, h=h)
    assert jnp.allclose(sol.x, jnp.array([0.25, 0.75]), atol=1e-6)
    # derivative of x*_0 with respect to the equality's right-hand side
    dx = jax.grad(lambda b: js.qp.solve(Q, c, A=jnp.ones((1, 2)), b=b, G=G, h=h).x[0])
    assert jnp.allclose(dx(jnp.array([1.0])), 0.25, atol=1e-6)
    ```
    """
    if not isinstance(solver, ADMM):
        raise TypeError(
            f"`solver` must be a js.qp solver such as js.qp.ADMM(); got {type(solver).__name__}."
        )
    check_max_steps(max_steps)
    check_tol(tol)
    check_tol(solver.tol)
    if not eqx.is_array_like(c):
        raise TypeError(f"`c` must be an array of shape (n,); got {type(c).__name__}.")
    c0 = jnp.asarray(c)
    qa = None if callable(Q) else Q
    if qa is not None and not eqx.is_array_like(qa):
        raise TypeError(
            f"`Q` must be an (n, n) array or a matvec callable; got {type(Q).__name__}."
        )
    floats = [
        jnp.asarray(v).dtype
        for v in (qa, c0, A, b, G, h, lower, upper)
        if v is not None and jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating)
    ]
    dtype = jnp.result_type(*floats) if floats else jnp.result_type(float)
    c = jnp.asarray(c0, dtype)
    n = c.shape[0] if c.ndim == 1 else -1
    Qm = Q if callable(Q) else _as_float(Q, dtype, "Q")
    A, b, G, h = (_as_float(v, dtype, k) for v, k in ((A, "A"), (b, "b"), (G, "G"), (h, "h")))
    lower, upper = (_bound(v, dtype, k, n) for v, k in ((lower, "lower"), (upper, "upper")))
    check_shapes(Qm, c, A, b, G, h, lower, upper)
    m = (0 if b is None else b.shape[0]) + (0 if h is None else h.shape[0])
    m = m + (0 if lower is None and upper is None else n)
    x0, y0, rho0 = _initial_point(init, n, m, dtype)
    if rho0 is not None:  # a warm start keeps the penalty the previous solve adapted to
        solver = eqx.tree_at(lambda s: s.rho, solver, jnp.asarray(rho0, dtype))
    solver, tol = floats_to_arrays((solver, tol))
    return _solve(Qm, c, A, b, G, h, lower, upper, solver, x0, y0, tol, max_steps, adjoint, throw)


def _bound(v, dtype, name, n):
    v = _as_float(v, dtype, name)
    return jnp.broadcast_to(v, (n,)) if v is not None and v.ndim == 0 else v


def _initial_point(init, n, m, dtype):
    if init is None:
        return jnp.zeros((n,), dtype), jnp.zeros((m,), dtype), None
    rho0 = None
    if isinstance(init, QPSolution):
        x0, y0, rho0 = init.x, init.duals, init.stats["rho"]
    elif isinstance(init, tuple):
        if len(init) not in (2, 3):
            raise ValueError(
                "`init` as a tuple must be `(x0, duals0)` or `(x0, duals0, rho0)` (duals "
                "stacked as in QPSolution.duals, rho0 as in its stats)."
            )
        x0, y0 = init[:2]
        rho0 = init[2] if len(init) == 3 else None
    else:
        x0, y0 = init, jnp.zeros((m,), dtype)
    x0, y0 = jnp.asarray(x0, dtype), jnp.asarray(y0, dtype)
    if x0.shape != (n,) or y0.shape != (m,):
        raise ValueError(
            f"`init` must be a QPSolution of a QP of the same shape or an array of shape ({n},); "
            f"got x of shape {x0.shape} and multipliers of shape {y0.shape} (expected ({m},))."
        )
    return x0, y0, rho0


@eqx.filter_jit
def _solve(Q, c, A, b, G, h, lower, upper, solver, x0, y0, tol, max_steps, adjoint, throw):
    if callable(Q):
        Q = eqx.filter_closure_convert(Q, x0)
    problem = QPProblem(Q, c, A, b, G, h, lower, upper)
    solver = with_tol(solver, tol, QPProblem.default_tol(c.dtype))
    loop_steps = -(-max_steps // solver.check_every)
    sol = iterative_solve(
        problem,
        solver,
        (x0, y0),
        max_steps=loop_steps,
        adjoint=adjoint,
        throw=throw,
        name="qp.solve",
    )
    x, y = sol.value
    p, q = problem.b.shape[0], problem.h.shape[0]
    bounds = y[p + q :]
    return QPSolution(
        value=x,
        result=sol.result,
        stats=sol.stats,
        state=sol.state,
        dual_eq=y[:p],
        dual_ineq=y[p : p + q],
        dual_lower=jnp.maximum(-bounds, 0.0),
        dual_upper=jnp.maximum(bounds, 0.0),
        objective=problem.objective(x),
        duals=y,
    )
