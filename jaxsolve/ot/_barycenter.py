"""Fixed-support entropic Wasserstein barycenters by iterative Bregman projections.

`min_p Σₖ λₖ OT_ε(bₖ, p)` over measures `p` on a fixed support, for `k` measures `bₖ` on a
(shared) support: Benamou, Carlier, Cuturi, Nenna, Peyré (SIAM J. Sci. Comput. 2015). With
`Kᵢⱼ = exp(−Cᵢⱼ/ε)` (measures on the rows, the barycenter on the columns), one projection is
`uₖ = bₖ / (K vₖ)`, `p = Πₖ (Kᵀuₖ)^λₖ`, `vₖ = p / (Kᵀuₖ)`, done here in the log domain
(`y = log v`), so small ε neither under- nor overflows, in float32 too.

The iterate `y` is defined up to shifts `yₖ + cₖ` with `Σ λₖ cₖ = 0` (they leave `p`
unchanged); each projection is followed by the shift that gives every `yₖ` the same mean, so the
fixed point is unique and the implicit function theorem applies: `js.ImplicitAdjoint`
differentiates `y − T(y)` at the solution, through the one `js.iterative_solve` loop.
"""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._adjoint import AbstractAdjoint, ImplicitAdjoint
from .._iterate import AbstractIterativeSolver, converged_by
from .._problem import AbstractProblem, default_tol, krylov_adjoint
from .._solution import RESULTS, Solution
from .._solve import iterative_solve, with_tol
from ._geometry import AbstractGeometry, Geometry


def _safe_log(w):
    return jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)


class BarycenterProblem(AbstractProblem):
    """The fixed-support barycenter of `measures` (`(k, n)`, on the rows of `geom`, `n × m`)
    with `weights` (`(k,)`, summing to one), on the `m` columns' support. The iterate `y` is
    `(k, m)`: the log scalings of the barycenter side. Error measure
    `stats["marginal_error"]`: `Σₖ λₖ ‖Pₖᵀ1 − p‖₁` (the rows are exact after a projection).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    t = jnp.linspace(0, 1, 5)
    geom = js.ot.Geometry((t[:, None] - t[None, :]) ** 2, epsilon=0.1)
    b = jnp.full((2, 5), 0.2)
    problem = js.ot.BarycenterProblem(geom, b, jnp.array([0.5, 0.5]))
    assert problem.optimality(jnp.zeros((2, 5))).shape == (2, 5)
    ```
    """

    geom: AbstractGeometry
    measures: Array
    weights: Array
    error_name: ClassVar[str] = "marginal_error"

    def _sweep(self, y):
        """`(h, log p)`: `h = log Kᵀuₖ` after the row projection, `log p = Σ λₖ hₖ`."""
        eps = self.geom.epsilon
        f = _safe_log(self.measures) - jax.vmap(lambda yk: self.geom.lse(yk, eps, 1))(y)
        h = jax.vmap(lambda fk: self.geom.lse(fk, eps, 0))(f)
        return h, self.weights @ h

    def project(self, y):
        """One Bregman projection and the gauge shift: `(T(y), marginal error at y)`."""
        h, logp = self._sweep(y)
        p = jnp.exp(logp)
        error = self.weights @ jnp.sum(jnp.abs(jnp.exp(y + h) - p[None, :]), axis=1)
        y = logp[None, :] - h
        mean = jnp.mean(y, axis=1)
        return y - (mean - self.weights @ mean)[:, None], error

    def optimality(self, y):
        return y - self.project(y)[0]

    def barycenter(self, y):
        return jnp.exp(self._sweep(y)[1])

    def adjoint_solver(self, y):
        return krylov_adjoint(y, symmetric=False)

    def validate(self):
        b, w = self.measures, self.weights
        mass = jnp.sum(b, axis=1)
        valid = (
            jnp.all(b >= 0)
            & jnp.all(w >= 0)
            & jnp.all(jnp.abs(mass - mass[0]) <= 1e-4 * mass[0])
            & (mass[0] > 0)
            & (jnp.abs(jnp.sum(w) - 1) <= 1e-4)
            & (self.geom.epsilon > 0)
        )
        finite = jnp.all(jnp.isfinite(b)) & jnp.all(jnp.isfinite(w)) & self.geom.all_finite()
        result = RESULTS.where(valid, RESULTS.successful, RESULTS.invalid_input)
        return RESULTS.where(finite, result, RESULTS.nonfinite)

    @staticmethod
    def default_tol(dtype) -> float:
        return default_tol(dtype, 1e-6, 1e-4)


class _IBPState(eqx.Module):
    error: Array


class IterativeBregman(AbstractIterativeSolver[BarycenterProblem, Array, _IBPState]):
    """Iterative Bregman projections (log domain) for `js.ot.barycenter`.

    One step is one projection of every measure's plan (two log-sum-exp passes per measure).
    Done once the marginal error `Σₖ λₖ ‖Pₖᵀ1 − p‖₁` of the iterate before the last projection
    is at most `tol` (the returned iterate is one projection further).

    **Arguments:** `tol`: on the marginal error (`None`: 1e-6 in float64, 1e-4 in float32).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    t = jnp.linspace(0, 1, 20)
    geom = js.ot.Geometry((t[:, None] - t[None, :]) ** 2, epsilon=0.01)
    b = jnp.stack([jnp.exp(-((t - 0.25) ** 2) / 0.005), jnp.exp(-((t - 0.75) ** 2) / 0.005)])
    sol = js.ot.barycenter(geom, b / b.sum(1, keepdims=True), solver=js.ot.IterativeBregman(1e-5))
    assert sol.stats["marginal_error"] <= 1e-5
    ```
    """

    tol: float | Array | None = None

    def init(self, problem, y, options):
        return _IBPState(problem.project(y)[1])

    def step(self, problem, y, state):
        y, error = problem.project(y)
        return y, _IBPState(error)

    def error(self, problem, y, state):
        return state.error

    def terminate(self, problem, y, state):
        return converged_by(state.error, self.tol)


class BarycenterSolution(Solution):
    """The result of `js.ot.barycenter`: a `js.Solution` whose `value` is the `(k, m)` log
    scaling `y` of the fixed point, with `barycenter` (the `m` weights `p`, differentiable)
    and `problem`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    t = jnp.linspace(0, 1, 8)
    C = (t[:, None] - t[None, :]) ** 2
    sol = js.ot.barycenter(C, jnp.full((3, 8), 1 / 8), epsilon=0.1)
    assert jnp.allclose(sol.barycenter.sum(), 1.0, atol=1e-4)
    ```
    """

    barycenter: Array = None  # pyright: ignore[reportAssignmentType]
    problem: BarycenterProblem | None = None


def barycenter(
    geom: AbstractGeometry | Float[ArrayLike, "n m"],
    measures: Float[ArrayLike, "k n"],
    weights: Float[ArrayLike, " k"] | None = None,
    *,
    epsilon: float | None = None,
    solver: IterativeBregman | None = None,
    max_steps: int = 5000,
    init: Array | None = None,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    throw: bool = True,
) -> BarycenterSolution:
    """The entropic Wasserstein barycenter of `k` measures on a fixed support.

    `p = argmin_p Σₖ λₖ OT_ε(bₖ, p)` with the entropic OT cost of `js.ot.solve`, by iterative
    Bregman projections (`js.ot.IterativeBregman`), differentiable (implicitly) with respect
    to the measures, the weights and the geometry (points, cost, ε). POT's
    `ot.bregman.barycenter(A, M, reg, weights)` computes the same `p` (with `A = measures.T`).

    **Arguments:**

    - `geom`: a geometry whose rows carry the measures and whose columns are the barycenter's
      support (e.g. `js.ot.PointCloud(x, x, epsilon)` for a shared support; blockwise
      `batch_size` works), or an `n × m` cost matrix with `epsilon`.
    - `measures`: `(k, n)` nonnegative weights of equal mass.
    - `weights`: `(k,)` nonnegative, summing to one (default uniform).
    - `epsilon`: the regularisation when `geom` is a cost matrix (default 0.05).
    - `solver`: `js.ot.IterativeBregman(tol)`; `max_steps`: the most projections.
    - `init`: a `(k, m)` warm start (`sol.value` of a previous solve).
    - `adjoint`, `throw`: as in `js.ot.solve` (`invalid_input` for negative or unequal masses,
      weights not summing to one or ε ≤ 0; `nonfinite` for NaN/inf data).

    **Returns:** a `js.ot.BarycenterSolution` (`barycenter`, `result`, `stats`).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    t = jnp.linspace(0, 1, 30)
    C = (t[:, None] - t[None, :]) ** 2
    bump = lambda c: jnp.exp(-((t - c) ** 2) / 0.002)
    b = jnp.stack([bump(0.2), bump(0.8)])
    b = b / b.sum(1, keepdims=True)
    p = js.ot.barycenter(C, b, epsilon=0.002).barycenter
    assert abs(jnp.sum(p * t) - 0.5) < 1e-3          # the mean is halfway

    # moving the second bump's weight moves the barycenter's mean
    mean = lambda w: jnp.sum(js.ot.barycenter(C, b, jnp.stack([1 - w, w]), epsilon=0.002)
                             .barycenter * t)
    assert jnp.allclose(jax.grad(mean)(0.5), 0.6, atol=1e-2)
    ```
    """
    if not isinstance(geom, AbstractGeometry):
        geom = Geometry(jnp.asarray(geom), 0.05 if epsilon is None else epsilon)
    elif epsilon is not None:
        raise ValueError(
            "`epsilon` is for a cost matrix; a geometry carries its own. Build the geometry "
            "with the epsilon you want, e.g. js.ot.PointCloud(x, y, epsilon=...)."
        )
    measures = jnp.asarray(measures)
    if jnp.issubdtype(measures.dtype, jnp.complexfloating):
        raise TypeError(f"`measures` must be real; got dtype {measures.dtype}.")
    n, m = geom.shape
    if measures.ndim != 2 or measures.shape[1] != n or measures.shape[0] == 0:
        raise ValueError(
            f"`measures` must have shape (k, {n}) with k ≥ 1 (one row per measure, on the "
            f"geometry's {n} rows); got {measures.shape}."
        )
    k = measures.shape[0]
    dtype = jnp.result_type(geom.dtype, measures.dtype, jnp.float32)
    measures = measures.astype(dtype)
    weights = jnp.full((k,), 1.0 / k, dtype) if weights is None else jnp.asarray(weights, dtype)
    if weights.shape != (k,):
        raise ValueError(f"`weights` must have shape ({k},); got {weights.shape}.")
    solver = IterativeBregman() if solver is None else solver
    if not isinstance(solver, IterativeBregman):
        raise TypeError(
            f"barycenter's `solver` must be a js.ot.IterativeBregman; got {type(solver).__name__}."
        )
    y0 = jnp.zeros((k, m), dtype) if init is None else jnp.asarray(init, dtype)
    if y0.shape != (k, m):
        raise ValueError(f"`init` must have shape ({k}, {m}); got {y0.shape}.")
    solver = with_tol(solver, None, BarycenterProblem.default_tol(dtype))
    return _barycenter(geom, measures, weights, solver, y0, max_steps, adjoint, throw)


@eqx.filter_jit
def _barycenter(geom, measures, weights, solver, y0, max_steps, adjoint, throw):
    # One compiled program per shape and configuration (eagerly, the setup and the plan's
    # read-out would compile op by op); the tolerance is an array, so new values are data.
    problem = BarycenterProblem(geom, measures, weights)
    sol = iterative_solve(
        problem, solver, y0, max_steps=max_steps, adjoint=adjoint, throw=throw, name="barycenter"
    )
    return BarycenterSolution(
        value=sol.value,
        result=sol.result,
        stats=sol.stats,
        state=sol.state,
        barycenter=problem.barycenter(sol.value),
        problem=problem,
    )
