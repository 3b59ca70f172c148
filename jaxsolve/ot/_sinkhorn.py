"""`Sinkhorn`: log-domain stable Sinkhorn with a fast kernel mode (absorption)."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._solution import RESULTS
from ._acceleration import AbstractSinkhornAcceleration, NoAcceleration
from ._anderson import AndersonSinkhorn
from ._base import AbstractOTSolver
from ._epsilon_scaling import EpsilonScaling
from ._geometry import mean_cost
from ._problem import OTProblem


def stores_transpose() -> bool:
    """Whether SparseNewton keeps its sparsified plan's transpose in memory next to it
    (decided at trace time from `jax.default_backend()`, the backend jitted code runs on): on
    XLA's CPU backend a product written `P.T @ u` transposes `P` on every call, so the copy is
    made once per Newton step; GPU and TPU read either layout at full speed. Sinkhorn's kernel
    mode never stores `Kᵀ`: it computes `Kᵀ u` as `u @ K`, which runs at `K v`'s speed on
    every backend (see `Sinkhorn._build_kernel`)."""
    return jax.default_backend() == "cpu"


def transposed(K: Array) -> Array | None:
    """`Kᵀ` as a stored copy where `stores_transpose()` (an explicit copy, not a lazy
    transpose XLA could fold back into the product), else `None` (`Kᵀ u` is then computed
    from `K`: see `t_matvec`)."""
    if not stores_transpose():
        return None
    return jax.lax.optimization_barrier(K.T)


def t_matvec(K: Array, KT: Array | None, u: Array) -> Array:
    """`Kᵀ u`, from the stored transpose when there is one."""
    return u @ K if KT is None else KT @ u


class _SinkhornState(eqx.Module):
    K: Array | None  # kernel exp((fK + gK − C)/epsK) (kernel mode only; never its transpose)
    fK: Array
    gK: Array
    epsK: Array  # the epsilon of the last step (and of the kernel)
    eps0: Array  # first epsilon of the scaling schedule
    outer: Array  # loop steps done
    sweeps: Array  # Sinkhorn sweeps done
    at_target: Array  # number of checks made at the target epsilon
    err: Array  # marginal error after the last step, at epsK
    acc: Any  # the acceleration's state
    fallbacks: Array  # how many times kernel mode fell back to the log domain


def _absorb_threshold(dtype):
    # |log u| above this triggers a rebuild of the kernel with u absorbed into the potentials.
    return 30.0 if jnp.finfo(dtype).bits <= 32 else 200.0


def _relax(old, new, omega):
    if isinstance(omega, float) and omega == 1.0:
        return new
    return (1 - omega) * old + omega * new


class Sinkhorn(AbstractOTSolver):
    """Sinkhorn's algorithm for entropic (and unbalanced) OT, stable at small epsilon.

    Each sweep updates `f ← ε log a − τ_a ε LSE_j((g_j − C_ij)/ε)` then the same for `g`
    (log domain: never overflows, float32 works at small ε). On a dense geometry the default
    `kernel=True` runs the same iteration with the matrix `K̃ = exp((f̃ + g̃ − C)/ε)` built at
    the current potentials and scalings `u, v` absorbed into the potentials whenever they
    grow (Schmitzer 2019): a sweep then costs two matrix–vector products instead of two
    passes of `exp` over `n × m`. If the kernel iteration ever produces a non-finite value
    the step is redone in the log domain, so stability is that of the log domain.
    Kernel mode holds `K̃` alone (`K̃ᵀ u` is computed as `u @ K̃`, at the speed of `K̃ v`).

    The marginal error is checked every `check_every` sweeps (one extra product each); each
    loop step does `check_every` sweeps (fewer in the last one if `max_steps` runs out).
    `sol.stats` has `num_steps` (sweeps), `marginal_error`, `fallbacks` (kernel-mode steps
    redone in the log domain) and `omega` (the final relaxation).

    **Arguments:**

    - `tol`: absolute tolerance on the L1 error of the marginals
      `‖P1 − a‖₁ + ‖Pᵀ1 − b‖₁` (for unbalanced problems, of the first-order conditions) at the
      target epsilon; `None` (default): the OT family's, 1e-6 in float64 and 1e-4 in float32.
      Annealing stages never end the solve: only the target epsilon's error counts.
    - `max_steps`: the most sweeps (`stats["num_steps"]` counts sweeps too).
    - `epsilon_scaling`: `js.ot.EpsilonScaling(decay=0.7)` (default: annealing from the
      mean cost) or `None` (start at the target epsilon: plain Sinkhorn).
    - `acceleration`: `js.ot.AndersonSinkhorn()` (default), `js.ot.Momentum(...)`
      (over-relaxation), `None` (plain sweeps), or any `js.ot.AbstractSinkhornAcceleration`.
      At small epsilon Anderson cuts the sweeps by one to two orders of magnitude (e.g. 590
      instead of ~18 000 at ε = 0.01, n = 1000).
    - `kernel`: use kernel mode with absorption on dense geometries (default `True`);
      `False` runs every sweep in the log domain. Geometries with `batch_size` always run in
      the log domain, block by block.
    - `check_every`: sweeps between error checks (default 10).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (40, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (30, 2)) + 1.0
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.05), solver=js.ot.Sinkhorn(tol=1e-6))
    assert jnp.allclose(sol.plan.sum(1), 1 / 40, atol=1e-6)
    assert jnp.allclose(sol.plan.sum(0), 1 / 30, atol=1e-6)
    ```
    """

    tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=10_000)
    epsilon_scaling: EpsilonScaling | None = EpsilonScaling(decay=0.7)
    acceleration: AbstractSinkhornAcceleration | None = AndersonSinkhorn()
    kernel: bool = eqx.field(static=True, default=True)
    check_every: int = eqx.field(static=True, default=10)

    def __check_init__(self):
        if isinstance(self.tol, (int, float)) and not self.tol > 0:
            raise ValueError(f"Sinkhorn's `tol` must be positive; got {self.tol!r}.")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int):
            raise ValueError(f"`max_steps` must be a positive int; got {self.max_steps!r}.")
        if self.max_steps < 1:
            raise ValueError(f"`max_steps` must be a positive int; got {self.max_steps!r}.")
        if not isinstance(self.check_every, int) or self.check_every < 1:
            raise ValueError(f"`check_every` must be a positive int; got {self.check_every!r}.")
        if self.epsilon_scaling is not None and not isinstance(
            self.epsilon_scaling, EpsilonScaling
        ):
            raise TypeError("`epsilon_scaling` must be None or js.ot.EpsilonScaling(...).")
        if self.acceleration is not None and not isinstance(
            self.acceleration, AbstractSinkhornAcceleration
        ):
            raise TypeError(
                "`acceleration` must be None, js.ot.AndersonSinkhorn(...), js.ot.Momentum(...) "
                "or another js.ot.AbstractSinkhornAcceleration; got "
                f"{type(self.acceleration).__name__}."
            )

    # ---- helpers ---------------------------------------------------------------------------
    def _acc(self) -> AbstractSinkhornAcceleration:
        return NoAcceleration() if self.acceleration is None else self.acceleration

    def _use_kernel(self, problem: OTProblem) -> bool:
        return self.kernel and problem.geom.is_dense

    def _epsilon(self, problem, eps0, k):
        if self.epsilon_scaling is None:
            return problem.epsilon
        return self.epsilon_scaling.epsilon(problem.epsilon, eps0, k)

    def _build_kernel(self, problem, f, g, eps):
        # `Kᵀ u` is computed as `u @ K` from the one matrix, on every backend. A stored
        # transpose (`transposed`) is slower here: carried through the loop's state and the
        # rebuild `cond`, XLA's CPU layout assignment keeps it column-major and copies it back
        # to row-major every loop step (an n × m transpose per `check_every` sweeps: 1.4-2× the
        # bare sweep, benchmarks/RESULTS-floor.md), while `u @ K` runs at `K v`'s speed.
        fm, gm = problem.masked(f, g)
        return problem.geom.kernel(fm, gm, eps)

    def _live(self, state):
        """Sweeps this step may do when `max_steps` is not a multiple of `check_every` (the
        last step then stops at the budget); `None` when every step does `check_every`."""
        if self.max_steps % self.check_every == 0:
            return None
        return jnp.minimum(self.check_every, self.max_steps - state.sweeps)

    def _fori(self, body, carry, live):
        if live is None:
            return jax.lax.fori_loop(0, self.check_every, body, carry)

        def masked(i, c):
            new = body(i, c)
            return jax.tree_util.tree_map(lambda a, b: jnp.where(i < live, a, b), new, c)

        return jax.lax.fori_loop(0, self.check_every, masked, carry)

    def _log_sweeps(self, problem, f, g, eps, omega, acc_state, active, live=None, count=None):
        geom = problem.geom
        acc = self._acc()
        lim = _absorb_threshold(g.dtype) * eps

        def sweep(_, carry):
            f, g, s = carry
            _, gm = problem.masked(f, g)
            f_new = eps * problem.log_a - problem.tau_a * eps * geom.lse(gm / eps, eps, 1)
            f1 = jnp.where(problem.mask_a, _relax(f, f_new, omega), 0.0)
            fm = jnp.where(problem.mask_a, f1, -jnp.inf)
            g_new = eps * problem.log_b - problem.tau_b * eps * geom.lse(fm / eps, eps, 0)
            g1 = jnp.where(problem.mask_b, _relax(g, g_new, omega), 0.0)
            if active is not False:  # statically off in the kernel's fallback: not compiled
                g1, s = acc.extrapolate(s, g, g1, active, None, lim)
            return f1, g1, s

        if count is None:
            f, g, acc_state = self._fori(sweep, (f, g, acc_state), live)
        else:
            f, g, acc_state = jax.lax.fori_loop(0, count, sweep, (f, g, acc_state))
        if active is False:
            acc_state = acc.forget(acc_state)
        return f, g, problem.marginal_error(f, g, eps), acc_state

    def _kernel_sweeps(self, problem, K, fK, gK, eps, lu, lv, omega, acc_state, active, live):
        ma, mb = problem.mask_a, problem.mask_b
        # log u_new = log a − τ_a log(K̃ v) + (τ_a − 1) fK/ε  (and the same for v)
        ca = problem.log_a + (problem.tau_a - 1) * fK / eps
        cb = problem.log_b + (problem.tau_b - 1) * gK / eps
        acc = self._acc()
        thr = _absorb_threshold(K.dtype)

        def sweep(_, carry):
            lu, lv, _, s = carry
            Kv = K @ jnp.exp(lv)
            lu_new = ca - problem.tau_a * jnp.log(jnp.where(ma, Kv, 1.0))
            lu = jnp.where(ma, _relax(lu, lu_new, omega), 0.0)
            Ku = t_matvec(K, None, jnp.exp(lu))
            lv_new = cb - problem.tau_b * jnp.log(jnp.where(mb, Ku, 1.0))
            lv1 = jnp.where(mb, _relax(lv, lv_new, omega), 0.0)
            # Extrapolate log v (small numbers: precise in float32).
            lv1, s = acc.extrapolate(s, lv, lv1, active, 0.0, thr)
            return lu, jnp.where(mb, lv1, 0.0), Ku, s

        Ku0 = jnp.zeros(K.shape[1], K.dtype)
        lu, lv, Ku, acc_state = self._fori(sweep, (lu, lv, Ku0, acc_state), live)
        u, v = jnp.exp(lu), jnp.exp(lv)
        # The column sums reuse the last sweep's `Kᵀ u` (computed from this very `u`): the
        # check costs one product, `K v`, not two.
        r = u * (K @ v)
        c = v * Ku
        f = jnp.where(ma, fK + eps * lu, 0.0)
        g = jnp.where(mb, gK + eps * lv, 0.0)
        ta, tb = problem.targets(f, g, eps)
        err = jnp.sum(jnp.abs(r - ta)) + jnp.sum(jnp.abs(c - tb))
        return f, g, err, acc_state

    # ---- the solver protocol ---------------------------------------------------------------
    def init(self, problem: OTProblem, y, options):
        f, g = y
        dtype = f.dtype
        if self.epsilon_scaling is None or self.epsilon_scaling.init is None:
            eps0 = jax.lax.stop_gradient(mean_cost(problem.geom))
            eps0 = jnp.maximum(eps0, problem.epsilon)
        else:
            eps0 = jnp.asarray(self.epsilon_scaling.init, dtype)
        eps = self._epsilon(problem, eps0, 0)
        K = self._build_kernel(problem, f, g, eps) if self._use_kernel(problem) else None
        zero = jnp.array(0, jnp.int32)
        return _SinkhornState(
            K=K,
            fK=f,
            gK=g,
            epsK=eps,
            eps0=eps0,
            outer=zero,
            sweeps=zero,
            at_target=zero,
            err=jnp.asarray(jnp.inf, dtype),
            acc=self._acc().init(g),
            fallbacks=zero,
        )

    def step(self, problem: OTProblem, y, state: _SinkhornState):
        f, g = y
        eps = self._epsilon(problem, state.eps0, state.outer)
        acc = self._acc()
        omega = acc.relaxation(state.acc)
        active = eps <= problem.epsilon
        live = self._live(state)
        acc_state = state.acc
        if self._use_kernel(problem):
            thr = _absorb_threshold(f.dtype)
            lu = (f - state.fK) / eps
            lv = (g - state.gK) / eps
            drift = jnp.maximum(jnp.max(jnp.abs(lu)), jnp.max(jnp.abs(lv)))
            rebuild = (eps != state.epsK) | ~(drift <= thr)
            K, fK, gK = jax.lax.cond(
                rebuild,
                lambda: (self._build_kernel(problem, f, g, eps), f, g),
                lambda: (state.K, state.fK, state.gK),
            )
            # The extrapolated log v is relative to gK: re-centre the acceleration's history.
            acc_state = acc.recentre(acc_state, jnp.where(rebuild, (state.gK - gK) / eps, 0.0))
            lu = jnp.where(rebuild, 0.0, lu)
            lv = jnp.where(rebuild, 0.0, lv)
            f1, g1, err, acc1 = self._kernel_sweeps(
                problem, K, fK, gK, eps, lu, lv, omega, acc_state, active, live
            )
            ok = jnp.isfinite(err) & jnp.all(jnp.isfinite(f1)) & jnp.all(jnp.isfinite(g1))
            f1, g1, err, acc_state = jax.lax.cond(
                ok,
                lambda: (f1, g1, err, acc1),
                lambda: self._log_sweeps(problem, f, g, eps, 1.0, acc_state, False, live),
            )
            fallbacks = state.fallbacks + (~ok).astype(jnp.int32)
        else:
            K, fK, gK = state.K, state.fK, state.gK
            f1, g1, err, acc_state = self._log_sweeps(
                problem, f, g, eps, omega, acc_state, active, live
            )
            fallbacks = state.fallbacks
        at_target = state.at_target + active.astype(jnp.int32)
        acc_state = acc.after_check(acc_state, err, state.err, active, at_target, self.check_every)
        done = self.check_every if live is None else live
        new_state = _SinkhornState(
            K=K,
            fK=fK,
            gK=gK,
            epsK=eps,
            eps0=state.eps0,
            outer=state.outer + 1,
            sweeps=state.sweeps + done,
            at_target=at_target,
            err=err,
            acc=acc_state,
            fallbacks=fallbacks,
        )
        return problem.normalise(f1, g1), new_state

    def terminate(self, problem: OTProblem, y, state: _SinkhornState):
        # Only the target epsilon's error counts: an annealing stage never ends the solve.
        started = state.sweeps > 0
        converged = started & (state.epsK <= problem.epsilon) & (state.err <= self.tol_value())
        nonfinite = started & ~jnp.isfinite(state.err)
        done = converged | nonfinite | (state.sweeps >= self.max_steps)
        result = RESULTS.where(
            nonfinite,
            RESULTS.nonfinite,
            RESULTS.where(converged, RESULTS.successful, RESULTS.max_steps_reached),
        )
        return done, result

    def error(self, problem: OTProblem, y, state: _SinkhornState):
        # The state's error is the problem's once at the target epsilon; stopped earlier (by
        # `max_steps`), the returned potentials' true error is measured (one pass).
        f, g = y
        return jax.lax.cond(
            state.epsK <= problem.epsilon,
            lambda: state.err,
            lambda: problem.marginal_error(f, g).astype(state.err.dtype),
        )

    def postprocess(self, problem: OTProblem, y, state: _SinkhornState):
        y, _ = super().postprocess(problem, y, state)
        stats = {
            "num_steps": state.sweeps,
            "fallbacks": state.fallbacks,
            "omega": jnp.asarray(self._acc().relaxation(state.acc), state.err.dtype),
        }
        return y, stats
