"""Sinkhorn–Newton–Sparse (SNS): Tang et al., "Accelerating Sinkhorn Algorithm with Sparse
Newton Iterations", ICLR 2024.

Entropic OT maximises the concave dual (Lyapunov potential)

    L(f, g) = <f, a> + <g, b> − ε Σ_ij exp((f_i + g_j − C_ij)/ε),

whose gradient is the marginal violation `(a − P1, b − Pᵀ1)` and whose negative Hessian is
`(1/ε) [[diag(P1), P], [Pᵀ, diag(Pᵀ1)]]`. Near the optimum the plan `P` is close to sparse, so
after a Sinkhorn warm-up (`js.ot.Sinkhorn` itself, run to a loose tolerance) SNS takes Newton
steps with `P` replaced by its largest entries. Here the sparsification has static shapes (the
`k` largest entries of each row and of each column, their union, held as a dense masked matrix
at these sizes), so the solver jits and vmaps; the Newton system is solved inexactly (forcing
term min(0.1, ‖∇L‖₁), never tighter than reaching the tolerance needs) by `js.linear.CG` with
a Jacobi preconditioner on its Schur complement in `g` (the exact diagonal makes the sparsified
matrix diagonally dominant, so the complement is positive definite; the right-hand side is
orthogonal to the null direction `(1, −1)` and a tiny ridge keeps CG well defined), and a
backtracking (Armijo) line search on `L` (the core `backtracking`) accepts the step. A Newton
step whose line search fails is replaced by a Sinkhorn sweep, so `L` never decreases, and the
returned point is never worse (in marginal error) than the best one seen.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._linesearch import backtracking
from .._solution import RESULTS
from ..linear import CG, JacobiPreconditioner, solve as linear_solve
from ._base import AbstractOTSolver
from ._epsilon_scaling import EpsilonScaling
from ._geometry import mean_cost
from ._problem import OTProblem
from ._sinkhorn import Sinkhorn, t_matvec, transposed

_CHECK_EVERY = 10  # sweeps per loop step of the warm-up (its marginal error is checked)
_NEWTON, _SWEEP = 1, 2  # the Newton phase's two kinds of step (0: warm-up)


class _SNSState(eqx.Module):
    warm: Any  # the warm-up Sinkhorn's state
    in_warmup: Array
    err: Array  # marginal error of the current point (inf before the first real one)
    real: Array  # whether `err` is at the target epsilon (the problem's error)
    best_f: Array
    best_g: Array
    best_err: Array
    fallback_sweeps: Array
    newton_steps: Array
    cg_steps: Array
    failed_newton: Array


def _log_plan(f, g, cost, eps, problem):
    fm, gm = problem.masked(f, g)
    return (fm[:, None] + gm[None, :] - cost) / eps


def _plan_terms(f, g, cost, eps, problem):
    """One pass of `exp` over the plan: `(log P, P, dual value L(f, g), L1 marginal error)`."""
    logp = _log_plan(f, g, cost, eps, problem)
    p = jnp.exp(logp)
    lin = jnp.sum(jnp.where(problem.mask_a, problem.a * f, 0.0)) + jnp.sum(
        jnp.where(problem.mask_b, problem.b * g, 0.0)
    )
    err = jnp.sum(jnp.abs(p.sum(1) - problem.a)) + jnp.sum(jnp.abs(p.sum(0) - problem.b))
    return logp, p, lin - eps * jnp.sum(p), jnp.where(jnp.isfinite(err), err, jnp.inf)


def _sweep(f, g, problem):
    """One log-domain Sinkhorn sweep at the problem's epsilon (Sinkhorn's own), with the new
    L1 marginal error: the fallback when Newton steps fail."""
    sweeper = Sinkhorn(epsilon_scaling=None, acceleration=None)
    f, g, err, _ = sweeper._log_sweeps(problem, f, g, problem.epsilon, 1.0, None, False, count=1)
    return f, g, jnp.where(jnp.isfinite(err), err, jnp.inf)


def _kth_thresholds(logp, kr, kc, iters=8, span=40.0):
    """Thresholds (in log space) keeping about the `kr` largest entries of each row and the
    `kc` largest of each column of `exp(logp)`: bisection on the count (at least k kept, ties
    and a resolution of span/2**iters aside; entries below e^-span × the row's largest are
    dropped). A few dense passes, in float32 (counts need no more): `lax.top_k` on an n×m
    matrix is ~20× slower on CPU.
    """
    logp = logp.astype(jnp.float32)
    hr = logp.max(1)
    hc = logp.max(0)
    hr = jnp.where(jnp.isfinite(hr), hr, 0.0)
    hc = jnp.where(jnp.isfinite(hc), hc, 0.0)

    def body(_, c):
        lr, hr, lc, hc = c
        mr, mc = 0.5 * (lr + hr), 0.5 * (lc + hc)
        okr = jnp.sum((logp >= mr[:, None]).astype(jnp.float32), axis=1) >= kr
        okc = jnp.sum((logp >= mc[None, :]).astype(jnp.float32), axis=0) >= kc
        return (
            jnp.where(okr, mr, lr),
            jnp.where(okr, hr, mr),
            jnp.where(okc, mc, lc),
            jnp.where(okc, hc, mc),
        )

    lr, _, lc, _ = jax.lax.fori_loop(0, iters, body, (hr - span, hr, hc - span, hc))
    return lr, lc


class SparseNewton(AbstractOTSolver):
    """Sinkhorn–Newton–Sparse (Tang et al., ICLR 2024) for `js.ot.solve`.

    A Sinkhorn warm-up, then Newton steps on the concave dual with a sparsified Hessian:
    the `k` largest plan entries of each row and each column (static shapes: it jits and
    vmaps), a Jacobi-preconditioned CG solve of the Newton system, and a backtracking line
    search on the dual. Where Sinkhorn needs thousands of sweeps at small epsilon, SNS needs a
    few Newton steps after the warm-up, and reaches marginal errors of 1e-10 and below in
    float64. The warm-up is `js.ot.Sinkhorn` itself (kernel mode, epsilon scaling, Anderson
    acceleration), run until the marginal error is below `warmup_tol`. Newton steps whose
    line search fails become Sinkhorn sweeps (the dual never decreases), and the returned point
    is never worse than the best one seen. Its optimality conditions are Sinkhorn's, so it has
    the same implicit derivatives. Balanced problems only; each step costs O(nm) like a
    Sinkhorn sweep (the cost matrix is materialised).

    **Arguments:**

    - `tol`: absolute tolerance on the L1 marginal error `‖P1 − a‖₁ + ‖Pᵀ1 − b‖₁`; `None`
      (default): the OT family's (1e-6 in float64, 1e-4 in float32). SNS reaches 1e-10 and
      below in float64: ask for it.
    - `max_steps`: the most iterations in all: warm-up sweeps, Newton steps and fallback
      sweeps (default 2100: the warm-up's 2000 sweeps and 100 Newton steps).
    - `warmup`: the most Sinkhorn sweeps of the warm-up (default 2000; 0: no warm-up; never
      more than `max_steps`).
    - `warmup_tol`: the warm-up stops once the marginal error is below this (default 1e-3).
    - `warmup_decay`: the warm-up's epsilon-scaling factor per 10 sweeps (default 0.5; smaller
      if the target epsilon would otherwise not be reached within 3/4 of `warmup`).
    - `k`: entries kept per row and per column of the plan in the Hessian (default 32).
    - `cg_tol`, `cg_max_steps`: the tightest relative tolerance and the most iterations of
      each CG solve (`js.linear.CG` with a Jacobi preconditioner, on the Schur complement of
      the Newton system; a solve that stops at `cg_max_steps` still gives a direction, which
      the line search judges).
    - `forcing`: inexact Newton; each CG solve stops at relative residual
      `max(cg_tol, forcing × min(0.1, max(‖∇L‖₁, 0.1 tol/‖∇L‖₁)))` (default 1; 0: always
      `cg_tol`): quadratic convergence, without solving more accurately than reaching `tol`
      needs.
    - `max_backtracks`: the most halvings of the step in the line search.
    - `max_shift`: a Newton step moves no potential by more than this × epsilon (default 30):
      at small epsilon the Hessian is nearly singular along shifts of weakly coupled blocks.
    - `floor`: the Hessian's diagonal is floored at this × the target marginal (default 0).

    `sol.stats` has `num_steps` (Sinkhorn sweeps + Newton steps, warm-up included: the SNS
    paper's count), `sinkhorn_steps`, `newton_steps`, `cg_steps` (CG iterations in all).
    Unbalanced problems (`tau_a` or `tau_b` below 1) give `js.RESULTS.invalid_input`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    jax.config.update("jax_enable_x64", True)  # Newton pays off at tolerances beyond float32's
    x = jax.random.uniform(jax.random.PRNGKey(0), (60, 2))
    y = jax.random.uniform(jax.random.PRNGKey(1), (60, 2))
    geom = js.ot.PointCloud(x, y, epsilon=2e-3)
    sol = js.ot.solve(geom, solver=js.ot.SparseNewton(tol=1e-10))
    assert sol.stats["marginal_error"] < 1e-10
    assert 0 < sol.stats["newton_steps"] < 10
    ```
    """

    tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=2100)
    warmup: int = eqx.field(static=True, default=2000)
    warmup_tol: float | Array = 1e-3
    warmup_decay: float | Array = 0.5
    k: int = eqx.field(static=True, default=32)
    cg_tol: float = eqx.field(static=True, default=1e-10)
    cg_max_steps: int = eqx.field(static=True, default=1000)
    max_backtracks: int = eqx.field(static=True, default=20)
    floor: float | Array = 0.0
    max_shift: float | Array = 30.0
    forcing: float | Array = 1.0

    def __check_init__(self):
        for name in ("max_steps", "k", "cg_max_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SparseNewton `{name}` must be a positive int; got {v!r}.")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"SparseNewton `warmup` must be an int >= 0; got {self.warmup!r}.")
        for name in ("tol", "warmup_tol"):
            v = getattr(self, name)
            if isinstance(v, (int, float)) and not v > 0:
                raise ValueError(f"SparseNewton `{name}` must be positive; got {v!r}.")
        if isinstance(self.warmup_decay, (int, float)) and not 0 < self.warmup_decay < 1:
            raise ValueError(
                f"SparseNewton `warmup_decay` must be in (0, 1); got {self.warmup_decay!r}."
            )

    @property
    def _warmup(self) -> int:
        return min(self.warmup, self.max_steps)

    def _warm_solver(self, problem: OTProblem):
        # Epsilon scaling by `warmup_decay` per 10 sweeps, faster if that is what reaching the
        # target epsilon within three quarters of the `warmup` budget takes.
        stages = max(1, (3 * self._warmup) // (4 * _CHECK_EVERY))
        eps0 = jnp.maximum(jax.lax.stop_gradient(mean_cost(problem.geom)), problem.epsilon)
        decay = jnp.minimum(self.warmup_decay, (problem.epsilon / eps0) ** (1.0 / stages))
        return Sinkhorn(
            tol=self.warmup_tol,
            max_steps=max(self._warmup, 1),
            epsilon_scaling=EpsilonScaling(decay=decay),
            check_every=_CHECK_EVERY,
        )

    @staticmethod
    def _iterations(state: _SNSState):
        return state.warm.sweeps + state.fallback_sweeps + state.newton_steps

    # ---- the solver protocol ---------------------------------------------------------------
    def init(self, problem: OTProblem, y, options):
        f, g = y
        zero = jnp.array(0, jnp.int32)
        inf = jnp.asarray(jnp.inf, f.dtype)
        return _SNSState(
            warm=self._warm_solver(problem).init(problem, y, options),
            in_warmup=jnp.array(self._warmup > 0),
            err=inf,
            real=jnp.array(False),
            best_f=f,
            best_g=g,
            best_err=inf,
            fallback_sweeps=zero,
            newton_steps=zero,
            cg_steps=zero,
            failed_newton=zero,
        )

    def terminate(self, problem: OTProblem, y, state: _SNSState):
        converged = state.real & (state.err <= self.tol_value())
        # `err` is inf only when a step's plan was not finite (or before any step).
        nonfinite = (self._iterations(state) > 0) & ~jnp.isfinite(state.err)
        unbalanced = problem.balanced < 1
        done = converged | nonfinite | unbalanced | (self._iterations(state) >= self.max_steps)
        result = RESULTS.where(
            converged,
            RESULTS.successful,
            RESULTS.where(nonfinite, RESULTS.nonfinite, RESULTS.max_steps_reached),
        )
        return done, RESULTS.where(unbalanced, RESULTS.invalid_input, result)

    def error(self, problem: OTProblem, y, state: _SNSState):
        # The error of the point `postprocess` returns (the best seen, if the last is worse);
        # stopped before the warm-up reached the target epsilon: measured (one pass).
        err = jnp.minimum(state.err, state.best_err)
        f, g = y
        return jax.lax.cond(
            state.real, lambda: err, lambda: problem.marginal_error(f, g).astype(err.dtype)
        )

    def postprocess(self, problem: OTProblem, y, state: _SNSState):
        # Never end on a worse point than the best one seen (e.g. the warm start).
        back = state.best_err < state.err
        f, g = y
        f = jnp.where(back, state.best_f, f)
        g = jnp.where(back, state.best_g, g)
        y, _ = super().postprocess(problem, (f, g), state)
        sweeps = state.warm.sweeps + state.fallback_sweeps
        return y, {
            "num_steps": sweeps + state.newton_steps,
            "sinkhorn_steps": sweeps,
            "newton_steps": state.newton_steps,
            "cg_steps": state.cg_steps,
        }

    def _newton(self, f, g, problem: OTProblem, tol):
        """One Newton step, or a Sinkhorn sweep if its line search fails: `(f, g, err, ok, cg)`."""
        cost = problem.geom.cost_matrix
        eps = problem.epsilon
        n, m = cost.shape
        dtype = f.dtype
        logp, p, l0, err0 = _plan_terms(f, g, cost, eps, problem)
        r, c = p.sum(1), p.sum(0)
        grad = (
            jnp.where(problem.mask_a, problem.a - r, 0.0),
            jnp.where(problem.mask_b, problem.b - c, 0.0),
        )
        # Static-shape sparsification: the k largest entries of each row and of each
        # column (their union), kept as a dense masked matrix: at these sizes a dense
        # matrix-vector product costs about what a Sinkhorn sweep does, where gathers and
        # scatters of k·n indices are several times slower on CPU. (`k` above the number of
        # points keeps every entry.)
        kr, kc = min(self.k, m), min(self.k, n)
        row_th, col_th = _kth_thresholds(logp, kr, kc)
        pk = jnp.where((logp >= row_th[:, None]) | (logp >= col_th[None, :]), p, 0.0)
        ridge = 1e-12 * jnp.maximum(jnp.max(r), jnp.max(c)) + jnp.finfo(dtype).tiny
        # Far from the optimum a row or column can carry almost no mass (P1 ≪ a), and the
        # Newton step along it, ε(a − P1)/P1, is then enormous; flooring the diagonal at a
        # fraction of the target mass bounds it (near the optimum P1 ≈ a: no change).
        diag_f = jnp.maximum(r, self.floor * problem.a) + ridge
        diag_g = jnp.maximum(c, self.floor * problem.b) + ridge

        # Remove any component along the null direction (1, −1) of the exact Hessian.
        shift = (jnp.sum(grad[0]) - jnp.sum(grad[1])) / (n + m)
        rf, rg = eps * (grad[0] - shift), eps * (grad[1] + shift)
        # Eliminate the f block exactly (its diagonal is trivial to invert) and solve the
        # Schur complement S = diag(c) − P̃ᵀ diag(r)⁻¹ P̃ (symmetric positive definite: the
        # sparsified matrix is diagonally dominant) by Jacobi-preconditioned CG.
        inv_f = 1.0 / diag_f
        s_diag = diag_g - jnp.sum(pk * pk * inv_f[:, None], axis=0)
        s_diag = jnp.maximum(s_diag, ridge)

        # The transpose is stored on CPU, where the product with `pk.T` is several times
        # slower (`stores_transpose`); elsewhere it is not (half the memory).
        pkt = transposed(pk)

        def schur(v):
            return diag_g * v - t_matvec(pk, pkt, inv_f * (pk @ v))

        rhs_s = rg - t_matvec(pk, pkt, inv_f * rf)
        # Inexact Newton (forcing term η = min(0.1, ‖∇L‖₁), which keeps the local quadratic
        # convergence): solve to that relative residual, never tighter than `cg_tol`.
        gnorm = jnp.sum(jnp.abs(grad[0])) + jnp.sum(jnp.abs(grad[1]))
        # No oversolving: a relative residual of η leaves a gradient of about η‖∇L‖₁, so near
        # the end η = 0.1 × tol/‖∇L‖₁ is all that reaching `tol` takes.
        eta = jnp.maximum(jnp.minimum(0.1, gnorm), 0.1 * tol / gnorm)
        rtol = jnp.maximum(self.cg_tol, jnp.minimum(0.1, eta) * self.forcing)
        rtol = jnp.where(self.forcing > 0, rtol, self.cg_tol)
        cg = CG(
            tol=rtol,
            max_steps=self.cg_max_steps,
            preconditioner=JacobiPreconditioner(s_diag),
        )
        # An unconverged solve still gives a direction: the line search judges it.
        out = linear_solve(schur, rhs_s, solver=cg, throw=False)
        dg, iters = out.value, out.stats["num_steps"]
        df = inv_f * (rf - pk @ dg)
        df = jnp.where(problem.mask_a, df, 0.0)
        dg = jnp.where(problem.mask_b, dg, 0.0)
        # At small ε the plan nearly splits into blocks that exchange almost no mass; the
        # Hessian is then nearly singular along "shift one block" directions and the Newton
        # step along them is enormous although a shift of a few ε is what is needed. Cap the
        # step at `max_shift` × ε per coordinate before the line search.
        size = jnp.maximum(jnp.max(jnp.abs(df)), jnp.max(jnp.abs(dg)))
        shrink = jnp.minimum(1.0, self.max_shift * eps / jnp.maximum(size, jnp.finfo(dtype).tiny))
        df, dg = shrink * df, shrink * dg
        slope = jnp.sum(grad[0] * df) + jnp.sum(grad[1] * dg)

        # Backtracking (Armijo) line search on the dual; each trial is one pass of exp, whose
        # marginals give the new error.
        def trial(t):
            _, _, lt, err_t = _plan_terms(f + t * df, g + t * dg, cost, eps, problem)
            return lt, err_t

        def accept(t, out):
            lt, err_t = out
            # Near the optimum the dual's increase (~ε‖∇L‖²) falls below its rounding error,
            # and the marginal error, which the step must then reduce, is the test instead.
            lost = t * slope <= 64 * jnp.finfo(dtype).eps * jnp.abs(l0)
            ok = (lt >= l0 + 1e-4 * t * slope) | (lost & (err_t < err0))
            return ok & jnp.isfinite(lt)

        t, (_, err_t), ok, _ = backtracking(
            trial, accept, jnp.array(1.0, dtype), self.max_backtracks
        )
        ok = ok & (slope > 0) & jnp.isfinite(slope)

        # A failed Newton step falls back to a Sinkhorn sweep.
        f1, g1, err = jax.lax.cond(
            ok, lambda: (f + t * df, g + t * dg, err_t), lambda: _sweep(f, g, problem)
        )
        return f1, g1, err, ok, iters

    def step(self, problem: OTProblem, y, state: _SNSState):
        f, g = y
        warm_solver = self._warm_solver(problem)
        false, zero = jnp.array(False), jnp.array(0, jnp.int32)

        def warm_up():
            (f1, g1), warm = warm_solver.step(problem, y, state.warm)
            # Before the last epsilon stage the warm-up's error is not the problem's.
            real = warm.epsK <= problem.epsilon
            done, _ = warm_solver.terminate(problem, (f1, g1), warm)
            return f1, g1, warm.err, real, warm, ~done, false, false, zero

        def newton():
            f1, g1, err, ok, iters = self._newton(f, g, problem, self.tol_value())
            return f1, g1, err, jnp.array(True), state.warm, false, ok, ~ok, iters

        def sweep():
            # After three failed Newton steps in a row, one plain sweep before trying again.
            f1, g1, err = _sweep(f, g, problem)
            return f1, g1, err, jnp.array(True), state.warm, false, false, false, zero

        branch = jnp.where(state.in_warmup, 0, jnp.where(state.failed_newton < 3, _NEWTON, _SWEEP))
        f1, g1, err, real, warm, in_warmup, newton_ok, failed, iters = jax.lax.switch(
            branch, (warm_up, newton, sweep)
        )
        f1, g1 = problem.normalise(f1, g1)
        improved = real & (err < state.best_err)
        newton_phase = (branch > 0).astype(jnp.int32)
        state = _SNSState(
            warm=warm,
            in_warmup=in_warmup,
            err=err,
            real=real,
            best_f=jnp.where(improved, f1, state.best_f),
            best_g=jnp.where(improved, g1, state.best_g),
            best_err=jnp.where(improved, err, state.best_err),
            fallback_sweeps=state.fallback_sweeps + newton_phase - newton_ok.astype(jnp.int32),
            newton_steps=state.newton_steps + newton_ok.astype(jnp.int32),
            cg_steps=state.cg_steps + iters,
            failed_newton=jnp.where(failed, state.failed_newton + 1, 0),
        )
        return (f1, g1), state
