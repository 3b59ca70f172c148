"""`ADMM`: the OSQP algorithm (Stellato et al. 2020) on the core protocol: operator splitting
with adaptive ρ, a direct (Cholesky) solve of the reduced KKT system for dense Q or CG for a
matvec Q, infeasibility certificates, and solution polishing on the guessed active set."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jax.scipy.linalg import cho_solve
from jaxtyping import Array, Scalar

from .._iterate import AbstractIterativeSolver
from .._solution import RESULTS
from ._problem import QPProblem, _inf_norm

_RHO_MIN, _RHO_MAX = 1e-6, 1e6


class _ADMMState(eqx.Module):
    z: Array  # in the scaled problem's coordinates
    scaling: tuple[Array, Array, Scalar]  # (D, E, cost) of `_ruiz`
    rho: Scalar
    factor: Any  # Cholesky factor of Q + σI + Cᵀ diag(ρ) C (dense Q), else None
    refactor: Array  # ρ changed: factorise again at the next step
    err: Scalar  # KKT error of the ADMM iterate
    best: tuple[Array, Array]  # the polished point (x, y)
    best_err: Scalar
    status: RESULTS  # successful, or an infeasibility certificate was found
    num_iters: Array
    num_polished: Array


def _rho_vector(problem: QPProblem, rho):
    lo, up = problem.bounds()
    free = (lo == -jnp.inf) & (up == jnp.inf)
    return jnp.where(lo == up, 1e3 * rho, jnp.where(free, _RHO_MIN, rho))


def _limit(v):
    # OSQP's `limit_scaling`: norms below 1e-4 (or not finite) count as 1, above 1e4 as 1e4.
    return jnp.where(jnp.isfinite(v) & (v >= 1e-4), jnp.minimum(v, 1e4), 1.0)


def _ruiz(problem: QPProblem, iterations: int):
    """Ruiz equilibration of the QP's data (OSQP §5.1): `(D, E, cost)` such that the scaled
    problem `Q̄ = cost·DQD`, `c̄ = cost·Dc`, `[Ā; Ḡ] = E [A; G] D` has KKT matrix columns of
    ∞-norm near 1 and a cost of unit size. Bound rows keep their identity block (their row
    scale is `1/D`, the bounds become `lower/D`, `upper/D`). For a matvec `Q` only the
    constraint rows are scaled (to unit ∞-norm), `D = 1`, `cost = 1`."""
    dtype = problem.c.dtype
    n = problem.n
    absC = jnp.abs(jax.lax.stop_gradient(jnp.concatenate([problem.A, problem.G])))
    ones_n, ones_m = jnp.ones((n,), dtype), jnp.ones((absC.shape[0],), dtype)
    c = jax.lax.stop_gradient(problem.c)
    if not problem.dense or iterations == 0:
        E = 1.0 / _limit(jnp.max(absC, axis=1, initial=0.0)) if iterations else ones_m
        return ones_n, E, jnp.ones((), dtype)
    absQ = jnp.abs(jax.lax.stop_gradient(problem.Q))

    def qcol(D):  # column ∞-norms of DQD
        return jnp.max(absQ * D[:, None], axis=0, initial=0.0) * D

    def body(_, DE):
        D, E = DE
        ccol = jnp.max(absC * E[:, None], axis=0, initial=0.0) * D
        crow = jnp.max(absC * D[None, :], axis=1, initial=0.0) * E
        D = D / jnp.sqrt(_limit(jnp.maximum(qcol(D), ccol)))
        E = E / jnp.sqrt(_limit(crow))
        return D, E

    D, E = jax.lax.fori_loop(0, iterations, body, (ones_n, ones_m))
    cost = 1.0 / _limit(jnp.maximum(jnp.mean(qcol(D)), _inf_norm(D * c)))
    return D, E, cost


def _scaled(problem: QPProblem, scaling) -> QPProblem:
    """The QP in scaled coordinates `x̄ = x/D` (see `_ruiz`)."""
    D, E, cost = scaling
    p = problem.b.shape[0]
    Ea, Eg = E[:p], E[p:]
    Q = cost * (D[:, None] * problem.Q * D[None, :]) if problem.dense else problem.Q
    bounds = (problem.lower / D, problem.upper / D) if problem.has_bounds else (None, None)
    return QPProblem(
        Q,
        cost * D * problem.c,
        Ea[:, None] * problem.A * D[None, :],
        Ea * problem.b,
        Eg[:, None] * problem.G * D[None, :],
        Eg * problem.h,
        *bounds,
    )


def _row_scale(problem: QPProblem, scaling):
    """The scale of every stacked row, bound rows included (`1/D` there): `z̄ = row·z`,
    `y = row·ȳ/cost`."""
    D, E, _ = scaling
    return jnp.concatenate([E, 1.0 / D]) if problem.has_bounds else E


def _to_scaled(problem, scaling, x, y):
    D, _, cost = scaling
    return x / D, cost * y / _row_scale(problem, scaling)


def _from_scaled(problem, scaling, xs, ys):
    D, _, cost = scaling
    return D * xs, _row_scale(problem, scaling) * ys / cost


class ADMM(AbstractIterativeSolver[QPProblem, Any, _ADMMState]):
    """The OSQP algorithm: ADMM on `min ½xᵀQx + cᵀx, l ≤ Cx ≤ u` (Stellato et al., 2020).

    Each loop step runs `check_every` ADMM iterations, then checks termination and the
    infeasibility certificates, tries to polish (a direct solve of the KKT system on the active
    set guessed from the multipliers, with iterative refinement: an exact solution once the
    active set is right), and adapts ρ to balance primal and dual residuals. For a dense `Q`
    each ρ is one Cholesky factorisation of `Q + σI + Cᵀ diag(ρ) C` (n×n, reused until ρ
    changes); for a matvec `Q` the reduced system is solved by `js.linear.CG`, warm started,
    and there is no polishing.

    The data are first equilibrated (`scaling` Ruiz iterations, as OSQP does: the columns of
    the KKT matrix `[Q Cᵀ; C 0]` scaled to unit ∞-norm, and the cost to unit size), so badly
    scaled constraints (rows of very different norms) do not slow ADMM down; the iterations
    run on the scaled problem, and the primal and dual solutions and the residuals that decide
    termination are those of the original problem.

    Stops when the KKT error (`stats["error"]`: the largest of the relative primal, dual and
    complementarity residuals, ∞-norms) of the ADMM iterate or of the polished point is at
    most `tol`, or on a certificate of primal infeasibility (`RESULTS.primal_infeasible`) or
    of unboundedness (`RESULTS.dual_infeasible`).

    **Arguments:**

    - `tol`: tolerance on the KKT error (`None`: `js.qp.solve`'s `tol`, else 1e-8 in float64,
      1e-4 in float32).
    - `rho`: the initial penalty ρ (default 0.1); `sigma`: the proximal term σ (1e-6);
      `alpha`: the relaxation (1.6).
    - `adaptive_rho`: adapt ρ (OSQP's rule) at each check (default True).
    - `polish`: try polishing at each check (dense `Q` only; default True; may be a traced
      bool).
    - `check_every`: ADMM iterations between checks (a static int, default 10).
    - `scaling`: Ruiz equilibration iterations (a static int, default 10; 0 turns scaling
      off). For a matvec `Q` only the constraint rows are scaled.
    - `infeasibility_tol`: tolerance of the infeasibility certificates (`None`: 1e-6 in
      float64, 1e-4 in float32).
    - `cg_max_steps`: the most CG iterations per ADMM iteration for a matvec `Q` (default 50).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    Q, c = jnp.array([[2.0, 0.5], [0.5, 1.0]]), jnp.array([1.0, 1.0])
    sol = js.qp.solve(Q, c, A=jnp.ones((1, 2)), b=jnp.array([1.0]), G=-jnp.eye(2),
                      h=jnp.zeros(2), solver=js.qp.ADMM(rho=1.0, check_every=10))
    assert jnp.allclose(sol.x, jnp.array([0.25, 0.75])) and sol.stats["polished"]
    ```
    """

    tol: float | Array | None = None
    rho: float | Array = 0.1
    sigma: float | Array = 1e-6
    alpha: float | Array = 1.6
    adaptive_rho: bool = eqx.field(static=True, default=True)
    polish: bool | Array = True
    check_every: int = eqx.field(static=True, default=10)
    infeasibility_tol: float | Array | None = None
    cg_max_steps: int = eqx.field(static=True, default=50)
    scaling: int = eqx.field(static=True, default=10)

    def __check_init__(self):
        if not isinstance(self.check_every, int) or self.check_every < 1:
            raise ValueError(
                f"ADMM `check_every` must be a positive int; got {self.check_every!r}."
            )
        if not isinstance(self.scaling, int) or self.scaling < 0:
            raise ValueError(
                f"ADMM `scaling` (Ruiz iterations) must be an int >= 0; got {self.scaling!r}."
            )
        for name in ("rho", "sigma"):
            v = getattr(self, name)
            if isinstance(v, (int, float)) and not v > 0:
                raise ValueError(f"ADMM `{name}` must be positive; got {v!r}.")
        if isinstance(self.alpha, (int, float)) and not 0 < self.alpha < 2:
            raise ValueError(f"ADMM `alpha` must lie in (0, 2); got {self.alpha!r}.")

    # --- linear algebra -----------------------------------------------------------------------

    def _factorise(self, problem, rho):
        w = _rho_vector(problem, rho)
        K = problem.Q + self.sigma * jnp.eye(problem.n, dtype=problem.c.dtype) + problem.gram(w)
        return jnp.linalg.cholesky(K)

    def _solve_reduced(self, problem, factor, rho_vec, rhs, x0):
        if problem.dense:
            return cho_solve((factor, True), rhs)
        from ..linear import CG

        def mv(v):
            return problem.qmv(v) + self.sigma * v + problem.ctmv(rho_vec * problem.cmv(v))

        op = lx.FunctionLinearOperator(
            mv, jax.eval_shape(lambda: rhs), tags=lx.positive_semidefinite_tag
        )
        tol = 1e-12 if jnp.finfo(rhs.dtype).bits > 32 else 1e-6
        cg = CG(tol=tol, max_steps=self.cg_max_steps)
        return lx.linear_solve(op, rhs, cg, options={"y0": x0}, throw=False).value

    # --- protocol -----------------------------------------------------------------------------

    def init(self, problem, xy, options):
        x, y = xy
        scaling = _ruiz(problem, self.scaling)
        sp = _scaled(problem, scaling)
        lo, up = sp.bounds()
        rho = jnp.asarray(self.rho, problem.c.dtype)
        z = jnp.clip(sp.cmv(_to_scaled(problem, scaling, x, y)[0]), lo, up)
        # The first step factorises (one Cholesky in the compiled program, not two).
        n, dtype = problem.n, problem.c.dtype
        factor = jnp.zeros((n, n), dtype) if problem.dense else None
        err = problem.kkt_error(x, y)
        inf = jnp.asarray(jnp.inf, err.dtype)
        return _ADMMState(
            z=z,
            scaling=scaling,
            rho=rho,
            factor=factor,
            refactor=jnp.array(problem.dense),
            err=err,
            best=(x, y),
            best_err=inf,
            status=RESULTS.successful,  # pyright: ignore[reportArgumentType]
            num_iters=jnp.array(0, jnp.int32),
            num_polished=jnp.array(0, jnp.int32),
        )

    def step(self, problem, xy, state):
        # The iterations run on the scaled problem `sp`; `(x, y)` and the KKT error are the
        # original problem's.
        scaling = state.scaling
        sp = _scaled(problem, scaling)
        x, y = _to_scaled(problem, scaling, *xy)
        lo, up = sp.bounds()
        dtype = problem.c.dtype
        rho = state.rho
        factor = state.factor
        if problem.dense:
            factor = jax.lax.cond(
                state.refactor, lambda: self._factorise(sp, rho), lambda: state.factor
            )
        rho_vec = _rho_vector(sp, rho)
        alpha, sigma = self.alpha, self.sigma

        def iteration(_, carry):
            x, z, y, _, _ = carry
            rhs = sigma * x - sp.c + sp.ctmv(rho_vec * z - y)
            xt = self._solve_reduced(sp, factor, rho_vec, rhs, x)
            zt = sp.cmv(xt)
            x_new = alpha * xt + (1 - alpha) * x
            z_half = alpha * zt + (1 - alpha) * z
            z_new = jnp.clip(z_half + y / rho_vec, lo, up)
            y_new = y + rho_vec * (z_half - z_new)
            return x_new, z_new, y_new, x_new - x, y_new - y

        zeros = (jnp.zeros_like(x), jnp.zeros_like(y))
        x, z, y, dx, dy = jax.lax.fori_loop(0, self.check_every, iteration, (x, state.z, y) + zeros)

        # The scaled residuals (for ρ), and the KKT error of the unscaled ADMM iterate (y lies
        # in the normal cone at z).
        cx, qx, cty = sp.cmv(x), sp.qmv(x), sp.ctmv(y)
        r_prim = _inf_norm(cx - z)
        r_dual = _inf_norm(qx + sp.c + cty)
        scale_p = jnp.maximum(_inf_norm(cx), _inf_norm(z))
        scale_d = jnp.maximum(jnp.maximum(_inf_norm(qx), _inf_norm(cty)), _inf_norm(sp.c))
        xy_out = _from_scaled(problem, scaling, x, y)
        err = problem.kkt_error(*xy_out)

        # Infeasibility certificates (OSQP §3.4), from the last iteration's differences,
        # unscaled: a certificate of the original problem.
        dx, dy = _from_scaled(problem, scaling, dx, dy)
        lo, up = problem.bounds()
        eps = self._infeasibility_tol(dtype)
        ndy, ndx = _inf_norm(dy), _inf_norm(dx)
        support = jnp.sum(jnp.where(dy > 0, up, 0.0) * dy + jnp.where(dy < 0, lo, 0.0) * dy)
        primal_inf = (
            (ndy > 0) & (_inf_norm(problem.ctmv(dy)) <= eps * ndy) & (support <= -eps * ndy)
        )
        cdx = problem.cmv(dx)
        tol_x = eps * ndx
        ok_up = jnp.where(up == jnp.inf, True, cdx <= tol_x)
        ok_lo = jnp.where(lo == -jnp.inf, True, cdx >= -tol_x)
        dual_inf = (
            (ndx > 0)
            & (_inf_norm(problem.qmv(dx)) <= tol_x)
            & (jnp.dot(problem.c, dx) <= -tol_x)
            & jnp.all(ok_up & ok_lo)
        )
        status = RESULTS.where(
            primal_inf,
            RESULTS.primal_infeasible,
            RESULTS.where(dual_inf, RESULTS.dual_infeasible, RESULTS.successful),
        )

        # Polishing on the guessed active set.
        best, best_err, num_polished = state.best, state.best_err, state.num_polished
        if problem.dense:
            trigger = jnp.asarray(self.polish) & (err < 1e-2) & (state.best_err > self.tol)
            cand = jax.lax.cond(
                trigger,
                lambda: _from_scaled(problem, scaling, *_polish(sp, x, z, y)),
                lambda: best,
            )
            cand_err = jnp.where(trigger, problem.kkt_error(*cand), jnp.inf)
            better = cand_err < best_err
            best = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), cand, best)
            best_err = jnp.where(better, cand_err, best_err)
            num_polished = num_polished + trigger.astype(jnp.int32)

        # OSQP's ρ update: balance the relative residuals; refactorise only on a large change.
        refactor = jnp.array(False)
        if self.adaptive_rho:
            tiny = jnp.finfo(dtype).tiny
            ratio = (r_prim / (scale_p + tiny)) / (r_dual / (scale_d + tiny) + tiny)
            new_rho = jnp.clip(rho * jnp.sqrt(ratio), _RHO_MIN, _RHO_MAX)
            refactor = jnp.isfinite(new_rho) & ((new_rho > 5 * rho) | (new_rho < rho / 5))
            rho = jnp.where(refactor, new_rho, rho)

        new_state = _ADMMState(
            z=z,
            scaling=scaling,
            rho=rho,
            factor=factor,
            refactor=refactor,
            err=err,
            best=best,
            best_err=best_err,
            status=status,
            num_iters=state.num_iters + self.check_every,
            num_polished=num_polished,
        )
        return xy_out, new_state

    def _infeasibility_tol(self, dtype):
        if self.infeasibility_tol is not None:
            return self.infeasibility_tol
        return 1e-6 if jnp.finfo(dtype).bits > 32 else 1e-4

    def terminate(self, problem, xy, state):
        err = jnp.minimum(state.err, state.best_err)
        converged = err <= self.tol  # pyright: ignore[reportOperatorIssue]
        failed = state.status != RESULTS.successful
        finite = jnp.isfinite(state.err)
        done = converged | failed | ~finite
        result = RESULTS.where(
            converged,
            RESULTS.successful,
            RESULTS.where(failed, state.status, RESULTS.nonfinite),
        )
        return done, result

    def postprocess(self, problem, xy, state):
        use_polished = state.best_err < state.err
        out = jax.tree_util.tree_map(lambda a, b: jnp.where(use_polished, a, b), state.best, xy)
        stats = {
            "num_steps": state.num_iters,
            "polished": use_polished,
            "num_polish": state.num_polished,
            "rho": state.rho,
        }
        return out, stats

    def error(self, problem, xy, state):
        return problem.kkt_error(*xy)


def _polish(problem: QPProblem, x, z, y, refinements: int = 10):
    """Solve the KKT system with the active set guessed from `(z, y)` (OSQP §4.1): regularised
    by δ, reduced to an n×n Cholesky solve, then refined against the exact system."""
    dtype = x.dtype
    lo, up = problem.bounds()
    eq = lo == up
    upper = (z + y > up) | eq
    lower = (z + y < lo) & ~upper
    active = upper | lower
    bound = jnp.where(upper, up, jnp.where(lower, lo, 0.0))
    delta = 1e-7 if jnp.finfo(dtype).bits > 32 else 1e-3
    w = jnp.where(active, 1.0 / delta, 0.0).astype(dtype)
    K = problem.Q + delta * jnp.eye(problem.n, dtype=dtype) + problem.gram(w)
    L = jnp.linalg.cholesky(K)

    def solve_reg(r1, r2):
        # [Q + δI, C_aᵀ; C_a, −δI] [x; y_a] = [r1; r2]: y_a = (C_a x − r2)/δ.
        r2 = jnp.where(active, r2, 0.0)
        xs = cho_solve((L, True), r1 + problem.ctmv(w * r2))
        ys = w * (problem.cmv(xs) - r2)
        return xs, ys

    xs, ys = solve_reg(-problem.c, bound)

    def refine(_, xy):
        xs, ys = xy
        r1 = -problem.c - problem.qmv(xs) - problem.ctmv(ys)
        r2 = jnp.where(active, bound - problem.cmv(xs), 0.0)
        ex, ey = solve_reg(r1, r2)
        return xs + ex, ys + ey

    xs, ys = jax.lax.fori_loop(0, refinements, refine, (xs, ys))
    finite = jnp.all(jnp.isfinite(xs)) & jnp.all(jnp.isfinite(ys))
    return jnp.where(finite, xs, x), jnp.where(finite, ys, y)
