"""Low-rank Sinkhorn: optimal transport with a plan of rank at most `r` (Scetbon, Cuturi,
Peyré, "Low-Rank Sinkhorn Factorization", ICML 2021).

The plan is `P = Q diag(1/g) Rᵀ` with `Q ∈ R₊^{n×r}`, `R ∈ R₊^{m×r}`, `g ∈ R₊^r` and the
constraints `Q1 = a`, `R1 = b`, `Qᵀ1 = Rᵀ1 = g`, `g ≥ α`. The solver minimises

    ⟨C, Q diag(1/g) Rᵀ⟩ − ε (H(Q) + H(R) + H(g))

by mirror descent on `(Q, R, g)`: a step multiplies each factor by `exp(−γ ∇)` (in the log
domain) and Dykstra's algorithm projects the result back onto the constraints (KL
projections; Algorithm 2 of the paper, with its `g ≥ α` step). The step `γ` is rescaled every
step by the largest squared gradient entry (Scetbon & Cuturi 2022; OTT-JAX's
`gamma_rescale=True`), so it does not depend on the scale of the cost.

Every step touches the cost only through `C R` and `Cᵀ Q`. For a point cloud with the
squared Euclidean cost these use the factorisation `C = ‖x‖²1ᵀ + 1‖y‖²ᵀ − 2 X Yᵀ` (rank
`d + 2`), so time and memory per step are `O((n + m) · r · d)`: the `n × m` cost is never
formed. Other point-cloud costs go block by block (`batch_size`) or densely; a `Geometry`
uses its matrix.

The problem is not convex: the solution is a stationary point reached from the initial
factors (deterministic quasi-random ones by default; with a `key`, the random ones of
OTT-JAX's `RandomInitializer`: the same key gives the same factors). Derivatives come from
the envelope theorem: at a stationary point the derivative of the objective with respect
to the cost is the plan, so `sol.cost` is
differentiated as `⟨C, P⟩` with the factors held fixed (the loop is never differentiated).
"""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._adjoint import AbstractAdjoint, ImplicitAdjoint, _stop_gradient
from .._checks import floats_to_arrays
from .._iterate import AbstractIterativeSolver, LoopKind
from .._problem import AbstractProblem, default_tol
from .._solution import RESULTS, Solution
from .._solve import iterative_solve
from ._costs import SqEuclidean
from ._geometry import AbstractGeometry, PointCloud
from ._problem import bad_weights, verdict


def _safe_log(x):
    return jnp.where(x > 0, jnp.log(jnp.where(x > 0, x, 1.0)), -jnp.inf)


def _entropy(x):
    """The generalised entropy `−Σ x (log x − 1)` (OTT-JAX's `gen_ent`), 0 where `x = 0`."""
    return -jnp.sum(jnp.where(x > 0, x * (jnp.log(jnp.where(x > 0, x, 1.0)) - 1.0), 0.0))


def apply_cost(geom: AbstractGeometry, M: Array, axis: int) -> Array:
    """`C M` (`axis=1`, `M` of shape `(m, k)`) or `Cᵀ M` (`axis=0`, `M` of shape `(n, k)`).

    Squared Euclidean point clouds use `C = ‖x‖²1ᵀ + 1‖y‖²ᵀ − 2 X Yᵀ` (after centring both
    clouds on the mean of `x`, which leaves `C` unchanged and keeps float32 accurate):
    `O((n + m) k d)`, never `n × m`. Other blockwise point clouds go block by block; the rest
    use the cost matrix."""
    if isinstance(geom, PointCloud) and isinstance(geom.cost_fn, SqEuclidean):
        mu = jnp.mean(geom.x, axis=0)
        x, y = geom.x - mu, geom.y - mu
        xx, yy = jnp.sum(x * x, axis=1), jnp.sum(y * y, axis=1)
        if axis == 1:
            return (
                xx[:, None] * jnp.sum(M, axis=0)[None, :]
                + (yy @ M)[None, :]
                - 2.0 * (x @ (y.T @ M))
            )
        return yy[:, None] * jnp.sum(M, axis=0)[None, :] + (xx @ M)[None, :] - 2.0 * (y @ (x.T @ M))
    if isinstance(geom, PointCloud) and geom.batch_size is not None:
        n, m = geom.shape
        if axis == 1:
            return geom._map(lambda C, _: C @ M, 1, jnp.zeros(n, M.dtype))
        return geom._map(lambda C, _: C.T @ M, 0, jnp.zeros(m, M.dtype))
    C = geom.cost_matrix
    return C @ M if axis == 1 else C.T @ M


def _factored(geom: AbstractGeometry) -> bool:
    return isinstance(geom, PointCloud) and (
        isinstance(geom.cost_fn, SqEuclidean) or geom.batch_size is not None
    )


class LowRankOTProblem(AbstractProblem):
    """A balanced OT problem whose plan is sought with rank at most `r`: what
    `js.ot.LowRankSinkhorn` receives (`js.ot.solve` builds it).

    **Attributes:** `geom`, `a`, `b` (weights of equal mass) and `checked` (the verdict of
    `validate()` on the data as given, when invalid values were replaced by uniform weights
    so that the solve runs on something sane).

    The iterate is `(Q, R, g)`; the error measure `stats["factor_change"]` is the change of
    the factors in the last step, `Σ_{X ∈ (Q, R, g)} KL(X | X') + KL(X' | X)` (OTT-JAX's
    convergence measure, without its every-10-steps schedule).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (6, 2))
    geom = js.ot.PointCloud(x, x + 1.0)
    problem = js.ot.LowRankOTProblem(geom, jnp.full(6, 1 / 6), jnp.full(6, 1 / 6))
    R = jnp.ones((6, 3))
    assert jnp.allclose(problem.apply_cost(R, 1), geom.cost_matrix @ R, atol=1e-5)
    ```
    """

    geom: AbstractGeometry
    a: Array
    b: Array
    checked: RESULTS | None = None

    error_name: ClassVar[str] = "factor_change"

    @staticmethod
    def default_tol(dtype) -> float:
        """Default `tol` on the factor change: 1e-7 in float64, 1e-6 in float32."""
        return default_tol(dtype, 1e-7, 1e-6)

    def apply_cost(self, M, axis):
        """`C M` (`axis=1`) or `Cᵀ M` (`axis=0`), never forming `C` for point clouds with
        the squared Euclidean cost (see `jaxsolve/ot/_low_rank.py`)."""
        return apply_cost(self.geom, M, axis)

    def transport_cost(self, q, r, g):
        """`⟨C, Q diag(1/g) Rᵀ⟩` in `O((n + m) r d)` for point clouds."""
        return jnp.sum(self.apply_cost(r, 1) * q / g[None, :])

    def optimality(self, y):
        raise NotImplementedError(
            "Low-rank OT has no implicit derivative here: js.ot.solve differentiates its "
            "costs by the envelope theorem."
        )

    def invalid(self, solver: "LowRankSinkhorn"):
        """`(bad_values, nonfinite)`: negative/NaN weights, zero or unequal masses, `γ ≤ 0`,
        `ε < 0`; NaN/inf in the points or cost."""
        bad = bad_weights(self.a, self.b)
        bad = bad | ~(solver.gamma > 0) | ~jnp.isfinite(solver.gamma)
        bad = bad | ~(solver.epsilon >= 0) | ~jnp.isfinite(solver.epsilon)
        if isinstance(self.geom, PointCloud) and _factored(self.geom):
            finite = jnp.all(jnp.isfinite(self.geom.x)) & jnp.all(jnp.isfinite(self.geom.y))
        else:
            finite = self.geom.all_finite()
        return bad, ~finite

    def validate(self) -> RESULTS:
        """The verdict recorded by `js.ot.solve` (`invalid_input`, `nonfinite` or
        `successful`); `successful` when none was recorded."""
        return RESULTS.successful if self.checked is None else self.checked  # pyright: ignore


class _LRState(eqx.Module):
    change: Array  # factor change of the last accepted step
    marginal_error: Array  # of the last projection of an accepted step
    inner_steps: Array
    cost_r: Array  # C R at the current factors (reused by the next step's gradient)
    objective: Array  # at the current factors (+inf before the first step)
    step_scale: Array  # halved on every rejected step, doubled (up to 1) on an accepted one
    rejected: Array


class LowRankSinkhorn(AbstractIterativeSolver[LowRankOTProblem, tuple, _LRState]):
    """Low-rank Sinkhorn (Scetbon, Cuturi, Peyré 2021): the OT plan restricted to rank `r`,
    `P = Q diag(1/g) Rᵀ`, by mirror descent on `(Q, R, g)` with Dykstra projections. Pass it
    to `js.ot.solve`; memory and time per step are `O((n + m) r)` (times `d`) for point
    clouds with the squared Euclidean cost, which never form `n × m`.

    **Arguments:**

    - `rank`: the rank `r`, `1 ≤ r ≤ min(n, m)` (a Python int).
    - `gamma`: the mirror-descent step (default 100; OTT-JAX's default 10 descends much
      more slowly: at 10 000 points in benchmarks/RESULTS-lowrank.md it ends at 3× the cost
      of γ = 100 after 300 steps), divided every step by the largest squared entry of the
      gradients (`gamma_rescale`, default `True`, as OTT-JAX's). A step that raises the
      objective (beyond the projections' accuracy) is rejected and the step halved (doubled
      again, up to `gamma`, after an accepted one).
    - `epsilon`: an entropic term `−ε (H(Q) + H(R) + H(g))` on top (default 0: plain low-rank
      OT, as in the paper and OTT-JAX). The geometry's own `epsilon` is not used.
    - `tol`: on the factor change of an accepted step (`None`: 1e-7 in float64, 1e-6 in
      float32). The solve also ends, successfully, after ten net rejected steps (no step
      lowers the objective beyond the projections' accuracy: a stationary point).
    - `max_steps`: the most mirror-descent steps (default 2000).
    - `inner_tol`: Dykstra stops once `‖Q1 − a‖₁ + ‖R1 − b‖₁ ≤ inner_tol` (`Qᵀ1 = Rᵀ1 = g`
      hold exactly); `None`: 1e-4 (OTT-JAX's Dykstra stops at 1e-3). `inner_max_steps`: its
      cap (default 2000). Large steps `gamma` make the projections slower to converge.
    - `min_weight`: the lower bound `α` on `g` (default 1e-6 × total mass, OTT-JAX's).
    - `key`: `None` (default): deterministic initial factors (rows proportional to `a`, `b`
      times distinct quasi-random column profiles; reproducible, and cheap to compile); or a
      `jax.random.PRNGKey` / an int seed: random factors, those of OTT-JAX's
      `RandomInitializer` for the same key. Or warm-start with
      `js.ot.solve(..., init=(q, r, g))`.

    `sol.result`: `successful` once the factor change is at most `tol` with the last
    projection's marginal error within `10 · inner_tol` (Dykstra slows down near plans with
    vanishing entries and may stop at its cap a little above `inner_tol`; see
    `stats["marginal_error"]`); `inner_not_converged` beyond that;
    `max_steps_reached`; `nonfinite`. `stats`: `num_steps`, `factor_change`,
    `marginal_error` (of the last projection), `inner_steps` (Dykstra iterations in all),
    `rejected_steps`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (200, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (300, 2)) + 1.0
    sol = js.ot.solve(js.ot.PointCloud(x, y), solver=js.ot.LowRankSinkhorn(rank=5))
    assert sol.q.shape == (200, 5) and sol.r.shape == (300, 5)
    assert jnp.allclose(sol.apply(jnp.ones(300)), 1 / 200, atol=1e-5)   # P1 = a
    ```
    """

    rank: int = eqx.field(static=True)
    gamma: float | Array = 100.0
    epsilon: float | Array = 0.0
    tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=2000)
    inner_tol: float | Array | None = None
    inner_max_steps: int = eqx.field(static=True, default=2000)
    min_weight: float | Array = 1e-6
    gamma_rescale: bool = eqx.field(static=True, default=True)
    key: Array | int | None = None

    def __check_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(
                f"LowRankSinkhorn's `rank` must be a positive Python int (at most min(n, m)); "
                f"got {self.rank!r}."
            )
        for name, low, strict in (("gamma", 0, True), ("epsilon", 0, False)):
            v = getattr(self, name)
            if isinstance(v, (int, float)) and not (v > low if strict else v >= low):
                raise ValueError(
                    f"LowRankSinkhorn's `{name}` must be {'positive' if strict else '>= 0'}; "
                    f"got {v!r}."
                )
        for name in ("tol", "inner_tol", "min_weight"):
            v = getattr(self, name)
            if isinstance(v, (int, float)) and not v > 0:
                raise ValueError(f"LowRankSinkhorn's `{name}` must be positive; got {v!r}.")
        for name in ("max_steps", "inner_max_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(
                    f"LowRankSinkhorn's `{name}` must be a positive Python int; got {v!r}."
                )

    # ---- the protocol -------------------------------------------------------------------
    def init(self, problem, y, options):
        dtype = problem.a.dtype
        big = jnp.asarray(jnp.finfo(dtype).max, dtype)
        zero = jnp.array(0, jnp.int32)
        inf = jnp.asarray(jnp.inf, dtype)
        one = jnp.asarray(1.0, dtype)
        return _LRState(big, big, zero, problem.apply_cost(y[1], 1), inf, one, zero)

    def _objective(self, cost_r, q, r, g):
        eps = jnp.asarray(self.epsilon, q.dtype)
        ent = _entropy(q) + _entropy(r) + _entropy(g)
        return jnp.sum(cost_r * q / g[None, :]) - eps * ent

    def step(self, problem, y, state):
        q, r, g = y
        a, b = problem.a, problem.b
        dtype = q.dtype
        eps = jnp.asarray(self.epsilon, dtype)
        CR = state.cost_r  # (n, r)
        CtQ = problem.apply_cost(q, 0)  # (m, r)
        log_q, log_r, log_g = _zlog(q), _zlog(r), jnp.log(g)
        grad_q = CR / g[None, :] + eps * log_q
        grad_r = CtQ / g[None, :] + eps * log_r
        grad_g = -jnp.sum(q * CR, axis=0) / g**2 + eps * log_g
        gamma = jnp.asarray(self.gamma, dtype) * state.step_scale
        if self.gamma_rescale:
            scale = jnp.maximum(
                jnp.maximum(jnp.max(jnp.abs(grad_q)), jnp.max(jnp.abs(grad_r))),
                jnp.max(jnp.abs(grad_g)),
            )
            gamma = gamma / jnp.maximum(scale**2, jnp.finfo(dtype).tiny)
        shrink = 1.0 / (eps * gamma + 1.0)
        gamma = gamma * shrink
        # Log kernels of the mirror step; rows of zero weight stay out (Dykstra zeroes them).
        c_q = jnp.where((a > 0)[:, None], -gamma * grad_q + shrink * log_q, 0.0)
        c_r = jnp.where((b > 0)[:, None], -gamma * grad_r + shrink * log_r, 0.0)
        c_g = -gamma * grad_g + shrink * log_g
        alpha = jnp.asarray(self.min_weight, dtype) * jnp.sum(a)
        inner_tol = jnp.asarray(self.inner_tol, dtype)
        (q_new, r_new, g_new), err, steps = _dykstra(
            c_q, c_r, c_g, a, b, alpha, inner_tol, self.inner_max_steps
        )
        CR_new = problem.apply_cost(r_new, 1)
        objective = self._objective(CR_new, q_new, r_new, g_new)
        # Monotone safeguard: mirror descent on this non-convex objective can jump uphill
        # (the rescaled step grows as the gradients shrink); such a step is rejected and the
        # step halved. A NaN objective is accepted, so that it surfaces as `nonfinite`.
        # The projections are inexact: two iterates whose marginals are off by δ each may
        # differ in cost by about δ · max C (≈ max |C R / g|) without either being worse.
        cost_scale = jnp.max(jnp.abs(CR / g[None, :]))
        slack = 10 * jnp.finfo(dtype).eps * jnp.abs(state.objective)
        slack = slack + (err + jnp.minimum(state.marginal_error, err + inner_tol)) * cost_scale
        accept = ~(objective > state.objective + slack)
        change = _sym_kl(q_new, q) + _sym_kl(r_new, r) + _sym_kl(g_new, g)
        pick = lambda new, old: jnp.where(accept, new, old)
        y = (pick(q_new, q), pick(r_new, r), pick(g_new, g))
        new_state = _LRState(
            pick(change, state.change),
            pick(err, state.marginal_error),
            state.inner_steps + steps,
            pick(CR_new, CR),
            pick(objective, state.objective),
            jnp.where(accept, jnp.minimum(2 * state.step_scale, 1.0), state.step_scale / 2),
            state.rejected + (~accept).astype(jnp.int32),
        )
        return y, new_state

    def terminate(self, problem, y, state):
        finite = jnp.isfinite(state.change) & jnp.isfinite(state.marginal_error)
        # A step scale of 2⁻¹⁰ means ten net rejections: no step along the mirror direction
        # lowers the objective beyond the projection's accuracy: a stationary point.
        stuck = state.step_scale < 2.0**-10
        done = (state.change <= jnp.asarray(self.tol)) | stuck | ~finite
        # Near a solution on the boundary of the constraint set (entries of Q or R → 0, as for
        # clustered data) Dykstra slows down and may stop at its cap a little above
        # `inner_tol`; only a projection 10× off is a failure.
        inner_ok = state.marginal_error <= 10 * jnp.asarray(self.inner_tol, state.change.dtype)
        result = RESULTS.where(inner_ok, RESULTS.successful, RESULTS.inner_not_converged)
        return done, RESULTS.where(finite, result, RESULTS.nonfinite)

    def error(self, problem, y, state):
        return state.change

    def postprocess(self, problem, y, state):
        stats = {
            "marginal_error": state.marginal_error,
            "inner_steps": state.inner_steps,
            "rejected_steps": state.rejected,
        }
        return y, stats


def _zlog(x):
    """`log x`, with 0 where `x = 0` (those rows are masked out of the kernels)."""
    return jnp.where(x > 0, jnp.log(jnp.where(x > 0, x, 1.0)), 0.0)


def _sym_kl(x, y):
    """`KL(x | y) + KL(y | x) = Σ (x − y)(log x − log y)` (OTT-JAX's `gen_js` with c = 1);
    entries are floored at the dtype's `tiny` so that an underflow counts as a change
    (every term stays `≥ 0`)."""
    tiny = jnp.finfo(x.dtype).tiny
    return jnp.sum((x - y) * (jnp.log(jnp.maximum(x, tiny)) - jnp.log(jnp.maximum(y, tiny))))


def _dykstra(c_q, c_r, c_g, a, b, alpha, tol, max_steps):
    """Dykstra's algorithm for the KL projection of the kernels `(e^{c_q}, e^{c_r}, e^{c_g})`
    onto `{Q1 = a, R1 = b, Qᵀ1 = Rᵀ1 = g, g ≥ alpha}` (Algorithm 2 of Scetbon et al. 2021),
    in the log domain: `Q = diag(u₁) ξ₁ diag(v₁)`, `R = diag(u₂) ξ₂ diag(v₂)`. Each iteration
    is four log-sum-exp passes over `n × r` and `m × r` arrays. Returns the factors after
    the column step (`Qᵀ1 = Rᵀ1 = g` exactly), the L1 row-marginal error, the iterations."""
    dtype = c_q.dtype
    log_a, log_b = _safe_log(a), _safe_log(b)
    ma, mb = a > 0, b > 0
    lse = jax.nn.logsumexp
    log_alpha = jnp.log(alpha)
    zr = jnp.zeros(c_g.shape, dtype)

    def rows(c, lv):
        return lse(c + lv[None, :], axis=1)

    def row_error(lu1, L1, lu2, L2):
        return jnp.sum(jnp.abs(jnp.exp(lu1 + L1) - a)) + jnp.sum(jnp.abs(jnp.exp(lu2 + L2) - b))

    def body(s):
        lv1, lv2, L1, L2, lgt, w1, w2, w3, w4, _, k, _, _ = s
        lu1 = jnp.where(ma, log_a - L1, -jnp.inf)
        lu2 = jnp.where(mb, log_b - L2, -jnp.inf)
        lg = jnp.maximum(log_alpha, lgt + w1)
        w1 = lgt + w1 - lg
        lgt = lg
        s1 = lse(c_q + lu1[:, None], axis=0)
        s2 = lse(c_r + lu2[:, None], axis=0)
        lg = (lgt + w2 + lv1 + w3 + s1 + lv2 + w4 + s2) / 3.0
        nv1, nv2 = lg - s1, lg - s2
        w2 = lgt + w2 - lg
        w3 = lv1 + w3 - nv1
        w4 = lv2 + w4 - nv2
        L1, L2 = rows(c_q, nv1), rows(c_r, nv2)
        err = row_error(lu1, L1, lu2, L2)
        return nv1, nv2, L1, L2, lg, w1, w2, w3, w4, err, k + 1, lu1, lu2

    def cond(s):
        err, k = s[9], s[10]
        return (err > tol) & (k < max_steps)

    n, m = c_q.shape[0], c_r.shape[0]
    s0 = (
        zr,
        zr,
        rows(c_q, zr),
        rows(c_r, zr),
        c_g,
        zr,
        zr,
        zr,
        zr,
        jnp.asarray(jnp.inf, dtype),
        jnp.array(0, jnp.int32),
        jnp.zeros(n, dtype),
        jnp.zeros(m, dtype),
    )
    lv1, lv2, _, _, lg, _, _, _, _, err, k, lu1, lu2 = jax.lax.while_loop(cond, body, s0)
    q = jnp.exp(lu1[:, None] + c_q + lv1[None, :])
    r = jnp.exp(lu2[:, None] + c_r + lv2[None, :])
    return (q, r, jnp.exp(lg)), err, k


def random_factors(key, a, b, rank):
    """OTT-JAX's `RandomInitializer`: `g` uniform in `[1, 2]` normalised, `Q`, `R` with rows
    `|N(0, 1)|` normalised to `a`, `b` (from `jax.random.split(key, 3)` as `g, q, r`)."""
    kg, kq, kr = jax.random.split(key, 3)
    g = jax.random.uniform(kg, (rank,), a.dtype) + 1.0
    q = jnp.abs(jax.random.normal(kq, (a.shape[0], rank), a.dtype))
    r = jnp.abs(jax.random.normal(kr, (b.shape[0], rank), b.dtype))
    return _normalise_factors(q, r, g, a, b)


def _weyl(rows, rank, shift, dtype):
    """`0.5 + frac(i φ₁ + k φ₂ + shift)`: a low-discrepancy (R₂) sequence, in `[0.5, 1.5)`."""
    i = jnp.arange(1, rows + 1, dtype=dtype)[:, None]
    k = jnp.arange(1, rank + 1, dtype=dtype)[None, :]
    t = i * 0.7548776662466927 + k * 0.5698402909980532 + shift
    return 0.5 + (t - jnp.floor(t))


def deterministic_factors(a, b, rank):
    """The default initial factors: rows of `Q` (`R`) proportional to `a` (`b`) times
    distinct quasi-random profiles over the `r` columns (an R₂ low-discrepancy sequence: no
    two columns alike, so the symmetric saddle point `Q = a gᵀ` is avoided), `g` likewise.
    Reproducible and cheap to compile (no random number generator)."""
    dtype = a.dtype
    q = _weyl(a.shape[0], rank, 0.0, dtype)
    r = _weyl(b.shape[0], rank, 0.31, dtype)
    g = _weyl(1, rank, 0.67, dtype)[0]
    return _normalise_factors(q, r, g, a, b)


def _normalise_factors(q, r, g, a, b):
    q = a[:, None] * q / jnp.sum(q, axis=1, keepdims=True)
    r = b[:, None] * r / jnp.sum(r, axis=1, keepdims=True)
    return q, r, g / jnp.sum(g) * jnp.sum(a)


class _EnvelopeAdjoint(AbstractAdjoint):
    """The loop gets no derivative at all: low-rank costs are differentiated by the envelope
    theorem, with the factors held fixed (`LowRankOTSolution.cost`)."""

    @property
    def loop_kind(self) -> LoopKind:
        return "lax"

    def apply(self, fn_primal, fn_rewrite, inputs, tags, default_solver, throw):
        return _stop_gradient(fn_primal(_stop_gradient(inputs)))


class LowRankOTSolution(Solution):
    """What `js.ot.solve(..., solver=js.ot.LowRankSinkhorn(rank))` returns: a `js.Solution`
    whose `value` is the factors `(q, r, g)` of the plan `P = Q diag(1/g) Rᵀ`.

    **Attributes and properties:**

    - `q` (`n × r`), `r` (`m × r`), `g` (`r`): the factors (they carry no derivative).
    - `cost` (= `transport_cost`): `⟨C, P⟩`, computed in `O((n + m) r d)` for point clouds
      and differentiable with respect to the points or cost matrix by the envelope theorem
      (the factors held fixed: exact at a stationary point). Not with respect to `a`, `b`.
    - `reg_cost`: the objective minimised, `⟨C, P⟩ − ε (H(Q) + H(R) + H(g))` (= `cost`
      for `ε = 0`).
    - `plan`: `P` as an `n × m` matrix (materialised only when asked for).
    - `apply(v, axis=1)`: `P v` (`v` of length `m`, or `(m, k)`), `axis=0`: `Pᵀ v`, in
      `O((n + m) r)`. `marginals`: `(P1, Pᵀ1)`.
    - `problem` (`geom`, `a`, `b`), `epsilon`, `result`, `stats` (`num_steps`,
      `factor_change`, `marginal_error`, `inner_steps`).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (40, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (30, 2))
    solve = lambda x: js.ot.solve(js.ot.PointCloud(x, y), solver=js.ot.LowRankSinkhorn(rank=3))
    sol = solve(x)
    v = jnp.arange(30.0)
    assert jnp.allclose(sol.apply(v), sol.plan @ v, atol=1e-5)
    assert jnp.allclose(sol.cost, jnp.sum(sol.plan * sol.geom.cost_matrix), rtol=1e-4)
    grad = jax.grad(lambda x: solve(x).cost)(x)      # envelope theorem: 2 (x a − P y)
    assert jnp.allclose(grad, 2 * (x / 40 - sol.plan @ y), atol=1e-4)
    ```
    """

    problem: LowRankOTProblem = eqx.field(kw_only=True)
    epsilon: Array = eqx.field(kw_only=True)

    @property
    def q(self) -> Array:
        return self.value[0]

    @property
    def r(self) -> Array:
        return self.value[1]

    @property
    def g(self) -> Array:
        return self.value[2]

    @property
    def geom(self):
        return self.problem.geom

    @property
    def a(self):
        return self.problem.a

    @property
    def b(self):
        return self.problem.b

    @property
    def plan(self) -> Array:
        return (self.q / self.g[None, :]) @ self.r.T

    def apply(self, v: Array, axis: int = 1) -> Array:
        """`P v` (`axis=1`) or `Pᵀ v` (`axis=0`) through the factors, `O((n + m) r)`."""
        if axis not in (0, 1):
            raise ValueError(f"`axis` must be 0 (Pᵀ v) or 1 (P v); got {axis!r}.")
        v = jnp.asarray(v)
        first, second = (self.q, self.r) if axis == 1 else (self.r, self.q)
        if v.shape[:1] != (second.shape[0],):
            raise ValueError(
                f"apply(v, axis={axis}) needs v with leading dimension {second.shape[0]}; "
                f"got {v.shape}."
            )
        inv_g = 1.0 / self.g
        if v.ndim == 1:
            return first @ (inv_g * (second.T @ v))
        return first @ (inv_g[:, None] * (second.T @ v))

    @property
    def marginals(self) -> tuple[Array, Array]:
        return jnp.sum(self.q, axis=1), jnp.sum(self.r, axis=1)

    @property
    def transport_cost(self) -> Array:
        q, r, g = jax.lax.stop_gradient(self.value)
        return self.problem.transport_cost(q, r, g)

    @property
    def cost(self) -> Array:
        return self.transport_cost

    @property
    def reg_cost(self) -> Array:
        q, r, g = jax.lax.stop_gradient(self.value)
        ent = _entropy(q) + _entropy(r) + _entropy(g)
        return self.transport_cost - jax.lax.stop_gradient(self.epsilon) * ent


def solve_low_rank(geom, a, b, solver, adjoint, init, throw, progress) -> LowRankOTSolution:
    """The body of `js.ot.solve` for a `LowRankSinkhorn` solver (arguments already checked
    for kinds and shapes by `js.ot.solve`)."""
    n, m = geom.shape
    if solver.rank > min(n, m):
        raise ValueError(
            f"LowRankSinkhorn's `rank` must be at most min(n, m) = {min(n, m)}; got "
            f"rank={solver.rank}. A plan of rank min(n, m) is unconstrained: use "
            "js.ot.Sinkhorn there."
        )
    if type(adjoint) is not ImplicitAdjoint or adjoint.linear_solver is not None:
        raise ValueError(
            "Low-rank OT is differentiated by the envelope theorem (its costs with the factors "
            "held fixed), not by an adjoint: leave `adjoint` at its default."
        )
    if init is not None:
        if not (isinstance(init, (tuple, list)) and len(init) == 3):
            raise TypeError("With LowRankSinkhorn, `init` must be None or factors (q, r, g).")
        init = tuple(jnp.asarray(v) for v in init)
        want = ((n, solver.rank), (m, solver.rank), (solver.rank,))
        got = tuple(v.shape for v in init)
        if got != want:
            raise ValueError(f"`init` factors (q, r, g) must have shapes {want}; got {got}.")
    if isinstance(solver.key, int) and not isinstance(solver.key, bool):
        solver = eqx.tree_at(lambda s: s.key, solver, jax.random.PRNGKey(solver.key))
    solver = floats_to_arrays(solver)
    return _solve_low_rank(geom, a, b, solver, init, throw, progress)


@eqx.filter_jit
def _solve_low_rank(geom, a, b, solver, init, throw, progress):
    if not _factored(geom):
        geom = geom.dense()  # computes a point cloud's cost matrix once
    dtype = geom.dtype
    n, m = geom.shape
    a = jnp.full(n, 1.0 / n, dtype) if a is None else a.astype(dtype)
    b = jnp.full(m, 1.0 / m, dtype) if b is None else b.astype(dtype)
    solver = eqx.tree_at(
        lambda s: (s.gamma, s.epsilon, s.min_weight, s.tol, s.inner_tol),
        solver,
        (
            jnp.asarray(solver.gamma, dtype),
            jnp.asarray(solver.epsilon, dtype),
            jnp.asarray(solver.min_weight, dtype),
            jnp.asarray(
                LowRankOTProblem.default_tol(dtype) if solver.tol is None else solver.tol, dtype
            ),
            jnp.asarray(
                1e-4 if solver.inner_tol is None else solver.inner_tol,
                dtype,
            ),
        ),
        is_leaf=lambda x: x is None,
    )
    problem = LowRankOTProblem(geom, a, b)
    bad, nonfinite = problem.invalid(solver)
    checked = verdict(bad, nonfinite)
    # Invalid values are replaced by harmless stand-ins; the result says invalid_input.
    problem = LowRankOTProblem(
        geom, jnp.where(bad, 1.0 / n, a), jnp.where(bad, 1.0 / m, b), checked
    )
    solver = eqx.tree_at(
        lambda s: (s.gamma, s.epsilon),
        solver,
        (jnp.where(bad, 10.0, solver.gamma), jnp.where(bad, 0.0, solver.epsilon)),
    )
    if init is not None:
        y0 = tuple(v.astype(dtype) for v in init)
    elif solver.key is None:
        y0 = deterministic_factors(problem.a, problem.b, solver.rank)
    else:
        y0 = random_factors(solver.key, problem.a, problem.b, solver.rank)
    sol = iterative_solve(
        problem,
        solver,
        y0,
        max_steps=solver.max_steps,
        adjoint=_EnvelopeAdjoint(),
        throw=throw,
        progress=progress,
        name="LowRankSinkhorn",
    )
    return LowRankOTSolution(
        value=sol.value, result=sol.result, stats=sol.stats, problem=problem, epsilon=solver.epsilon
    )
