"""Quadratically regularised and sparsity-constrained optimal transport.

Blondel, Seguy, Rolet, "Smooth and Sparse Optimal Transport" (AISTATS 2018) and Liu, Puigcerver,
Blondel, "Sparsity-Constrained Optimal Transport" (ICLR 2023). The primal problem is

    min_T <T, C> + (γ/2) ‖T‖²   s.t.  T 1 = a,  Tᵀ 1 = b,  T ≥ 0   (and ‖T_:j‖₀ ≤ k),

and its dual is smooth and unconstrained:

    max_{f,g} <f, a> + <g, b> − (1/2γ) Σ_j Σ_{i ∈ top-k_j} max(f_i + g_j − C_ij, 0)²,

with the plan `T_ij = max(f_i + g_j − C_ij, 0) / γ` on the top-k entries of each column (all of
them for quadratic OT): plans are exactly sparse. The dual is solved with `js.minimise` (L-BFGS),
so the potentials are differentiated by the implicit function theorem on its gradient (the
marginal constraints), with respect to the cost matrix (hence the points), `a`, `b` and `γ`.
"""

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from .._adjoint import AbstractAdjoint, ImplicitAdjoint
from .._checks import check_tol, floats_to_arrays
from .._minimise import LBFGS, minimise
from .._solution import RESULTS, Solution


def _as_cost_matrix(geom) -> Array:
    cost: Any = getattr(geom, "cost_matrix", geom)
    if callable(cost) and not eqx.is_array(cost):
        cost = cost()  # pyright: ignore[reportCallIssue]
    if not eqx.is_array(cost) and not hasattr(cost, "shape"):
        cost = jnp.asarray(cost)
    if cost.ndim != 2:
        raise ValueError(
            "solve_smooth expects a geometry (js.ot.Geometry / js.ot.PointCloud) or an n×m cost "
            f"matrix; got an array of shape {cost.shape}."
        )
    if not jnp.issubdtype(cost.dtype, jnp.floating):
        raise TypeError(f"The cost matrix must be floating point; got {cost.dtype}.")
    if 0 in cost.shape:
        raise ValueError(
            f"solve_smooth needs at least one source and one target point; got a cost matrix of "
            f"shape {cost.shape}."
        )
    return jnp.asarray(cost)


def _check_gamma(gamma):
    if isinstance(gamma, (int, float)) and not gamma > 0:
        raise ValueError(
            f"`gamma` (the quadratic regularisation) must be positive; got {gamma!r}. Small values "
            "(e.g. 1e-2 × the mean cost) give sparse plans close to unregularised OT."
        )


class QuadraticOT(eqx.Module):
    """Quadratically regularised OT, `<T, C> + (γ/2)‖T‖²`, solved on its smooth dual.

    Plans `T_ij = max(f_i + g_j − C_ij, 0) / γ` are exactly sparse. Use with `js.ot.solve_smooth`.

    **Arguments:**

    - `gamma`: the regularisation `γ > 0` (a pytree leaf: differentiable).
    - `tol`: absolute tolerance on the Euclidean norm of the dual gradient, i.e. of the marginal
      violations `(a − T1, b − Tᵀ1)`; `None` (default) means 1e-8 in float64 and 1e-5 in
      float32 (what that precision can reach).
    - `max_steps`: the most L-BFGS steps.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    C = jnp.array([[0.0, 1.0, 4.0], [1.0, 0.0, 1.0], [4.0, 1.0, 0.0]])
    sol = js.ot.solve_smooth(C, solver=js.ot.QuadraticOT(gamma=0.1, tol=1e-10))
    assert jnp.allclose(sol.plan.sum(1), 1 / 3, atol=1e-8)
    assert jnp.allclose(sol.plan, jnp.eye(3) / 3, atol=1e-8)   # small γ: the identity coupling
    ```
    """

    gamma: float | Array = 1.0
    tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=2000)

    def __check_init__(self):
        _check_gamma(self.gamma)
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ValueError(f"`max_steps` must be a positive int; got {self.max_steps!r}.")
        check_tol(self.tol)

    def _k(self, n: int) -> int:
        return n


class SparsityConstrainedOT(QuadraticOT):
    """Sparsity-constrained OT: quadratic regularisation and at most `k` nonzeros per column.

    The dual keeps, in each column `j`, only the `k` largest `f_i + g_j − C_ij` before the
    `max(·, 0)²` term (Liu, Puigcerver, Blondel, ICLR 2023), so the plan has at most `k`
    nonzeros per column: `k = 1` is close to an assignment, `k ≥ n` is `QuadraticOT`.
    Use with `js.ot.solve_smooth`.

    **Arguments:**

    - `gamma`: the regularisation `γ > 0` (a pytree leaf).
    - `k`: the most nonzeros per column, a positive Python int (values above `n` act as `n`).
    - `tol`, `max_steps`: as in `QuadraticOT`. This dual is convex but not differentiable where
      two entries of a column tie for the k-th place, so its gradient (the marginal violation)
      need not reach `tol`: the solve also ends, successfully, when L-BFGS makes no more progress
      or after `max_steps`; `sol.stats["marginal_error"]` says how far the plan's marginals are.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (30, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (20, 2))
    C = jnp.sum((x[:, None] - y[None]) ** 2, -1)
    sol = js.ot.solve_smooth(C, solver=js.ot.SparsityConstrainedOT(gamma=1.0, k=2))
    assert int(jnp.max(jnp.sum(sol.plan > 0, axis=0))) <= 2
    assert jnp.allclose(sol.plan.sum(0), 1 / 20, atol=1e-3)
    ```
    """

    k: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int):
            raise TypeError(f"`k` (nonzeros per column) must be a Python int; got {self.k!r}.")
        if self.k <= 0:
            raise ValueError(
                f"`k` (the most nonzeros per column of the plan) must be >= 1; got {self.k}."
            )

    def _k(self, n: int) -> int:
        return min(self.k, n)


class SmoothOTOutput(Solution):
    """The solution of `js.ot.solve_smooth`: a `js.Solution` whose `value` is `(f, g)`.

    **Attributes:** `f`, `g` (dual potentials), `plan` (the n×m sparse plan, materialised),
    `transport_cost` (`<T, C>`), `reg_cost` (`<T, C> + (γ/2)‖T‖²`), `dual_cost` (the dual
    objective), `result`, `stats` (`num_steps`, `error`, `marginal_error`: L1 marginal error),
    `state` (L-BFGS's final state).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    C = jnp.array([[0.0, 2.0], [2.0, 0.0]])
    out = js.ot.solve_smooth(C, solver=js.ot.QuadraticOT(gamma=0.1, tol=1e-10))
    assert isinstance(out, js.ot.SmoothOTOutput)
    assert abs(out.reg_cost - out.dual_cost) < 1e-8        # strong duality
    assert abs(out.transport_cost) < 1e-8                   # the diagonal plan costs nothing
    assert isinstance(out, js.Solution)
    ```
    """

    cost_matrix: Float[Array, "n m"] = eqx.field(kw_only=True)
    a: Float[Array, " n"] = eqx.field(kw_only=True)
    b: Float[Array, " m"] = eqx.field(kw_only=True)
    gamma: float | Array = eqx.field(kw_only=True)
    k: int = eqx.field(static=True, kw_only=True)

    @property
    def f(self) -> Float[Array, " n"]:
        return self.value[0]

    @property
    def g(self) -> Float[Array, " m"]:
        return self.value[1]

    @property
    def plan(self) -> Array:
        return _plan(self.f, self.g, self.cost_matrix, self.gamma, self.k)

    @property
    def transport_cost(self) -> Array:
        return jnp.sum(self.plan * self.cost_matrix)

    @property
    def reg_cost(self) -> Array:
        plan = self.plan
        return jnp.sum(plan * self.cost_matrix) + 0.5 * self.gamma * jnp.sum(plan**2)

    @property
    def dual_cost(self) -> Array:
        return -_neg_dual_nopen(
            self.f, self.g, self.cost_matrix, self.gamma, self.k, self.a, self.b
        )


def _column_topk(x: Array, k: int):
    """Top-k of each column of x: values (m, k) and row indices (m, k)."""
    return jax.lax.top_k(x.T, k)


def _plan(f, g, cost, gamma, k):
    x = f[:, None] + g[None, :] - cost
    n, m = cost.shape
    if k >= n:
        return jnp.maximum(x, 0) / gamma
    vals, idx = _column_topk(x, k)
    cols = jnp.broadcast_to(jnp.arange(m)[:, None], idx.shape)
    return jnp.zeros_like(x).at[idx, cols].set(jnp.maximum(vals, 0) / gamma)


def _neg_dual_nopen(f, g, cost, gamma, k, a, b):
    x = f[:, None] + g[None, :] - cost
    if k < cost.shape[0]:
        x, _ = _column_topk(x, k)
    return -jnp.dot(f, a) - jnp.dot(g, b) + 0.5 * jnp.sum(jnp.maximum(x, 0) ** 2) / gamma


def _neg_dual(y, args, *, k):
    f, g = y
    cost, a, b, gamma = args
    # The dual is invariant under (f + c, g − c); this penalty (zero at the chosen optimum) picks
    # the optimum with Σf = Σg, so the Hessian used by the implicit derivative has no global
    # null direction. Plans and costs do not depend on it.
    rho = 1.0 / (gamma * (f.shape[0] + g.shape[0]))
    pen = 0.5 * rho * (jnp.sum(f) - jnp.sum(g)) ** 2
    return _neg_dual_nopen(f, g, cost, gamma, k, a, b) + pen


def solve_smooth(
    geom,
    a: Array | None = None,
    b: Array | None = None,
    *,
    solver: QuadraticOT | None = None,
    adjoint: AbstractAdjoint | None = None,
    throw: bool = True,
) -> SmoothOTOutput:
    """Solve quadratically regularised or sparsity-constrained OT on its smooth dual.

    **Arguments:**

    - `geom`: a geometry with a `cost_matrix` (`js.ot.Geometry`, `js.ot.PointCloud`; its
      epsilon is not used) or an n×m cost matrix.
    - `a`, `b`: nonnegative weights of equal mass (default uniform).
    - `solver`: `js.ot.QuadraticOT(gamma)` (default `gamma=1`) or
      `js.ot.SparsityConstrainedOT(gamma, k)`.
    - `adjoint`: how the potentials are differentiated; default implicit with matrix-free CG on
      the dual Hessian (`js.ImplicitAdjoint(lx.CG(rtol=tol, atol=tol))`, tol 1e-10 in float64,
      1e-5 in float32).
    - `throw`: raise if the solve fails; pass `False` under `vmap` and read `sol.result`.

    **Returns:** a `SmoothOTOutput` (`f`, `g`, `plan`, `transport_cost`, `reg_cost`, `result`,
    `stats`). Derivatives of all of them flow to the cost matrix (and the points it was built
    from), `a`, `b` and `gamma`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (8, 2)); y = x + 1.0
    def cost(x):
        C = jnp.sum((x[:, None] - y[None]) ** 2, -1)
        return js.ot.solve_smooth(C, solver=js.ot.QuadraticOT(gamma=0.05)).transport_cost
    assert abs(cost(x) - 2.0) < 1e-4          # a translation: each point moves by (1, 1)
    g = jax.grad(cost)(x)                      # ∂/∂x of Σ T_ij ‖x_i − y_j‖²
    assert jnp.allclose(g, 2 * (x - y) / 8, atol=1e-5)
    ```
    """
    solver = QuadraticOT() if solver is None else solver
    if not isinstance(solver, QuadraticOT):
        raise TypeError(
            "solve_smooth's `solver` must be js.ot.QuadraticOT(gamma) or "
            f"js.ot.SparsityConstrainedOT(gamma, k); got {type(solver).__name__}."
        )
    cost = _as_cost_matrix(geom)
    n, m = cost.shape
    dtype = cost.dtype
    a = jnp.full((n,), 1.0 / n, dtype) if a is None else jnp.asarray(a, dtype)
    b = jnp.full((m,), 1.0 / m, dtype) if b is None else jnp.asarray(b, dtype)
    if a.shape != (n,) or b.shape != (m,):
        raise ValueError(
            f"Weights must match the cost matrix {cost.shape}: expected a of shape ({n},) and b of "
            f"shape ({m},); got {a.shape} and {b.shape}."
        )
    if adjoint is None:
        # CG to a tolerance the dtype can reach: past it, round-off breaks CG down.
        cg_tol = 1e-10 if cost.dtype == jnp.float64 else 1e-5
        adjoint = ImplicitAdjoint(lx.CG(rtol=cg_tol, atol=cg_tol))
    # Python floats in the solver (gamma, tol) become arrays: new values never recompile.
    return _solve_smooth(floats_to_arrays(solver), cost, a, b, adjoint, throw)


@eqx.filter_jit
def _solve_smooth(solver, cost, a, b, adjoint, throw):
    n, m = cost.shape
    k = solver._k(n)
    gamma = jnp.asarray(solver.gamma, cost.dtype)
    bad = (
        ~(gamma > 0)
        | jnp.any(~(a >= 0))
        | jnp.any(~(b >= 0))
        | (jnp.abs(a.sum() - b.sum()) > 1e-6 * jnp.maximum(a.sum(), 1e-30))
        | ~jnp.all(jnp.isfinite(cost))
    )
    # A safe γ for the solve when the inputs are invalid (the result says so).
    gamma_s = jnp.where(gamma > 0, gamma, 1.0)
    y0 = (jnp.zeros(n, cost.dtype), jnp.zeros(m, cost.dtype))
    sol = minimise(
        functools.partial(_neg_dual, k=k),
        y0,
        (cost, a, b, gamma_s),
        solver=LBFGS(memory_size=20),
        tol=(1e-8 if cost.dtype == jnp.float64 else 1e-5) if solver.tol is None else solver.tol,
        max_steps=solver.max_steps,
        adjoint=adjoint,
        throw=False,
    )
    f, g = sol.value
    result = sol.result
    if k < n:
        # The sparsity-constrained dual is convex but not differentiable where two entries of a
        # column tie for the k-th place, so its gradient need not vanish at the optimum: stopping
        # because the line search makes no more progress, or at max_steps, is the normal end.
        ended = (result == RESULTS.max_steps_reached) | (result == RESULTS.line_search_failed)
        result = RESULTS.where(ended, RESULTS.successful, result)
    result = RESULTS.where(bad, RESULTS.invalid_input, result)
    plan = _plan(f, g, cost, gamma_s, k)
    stats = dict(sol.stats)
    stats["marginal_error"] = jax.lax.stop_gradient(
        jnp.sum(jnp.abs(plan.sum(1) - a)) + jnp.sum(jnp.abs(plan.sum(0) - b))
    )
    value = (f, g)
    if throw:
        value = result.error_if(value, result != RESULTS.successful)
    return SmoothOTOutput(
        value=value,
        result=result,
        stats=stats,
        state=sol.state,
        cost_matrix=cost,
        a=a,
        b=b,
        gamma=gamma_s,
        k=k,
    )
