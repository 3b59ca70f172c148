"""Entropic Gromov–Wasserstein (GW) and fused GW, by linearised Sinkhorn (mirror descent) steps.

GW compares two metric-measure spaces that share no coordinates: with `Cx` (`n × n`) and `Cy`
(`m × m`) the intra-space costs and `L` a loss, it minimises over plans `T ∈ Π(a, b)`

    E(T) = Σᵢⱼₖₗ L(Cx_ik, Cy_jl) Tᵢⱼ Tₖₗ + λ ⟨M, T⟩     (+ ε KL(T | a⊗b))

(`λ = fused_penalty`, OTT-JAX's convention; the linear term `M` only when `geom_xy` is given:
fused GW. POT's `alpha` is `1/(1 + λ)`: its objective is `α E` at `ε_POT = α ε`). Each outer
step linearises `E` at the current plan and solves the entropic OT problem with that cost, `T ←
argmin_{T ∈ Π(a, b)} ⟨∇E(T_k), T⟩ + ε KL(T | a⊗b)`: mirror descent with step `1/ε` (Peyré,
Cuturi, Solomon, ICML 2016, Prop. 2 with the factor 2 of the gradient, as in POT). The inner
problems are solved by `js.ot.solve` with `js.ot.Sinkhorn`, warm-started from the previous
outer step's potentials.

Memory: the tensor `L(Cx, Cy)` (`n²m²`) is never formed. For a loss
`L(a, b) = f₁(a) + f₂(b) − h₁(a) h₂(b)` (squared loss: `a², b², a, 2b`; KL loss:
`a log a − a, b, a, log b`), `L ⊗ T = f₁(Cx) T1 1ᵀ + 1 (f₂(Cy) Tᵀ1)ᵀ − h₁(Cx) T h₂(Cy)ᵀ`
(Peyré et al. 2016, Prop. 1). For point clouds with the squared Euclidean cost,
`Cx = s1ᵀ + 1sᵀ − 2XXᵀ` (`s = ‖x‖²`) has rank `d + 2`, so `Cx T` costs `O(n m d)` and
`(Cx ∘ Cx) v` `O(n d²)`: no `n × n` matrix is ever held; other geometries use their cost
matrices (`O(n² + m²)`).

Derivatives: the regularised objective `R(θ) = min_T E_θ(T) + ε KL(T | a⊗b)` is differentiated
by the envelope theorem at the returned (stationary) plan: the plan and the final
linearisation's potentials are held fixed, `∂E/∂θ` gives the derivative in the points, cost
matrices and `fused_penalty`, and the dual of the final linearised OT problem (stationary in
its potentials) the derivative in `a`, `b` and `ε`.
"""

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._adjoint import ImplicitAdjoint, _stop_gradient
from .._iterate import AbstractIterativeSolver
from .._problem import AbstractProblem, default_tol
from .._solution import RESULTS, Solution
from .._solve import iterative_solve
from ._costs import SqEuclidean
from ._geometry import AbstractGeometry, Geometry, PointCloud
from ._problem import OTProblem, bad_weights, verdict
from ._sinkhorn import Sinkhorn
from ._solve import solve as ot_solve

_LOSSES = ("sqeuclidean", "kl")
_TINY = 1e-15  # POT's guard inside the KL loss's logarithms


def _low_rank(geom: AbstractGeometry) -> bool:
    """Whether the cost is `‖x − x'‖²` between points: rank `d + 2`, never materialised."""
    return isinstance(geom, PointCloud) and isinstance(geom.cost_fn, SqEuclidean)


class _Space(eqx.Module):
    """One side's intra-space cost `C` (`k × k`), through the products GW needs."""

    geom: AbstractGeometry

    def _centred(self):
        x = self.geom.x  # pyright: ignore[reportAttributeAccessIssue]
        # C is translation invariant; centring keeps the low-rank expansion accurate in float32.
        x = x - jnp.mean(x, axis=0)
        return x, jnp.sum(x * x, axis=1)

    def dense(self):
        return self.geom.cost_matrix

    def apply(self, V):
        """`C V` for `V` of shape `(k, p)`."""
        if not _low_rank(self.geom):
            return self.dense() @ V
        x, s = self._centred()
        return s[:, None] * jnp.sum(V, axis=0)[None, :] + (s @ V)[None, :] - 2.0 * x @ (x.T @ V)

    def apply_squared(self, v):
        """`(C ∘ C) v` for a vector `v` of length `k`."""
        if not _low_rank(self.geom):
            C = self.dense()
            return (C * C) @ v
        x, s = self._centred()
        # (s_i + s_k − 2 x_i·x_k)² expanded: O(k d²).
        W = (x * v[:, None]).T @ x
        m1 = x.T @ v
        m2 = x.T @ (s * v)
        return (
            s * s * jnp.sum(v)
            + jnp.sum(s * s * v)
            + 4.0 * jnp.sum((x @ W) * x, axis=1)
            + 2.0 * s * jnp.sum(s * v)
            - 4.0 * s * (x @ m1)
            - 4.0 * (x @ m2)
        )


class GWProblem(AbstractProblem):
    """An entropic (fused) Gromov–Wasserstein problem: what `js.ot.GromovWasserstein` receives.

    **Attributes:** `geom_xx` (`n × n` cost of the source space), `geom_yy` (`m × m`, target
    space), `a`, `b` (weights), `geom_xy` (`n × m` linear cost of fused GW, or `None`),
    `fused_penalty` (`λ ≥ 0`: the weight of the linear term, OTT-JAX's convention), `epsilon`,
    `loss` (`"sqeuclidean"` or `"kl"`, static) and `checked` (the verdict of `validate()` on
    the data as given, when `js.ot.solve_gw` replaced invalid values by stand-ins). The
    geometries' own `epsilon`s are not used. Costs are taken as symmetric (distances are).

    The iterate is the plan `T` (`n × m`); `optimality(T)` is the fixed-point residual
    `T − plan(linearised_cost(T))` (one Sinkhorn solve), zero at a stationary plan of
    `E(T) + ε KL(T | a⊗b)`. Error measure `stats["plan_change"]`: `‖T_{k+1} − T_k‖₁`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (5, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    problem = js.ot.GWProblem(js.ot.PointCloud(x, x), js.ot.PointCloud(y, y),
                              jnp.full(5, 0.2), jnp.full(4, 0.25), epsilon=jnp.array(0.1))
    T = jnp.full((5, 4), 0.05)
    # the squared loss, summed over all pairs of pairs (tiny here, so formed directly)
    Cx, Cy = problem.geom_xx.cost_matrix, problem.geom_yy.cost_matrix
    L = (Cx[:, None, :, None] - Cy[None, :, None, :]) ** 2       # L(Cx_ik, Cy_jl), axes ijkl
    E = jnp.sum(L * T[:, :, None, None] * T[None, None, :, :])
    assert jnp.allclose(jax.jit(lambda p, T: p.objective(T))(problem, T), E, rtol=1e-5)
    ```
    """

    geom_xx: AbstractGeometry
    geom_yy: AbstractGeometry
    a: Array
    b: Array
    geom_xy: AbstractGeometry | None = None
    fused_penalty: Array | float = 1.0
    epsilon: Array | float = 0.1
    loss: str = eqx.field(static=True, default="sqeuclidean")
    checked: RESULTS | None = None

    error_name: ClassVar[str] = "plan_change"

    @staticmethod
    def default_tol(dtype) -> float:
        """The default `tol` on `‖T_{k+1} − T_k‖₁` (plans of mass 1): 1e-6 in float64, 1e-4
        in float32 (the inner Sinkhorn solves' own float32 default is 1e-4 on the marginals)."""
        return default_tol(dtype, 1e-6, 1e-4)

    # ---- the loss's decomposition ---------------------------------------------------------
    def _penalty(self):
        return jnp.asarray(self.fused_penalty, self.a.dtype)

    def _constant_terms(self, r, c):
        """`(f₁(Cx) r, f₂(Cy) c)`."""
        if self.loss == "sqeuclidean":
            return _Space(self.geom_xx).apply_squared(r), _Space(self.geom_yy).apply_squared(c)
        Cx, Cy = self.geom_xx.cost_matrix, self.geom_yy.cost_matrix
        return (Cx * jnp.log(Cx + _TINY) - Cx) @ r, Cy @ c

    def _cross(self, T):
        """`h₁(Cx) T h₂(Cy)ᵀ` (the costs symmetric)."""
        if self.loss == "sqeuclidean":
            CyTt = _Space(self.geom_yy).apply(T.T)  # Cy Tᵀ, (m, n)
            return 2.0 * _Space(self.geom_xx).apply(CyTt.T)
        Cx, Cy = self.geom_xx.cost_matrix, self.geom_yy.cost_matrix
        return Cx @ T @ jnp.log(Cy + _TINY).T

    def linear_cost(self):
        """The fused term's `n × m` cost `M` (`None` without `geom_xy`)."""
        return None if self.geom_xy is None else self.geom_xy.cost_matrix

    def linearised_cost(self, T, constants=None):
        """`∇E(T) = 2 L ⊗ T + λ M`, with `T`'s marginals taken as `a`, `b` (POT's `gwggrad`;
        `constants` = `_constant_terms(a, b)` when precomputed)."""
        u, v = self._constant_terms(self.a, self.b) if constants is None else constants
        G = 2.0 * (u[:, None] + v[None, :] - self._cross(T))
        M = self.linear_cost()
        return G if M is None else G + self._penalty() * M

    def objective(self, T):
        """`E(T) = ⟨L ⊗ T, T⟩ + λ ⟨M, T⟩` (no entropy: POT's `gw_dist`; `fgw_dist / α` with
        POT's `α = 1/(1 + λ)`), with `T`'s own marginals in `L ⊗ T`."""
        r, c = jnp.sum(T, axis=1), jnp.sum(T, axis=0)
        u, v = self._constant_terms(r, c)
        E = u @ r + v @ c - jnp.sum(self._cross(T) * T)
        M = self.linear_cost()
        return E if M is None else E + self._penalty() * jnp.sum(M * T)

    def kl(self, T):
        """`KL(T | a⊗b) = Σ T log(T / (a b)) − Σ T + Σa Σb`."""
        ab = self.a[:, None] * self.b[None, :]
        pos = T > 0
        logs = jnp.log(jnp.where(pos, T, 1.0)) - jnp.log(jnp.where(pos, ab, 1.0))
        return jnp.sum(jnp.where(pos, T * logs, 0.0)) - jnp.sum(T) + jnp.sum(ab)

    # ---- the AbstractProblem interface ----------------------------------------------------
    def optimality(self, y):
        sol = ot_solve(Geometry(self.linearised_cost(y), self.epsilon), self.a, self.b, throw=False)
        return y - sol.plan

    def invalid(self):
        """`(bad_values, nonfinite)`: negative/NaN weights, zero or unequal masses, `ε ≤ 0`,
        a negative or non-finite `fused_penalty`; NaN/inf in the geometries."""
        eps, lam = jnp.asarray(self.epsilon), self._penalty()
        bad = bad_weights(self.a, self.b)
        bad = bad | ~(eps > 0) | ~jnp.isfinite(eps) | ~(lam >= 0) | ~jnp.isfinite(lam)
        geoms = [self.geom_xx, self.geom_yy] + ([] if self.geom_xy is None else [self.geom_xy])
        finite = jnp.all(jnp.stack([_finite(g) for g in geoms]))
        return bad, ~finite

    def validate(self) -> RESULTS:
        if self.checked is not None:
            return self.checked
        return verdict(*self.invalid())

    def with_stand_ins(self) -> "GWProblem":
        """This problem with its verdict in `checked` and, if its values are invalid, uniform
        weights, `ε = 1` and `fused_penalty = 1` in their place (the solve then runs on a sane
        problem and the result says `invalid_input`)."""
        checked = self.validate()
        bad = checked == RESULTS.invalid_input
        n, m = self.a.shape[0], self.b.shape[0]
        return eqx.tree_at(
            lambda p: (p.a, p.b, p.epsilon, p.fused_penalty, p.checked),
            self,
            (
                jnp.where(bad, 1.0 / n, self.a),
                jnp.where(bad, 1.0 / m, self.b),
                jnp.where(bad, 1.0, self.epsilon),
                jnp.where(bad, 1.0, self._penalty()),
                checked,
            ),
            is_leaf=lambda x: x is None,
        )


def _finite(geom: AbstractGeometry):
    if isinstance(geom, PointCloud):
        return jnp.all(jnp.isfinite(geom.x)) & jnp.all(jnp.isfinite(geom.y))
    return geom.all_finite()


class _GWState(eqx.Module):
    f: Array  # the last inner solve's potentials (the next one's warm start)
    g: Array
    G: Array  # the last linearised cost, n × m
    constants: tuple[Array, Array]  # f₁(Cx) a, f₂(Cy) b
    change: Array  # ‖T_{k+1} − T_k‖₁ of the last step
    steps: Array
    inner_steps: Array  # Sinkhorn sweeps, all outer steps together
    inner_result: RESULTS  # the last inner solve's result
    inner_failures: Array  # inner solves that did not succeed


class GromovWasserstein(AbstractIterativeSolver[GWProblem, Array, _GWState]):
    """Entropic (fused) Gromov–Wasserstein by linearised Sinkhorn steps, for `js.ot.solve_gw`.

    One step linearises the GW objective at the current plan (`∇E(T)`, POT's convention with
    the factor 2) and solves that entropic OT problem with `js.ot.solve` and `sinkhorn`,
    warm-started from the previous step's potentials (mirror descent with step `1/ε`). Done once
    `‖T_{k+1} − T_k‖₁ ≤ tol`; `stats`: `num_steps` (outer steps), `inner_steps` (Sinkhorn
    sweeps, all together), `inner_failures`, `plan_change`.

    **Arguments:**

    - `epsilon`: the entropic regularisation of every inner problem (a differentiable leaf);
      scale it with the costs (the GW gradient is of order `max(C)²`).
    - `tol`: on the L1 change of the plan between outer steps (`None`: 1e-6 in float64, 1e-4 in
      float32).
    - `max_steps`: the most outer steps.
    - `sinkhorn`: the inner solver (default `js.ot.Sinkhorn(epsilon_scaling=None)`: a warm
      start needs no annealing); its `tol` (`None`: the OT family's default) sets the inner
      accuracy.
    - `warm_start`: start each inner solve from the previous potentials (default `True`).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (15, 2))   # a 2-D cloud
    y = jax.random.normal(jax.random.PRNGKey(1), (15, 3))   # and a 3-D one
    solver = js.ot.GromovWasserstein(epsilon=0.5)
    sol = js.ot.solve_gw(js.ot.PointCloud(x, x), js.ot.PointCloud(y, y), solver=solver)
    assert sol.result == js.RESULTS.successful and sol.stats["plan_change"] <= 1e-4
    assert sol.stats["inner_steps"] >= sol.stats["num_steps"]
    ```
    """

    epsilon: float | Array = 0.1
    tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=500)
    sinkhorn: Sinkhorn = Sinkhorn(epsilon_scaling=None)
    warm_start: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if isinstance(self.epsilon, (int, float)) and not self.epsilon > 0:
            raise ValueError(
                f"GromovWasserstein's `epsilon` must be positive; got {self.epsilon!r}. Pick it "
                "relative to the costs, e.g. 1e-2 × the mean of the intra-space costs squared."
            )
        if isinstance(self.tol, (int, float)) and not self.tol > 0:
            raise ValueError(f"GromovWasserstein's `tol` must be positive; got {self.tol!r}.")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int):
            raise ValueError(f"`max_steps` must be a positive int; got {self.max_steps!r}.")
        if self.max_steps < 1:
            raise ValueError(f"`max_steps` must be a positive int; got {self.max_steps!r}.")
        if not isinstance(self.sinkhorn, Sinkhorn):
            raise TypeError(
                "GromovWasserstein's `sinkhorn` must be a js.ot.Sinkhorn(...); got "
                f"{type(self.sinkhorn).__name__}."
            )

    def _tol(self) -> float | Array:
        if self.tol is None:
            raise ValueError(
                "GromovWasserstein's `tol` is None: js.ot.solve_gw fills in the default; run "
                "through js.iterative_solve, give the solver a `tol`."
            )
        return self.tol

    def init(self, problem: GWProblem, y, options):
        n, m = y.shape
        dtype = y.dtype
        zero = jnp.array(0, jnp.int32)
        return _GWState(
            f=jnp.zeros(n, dtype),
            g=jnp.zeros(m, dtype),
            G=jnp.zeros((n, m), dtype),
            constants=problem._constant_terms(problem.a, problem.b),
            change=jnp.asarray(jnp.inf, dtype),
            steps=zero,
            inner_steps=zero,
            inner_result=RESULTS.successful,  # pyright: ignore[reportArgumentType]
            inner_failures=zero,
        )

    def step(self, problem: GWProblem, y, state: _GWState):
        G = problem.linearised_cost(y, state.constants)
        init = (state.f, state.g) if self.warm_start else None
        sol = ot_solve(
            Geometry(G, problem.epsilon),
            problem.a,
            problem.b,
            solver=self.sinkhorn,
            init=init,
            throw=False,
        )
        T = sol.plan
        failed = (sol.result != RESULTS.successful).astype(jnp.int32)
        new = _GWState(
            f=sol.f,
            g=sol.g,
            G=G,
            constants=state.constants,
            change=jnp.sum(jnp.abs(T - y)),
            steps=state.steps + 1,
            inner_steps=state.inner_steps + sol.stats["num_steps"],
            inner_result=sol.result,
            inner_failures=state.inner_failures + failed,
        )
        return T, new

    def terminate(self, problem: GWProblem, y, state: _GWState):
        started = state.steps > 0
        converged = started & (state.change <= self._tol())
        nonfinite = started & ~jnp.isfinite(state.change)
        done = converged | nonfinite | (state.steps >= self.max_steps)
        inner_ok = state.inner_result == RESULTS.successful
        result = RESULTS.where(
            nonfinite,
            RESULTS.nonfinite,
            RESULTS.where(
                converged,
                RESULTS.where(inner_ok, RESULTS.successful, RESULTS.inner_not_converged),
                RESULTS.max_steps_reached,
            ),
        )
        return done, result

    def error(self, problem, y, state):
        return state.change

    def postprocess(self, problem, y, state):
        stats = {
            "num_steps": state.steps,
            "inner_steps": state.inner_steps,
            "inner_failures": state.inner_failures,
        }
        return y, stats


class GWSolution(Solution):
    """The result of `js.ot.solve_gw`: a `js.Solution` whose `value` is the plan `T` (`n × m`).

    **Attributes:**

    - `plan`: `T` (the same array as `value`; carries no derivative: differentiate `cost` or
      `reg_cost`).
    - `cost`: the GW objective at the plan, `E(T) = Σ L(Cx_ik, Cy_jl) Tᵢⱼ Tₖₗ + λ⟨M, T⟩`,
      without the entropy: POT's `log["gw_dist"]` (fused: `log["fgw_dist"] / alpha`). Its
      derivative holds the plan fixed (points, cost matrices, `fused_penalty`: `∂E/∂θ`;
      weights: the dual potentials of the final linearised problem, as for `reg_cost`; `ε`:
      0).
    - `reg_cost`: the entropic objective `E(T) + ε KL(T | a⊗b)` the solver minimises; its
      derivative (envelope theorem at the stationary plan) is exact, in the points, the cost
      matrices, the weights, `ε` and `fused_penalty`.
    - `f`, `g`: the potentials of the final linearised OT problem.
    - `problem`: the `GWProblem` solved; `result`; `stats` (`num_steps`: outer steps,
      `inner_steps`: Sinkhorn sweeps, `inner_failures`, `plan_change`).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (15, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (15, 3))
    solver = js.ot.GromovWasserstein(epsilon=1.0)
    sol = js.ot.solve_gw(js.ot.PointCloud(x, x), js.ot.PointCloud(y, y), solver=solver)
    assert sol.plan.shape == (15, 15) and jnp.allclose(sol.plan.sum(), 1.0, atol=1e-4)
    assert sol.reg_cost >= sol.cost - 1e-6          # KL(T | a⊗b) >= 0
    ```
    """

    problem: GWProblem = eqx.field(kw_only=True)
    cost: Array = eqx.field(kw_only=True)
    reg_cost: Array = eqx.field(kw_only=True)
    f: Array = eqx.field(kw_only=True)
    g: Array = eqx.field(kw_only=True)

    @property
    def plan(self) -> Array:
        return self.value


def _check_geometry(geom, name):
    if not isinstance(geom, AbstractGeometry):
        raise TypeError(
            f"`{name}` must be a js.ot geometry (js.ot.PointCloud(x, x) or "
            f"js.ot.Geometry(cost_matrix)); got {type(geom).__name__}."
        )
    if jnp.issubdtype(jnp.zeros((), geom.dtype).dtype, jnp.complexfloating):
        raise TypeError(f"`{name}`'s cost must be real; got dtype {geom.dtype}.")


def _check_weights(w, size, name):
    if w is None:
        return None
    w = jnp.asarray(w)
    if jnp.issubdtype(w.dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` must be real; got dtype {w.dtype}.")
    if w.shape != (size,):
        raise ValueError(
            f"`{name}` must have shape ({size},), one weight per point; got {w.shape}."
        )
    return w


def solve_gw(
    geom_xx: AbstractGeometry,
    geom_yy: AbstractGeometry,
    a: Float[ArrayLike, " n"] | None = None,
    b: Float[ArrayLike, " m"] | None = None,
    *,
    geom_xy: AbstractGeometry | None = None,
    fused_penalty: float | Array = 1.0,
    loss: str = "sqeuclidean",
    solver: GromovWasserstein | None = None,
    init: Float[ArrayLike, "n m"] | None = None,
    throw: bool = True,
    progress: bool | Callable = False,
) -> GWSolution:
    """Solve an entropic (fused) Gromov–Wasserstein problem, differentiably.

    Finds a stationary plan of `E(T) + ε KL(T | a⊗b)` over `T ∈ Π(a, b)`, with
    `E(T) = Σᵢⱼₖₗ L(Cx_ik, Cy_jl) Tᵢⱼ Tₖₗ + λ ⟨M, T⟩` (`λ = fused_penalty`, `M` the cost of
    `geom_xy`), by linearised Sinkhorn steps (`js.ot.GromovWasserstein`). The same iteration
    and objective as POT's `ot.gromov.entropic_gromov_wasserstein` at the same `epsilon`, and
    as `entropic_fused_gromov_wasserstein(..., alpha=1/(1 + λ), epsilon=alpha·ε)` (POT's
    fused objective is `alpha` times this one);
    OTT-JAX's `GromovWasserstein` linearises without the gradient's factor 2, so its `epsilon`
    is half of this one. Memory `O(n m)` for point clouds with the squared Euclidean cost
    (never `n² m²`, nor `n × n`), `O(n² + m²)` for other geometries.

    **Arguments:**

    - `geom_xx`, `geom_yy`: the two spaces' intra-space costs (`n × n`, `m × m`):
      `js.ot.PointCloud(x, x)` (any dimension; squared Euclidean: low rank, fast) or
      `js.ot.Geometry(Cx)`. Their `epsilon` is not used. The costs are taken as symmetric.
    - `a`, `b`: nonnegative weights of equal mass (default uniform).
    - `geom_xy`: an `n × m` geometry between the spaces for fused GW (e.g. features), or `None`.
    - `fused_penalty`: `λ ≥ 0`, the weight of the linear term `⟨M, T⟩` against the GW term
      (OTT-JAX's convention; used only with `geom_xy`).
    - `loss`: `"sqeuclidean"` (`(a − b)²`, default) or `"kl"` (`a log(a/b) − a + b`, positive
      costs; dense products).
    - `solver`: `js.ot.GromovWasserstein(epsilon=..., tol=..., max_steps=...)`.
    - `init`: a starting plan (default `a bᵀ`).
    - `throw`: raise on failure; with `False` read `sol.result` (use under `vmap`).
      `invalid_input` for negative weights, unequal masses, `ε ≤ 0` or a negative
      `fused_penalty`; `nonfinite` for NaN/inf in the data; `max_steps_reached`;
      `inner_not_converged` when the last Sinkhorn solve missed its `tol`.
    - `progress`: `True` for a progress bar on stderr, or a callback `fn(step, plan_change)`.

    **Returns:** a `js.ot.GWSolution` (`plan`, `cost`, `reg_cost`, `result`, `stats`).

    **Example:** a cloud and its rotated, shuffled copy in 3-D are matched point to point.

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (15, 2))
    perm = jax.random.permutation(jax.random.PRNGKey(1), 15)
    c, s = jnp.cos(0.7), jnp.sin(0.7)
    y = jnp.concatenate([x[perm] @ jnp.array([[c, -s], [s, c]]), jnp.zeros((15, 1))], axis=1)
    solver = js.ot.GromovWasserstein(epsilon=0.02)
    sol = js.ot.solve_gw(js.ot.PointCloud(x, x), js.ot.PointCloud(y, y), solver=solver)
    assert jnp.all(jnp.argmax(sol.plan, axis=1)[perm] == jnp.arange(15))

    # sol.cost and sol.reg_cost are differentiable (envelope theorem): see js.ot.GWSolution
    ```
    """
    _check_geometry(geom_xx, "geom_xx")
    _check_geometry(geom_yy, "geom_yy")
    n, n2 = geom_xx.shape
    m, m2 = geom_yy.shape
    if n != n2 or m != m2:
        raise ValueError(
            "`geom_xx` and `geom_yy` must be square (each space's cost between its own points: "
            f"js.ot.PointCloud(x, x)); got shapes {geom_xx.shape} and {geom_yy.shape}."
        )
    if n == 0 or m == 0:
        raise ValueError(f"solve_gw needs at least one point on each side; got {n} and {m}.")
    if geom_xy is not None:
        _check_geometry(geom_xy, "geom_xy")
        if geom_xy.shape != (n, m):
            raise ValueError(
                f"`geom_xy` (the fused term's cost between the spaces) must be {n} × {m}, the "
                f"sizes of geom_xx and geom_yy; got {geom_xy.shape}."
            )
    if loss not in _LOSSES:
        raise ValueError(f"`loss` must be one of {_LOSSES}; got {loss!r}.")
    if isinstance(fused_penalty, (int, float)) and not 0 <= fused_penalty < float("inf"):
        raise ValueError(
            "`fused_penalty` must be a finite number >= 0 (the weight of the linear term "
            f"<M, T> against the GW term; POT's alpha is 1/(1 + fused_penalty)); got "
            f"{fused_penalty!r}."
        )
    if jnp.issubdtype(jnp.result_type(fused_penalty), jnp.complexfloating):
        raise TypeError("`fused_penalty` must be real.")
    a = _check_weights(a, n, "a")
    b = _check_weights(b, m, "b")
    gw = GromovWasserstein() if solver is None else solver
    if not isinstance(gw, GromovWasserstein):
        raise TypeError(
            f"`solver` must be a js.ot.GromovWasserstein(epsilon=...); got {type(solver).__name__}."
        )
    if init is not None:
        init = jnp.asarray(init)
        if init.shape != (n, m):
            raise ValueError(f"`init` must be a plan of shape ({n}, {m}); got {init.shape}.")
    fused_penalty = (
        jnp.asarray(fused_penalty) if isinstance(fused_penalty, float) else fused_penalty
    )
    # Python floats become arrays: new values are new data, never a recompilation.
    as_array = lambda v: jnp.asarray(v) if isinstance(v, (int, float)) else v
    gw = eqx.tree_at(
        lambda s: (s.epsilon, s.tol, s.sinkhorn.tol),
        gw,
        (as_array(gw.epsilon), as_array(gw.tol), as_array(gw.sinkhorn.tol)),
        is_leaf=lambda x: x is None,
    )
    return _solve_gw(
        geom_xx, geom_yy, a, b, geom_xy, fused_penalty, loss, gw, init, throw, progress
    )


@eqx.filter_jit
def _solve_gw(geom_xx, geom_yy, a, b, geom_xy, fused_penalty, loss, solver, init, throw, progress):
    geoms = [geom_xx, geom_yy] + ([] if geom_xy is None else [geom_xy])
    dtype = jnp.result_type(*[g.dtype for g in geoms], jnp.float32)
    n, m = geom_xx.shape[0], geom_yy.shape[0]
    a = jnp.full(n, 1.0 / n, dtype) if a is None else a.astype(dtype)
    b = jnp.full(m, 1.0 / m, dtype) if b is None else b.astype(dtype)
    eps = jnp.asarray(solver.epsilon, dtype)
    penalty = jnp.asarray(fused_penalty, dtype)
    problem = GWProblem(geom_xx, geom_yy, a, b, geom_xy, penalty, eps, loss)
    if solver.tol is None:
        solver = eqx.tree_at(
            lambda s: s.tol,
            solver,
            jnp.asarray(GWProblem.default_tol(dtype), dtype),
            is_leaf=lambda x: x is None,
        )
    # The loop sees no derivative: the plan is differentiated by the envelope theorem below.
    fixed = _stop_gradient(problem).with_stand_ins()
    T0 = a[:, None] * b[None, :] if init is None else jnp.asarray(init, dtype)
    sol = iterative_solve(
        fixed,
        _stop_gradient(solver),
        jax.lax.stop_gradient(T0),
        max_steps=solver.max_steps,
        adjoint=ImplicitAdjoint(),
        throw=throw,
        progress=progress,
        name="GromovWasserstein",
    )
    T = jax.lax.stop_gradient(sol.value)
    state = jax.lax.stop_gradient(sol.state)
    # Envelope theorem: E_θ at the fixed plan, plus the dual of the final linearised OT problem
    # (stationary in its potentials) for the weights and ε; its value is added without
    # derivative, so the totals are E(T) and E(T) + ε KL(T | a⊗b).
    ot_problem = OTProblem(
        Geometry(state.G, eps), a, b, jnp.ones((), dtype), jnp.ones((), dtype), eps
    )
    dual = ot_problem.dual(state.f, state.g)
    dual = dual - jax.lax.stop_gradient(dual)
    kl = jax.lax.stop_gradient(fixed.kl(T))
    E = problem.objective(T)
    reg_cost = E + jax.lax.stop_gradient(eps * kl) + dual
    cost = reg_cost - eps * kl
    return GWSolution(
        value=sol.value,
        result=sol.result,
        stats=sol.stats,
        problem=problem,
        cost=cost,
        reg_cost=reg_cost,
        f=state.f,
        g=state.g,
    )
