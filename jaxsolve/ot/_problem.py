"""`OTProblem`: a geometry with its marginals, and THE optimality function of entropic OT.

Every OT solver (Sinkhorn, Sinkhorn–Newton–Sparse, ...) finds potentials `y = (f, g)` that
zero `OTProblem.optimality`; `ImplicitAdjoint` differentiates exactly that function, so every
solver has the same derivative. The family's default tolerance, the default linear solver of
the implicit derivative and the value checks of the data live here too, once.

Convention: the plan is `P_ij = exp((f_i + g_j − C_ij)/ε)`, the problem is

    min_P ⟨C, P⟩ + ε KL(P | a⊗b) + ρ_a KL(P1 | a) + ρ_b KL(Pᵀ1 | b),

with `ρ = ε τ/(1 − τ)` (`τ = 1`: that marginal is a hard constraint). Points of zero weight
have their potential set to 0 and are masked out of the plan.
"""

from typing import ClassVar

import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array

from .._adjoint import ReportedSolver
from .._problem import HESSIAN_TAGS, AbstractProblem, default_tol
from .._solution import RESULTS
from ..linear import CG
from ._geometry import AbstractGeometry


def _xlogx_safe_log(a):
    return jnp.log(jnp.where(a > 0, a, 1.0))


@jax.custom_jvp
def _dense_marginals(f, g, C, eps):
    P = jnp.exp((f[:, None] + g[None, :] - C) / eps)
    return jnp.sum(P, axis=1), jnp.sum(P, axis=0)


@_dense_marginals.defjvp
def _dense_marginals_jvp(primals, tangents):
    # The derivative in (f, g) as two matrix-vector products with the plan (BLAS, fast in
    # the CG iterations of the implicit derivative) instead of an elementwise n×m pass each.
    f, g, C, eps = primals
    df, dg, dC, deps = tangents
    z = f[:, None] + g[None, :] - C
    P = jnp.exp(z / eps)
    r, c = jnp.sum(P, axis=1), jnp.sum(P, axis=0)
    PdC = P * dC
    Pz = jnp.where(P > 0, P * jnp.where(P > 0, z, 0.0), 0.0)
    dr = (r * df + P @ dg - jnp.sum(PdC, axis=1)) / eps - deps * jnp.sum(Pz, axis=1) / eps**2
    dc = (df @ P + c * dg - jnp.sum(PdC, axis=0)) / eps - deps * jnp.sum(Pz, axis=0) / eps**2
    return (r, c), (dr, dc)


# The most iterations of the implicit derivative's linear solve (`js.linear.CG`; its
# tolerance is in `OTProblem.adjoint_solver`).
ADJOINT_MAX_STEPS = 2000


def bad_weights(a: Array, b: Array, balanced: bool | Array = True) -> Array:
    """Whether the marginals are invalid: a negative or NaN weight, a zero or non-finite mass,
    or (where `balanced`) masses that differ beyond rounding. Shared by every OT problem."""
    mass_a, mass_b = jnp.sum(a), jnp.sum(b)
    rtol = 100 * jnp.finfo(a.dtype).eps
    bad = jnp.any(~(a >= 0)) | jnp.any(~(b >= 0))
    bad = bad | ~jnp.isfinite(mass_a) | ~jnp.isfinite(mass_b) | (mass_a <= 0) | (mass_b <= 0)
    unequal = jnp.abs(mass_a - mass_b) > rtol * jnp.maximum(mass_a, mass_b)
    return bad | (balanced & unequal)


def verdict(bad: Array, nonfinite: Array) -> RESULTS:
    """`invalid_input` where `bad`, else `nonfinite` where `nonfinite`, else `successful`."""
    return RESULTS.where(  # pyright: ignore[reportReturnType]
        bad, RESULTS.invalid_input, RESULTS.where(nonfinite, RESULTS.nonfinite, RESULTS.successful)
    )


class OTProblem(AbstractProblem):
    """A (possibly unbalanced) entropic OT problem: what OT solvers receive.

    **Attributes:** `geom`, `a`, `b` (weights), `tau_a`, `tau_b` (in `(0, 1]`, 1 = balanced),
    `epsilon` (the regularisation actually used), and `checked`: the verdict of `validate()`
    on the data as the user gave them, when `js.ot.solve` replaced invalid values by harmless
    stand-ins (uniform weights, `ε = 1`) so that the solve runs on something sane (`None`:
    `validate()` checks the fields themselves). `js.ot.solve` builds it; solvers read it.

    As a `js.AbstractProblem`: `optimality(y)` is THE optimality function of entropic OT
    (the implicit derivative differentiates it), its Jacobian is tagged symmetric positive
    semidefinite, `adjoint_solver` is matrix-free CG, the error measure is
    `stats["marginal_error"]` and `default_tol(dtype)` is the family's default tolerance.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    sol = js.ot.solve(js.ot.Geometry(jnp.array([[0.0, 1.0], [1.0, 0.0]]), epsilon=0.1))
    problem = sol.problem
    r, c = problem.marginals(sol.f, sol.g)
    assert jnp.allclose(r, problem.a, atol=1e-6) and jnp.allclose(c, problem.b, atol=1e-6)
    assert problem.marginal_error(sol.f, sol.g) < 1e-6
    ```
    """

    geom: AbstractGeometry
    a: Array
    b: Array
    tau_a: Array
    tau_b: Array
    epsilon: Array
    checked: RESULTS | None = None

    error_name: ClassVar[str] = "marginal_error"
    tags: ClassVar[frozenset] = HESSIAN_TAGS

    # ---- the AbstractProblem interface -------------------------------------------------------
    @staticmethod
    def default_tol(dtype) -> float:
        """The OT family's default `tol` on the L1 marginal error: 1e-6 in float64, 1e-4 in
        float32. (In float32 Sinkhorn's error floor on ordinary clouds is 5e-7 to 1e-6 at
        moderate epsilon but up to about 1.5e-5 at epsilon = 1e-3 × the mean cost: 1e-4 is
        reached everywhere.)"""
        return default_tol(dtype, 1e-6, 1e-4)

    def optimality(self, y):
        """THE optimality function of entropic OT (see `js.ot.ot_optimality`)."""
        return ot_optimality(y, self)

    def adjoint_solver(self, y) -> lx.AbstractLinearSolver:
        """Matrix-free CG (`js.linear.CG`: the Jacobian of `optimality` is symmetric positive
        definite) to a relative residual the dtype reaches: 1e-5 in float32, 1e-10 in
        float64. Not lineax's CG: its breakdown test compares `pᵀAp` with
        `100·n·eps_mach·rᵀr` in absolute terms, and the OT Jacobian's eigenvalues are of
        order `1/(n ε)` (and its condition grows as ε falls), so in float32 every solve
        with a few hundred points was declared a breakdown (NaN); jaxsolve's CG stops only
        on a curvature `pᵀAp ≤ 0`."""
        tol = default_tol(self.a.dtype, 1e-10, 1e-5)
        # Reported (never raising): the balanced OT Jacobian is only semidefinite (the gauge
        # f + c, g − c), and in float32 CG meets a vanishing curvature along that direction or
        # its iteration cap at the rounding floor with an accurate iterate; that iterate is the
        # derivative (within 1e-4 of float64 references, benchmarks/RESULTS-ot-scale.md).
        return ReportedSolver(CG(tol=tol, max_steps=ADJOINT_MAX_STEPS))

    def invalid(self):
        """`(bad_values, nonfinite_cost)`: negative/NaN weights or zero mass, unequal masses
        when balanced, `ε ≤ 0` or not finite, `τ` outside `(0, 1]`; NaN/inf in the cost."""
        eps = self.epsilon
        bad = bad_weights(self.a, self.b, (self.tau_a == 1) & (self.tau_b == 1))
        bad = bad | ~(eps > 0) | ~jnp.isfinite(eps)
        bad = bad | ~((self.tau_a > 0) & (self.tau_a <= 1) & (self.tau_b > 0) & (self.tau_b <= 1))
        return bad, ~self.geom.all_finite()

    def validate(self) -> RESULTS:
        """`invalid_input` for bad weights, masses, `ε` or `τ`; `nonfinite` for NaN/inf in the
        cost (or points); else `successful`."""
        if self.checked is not None:
            return self.checked
        return verdict(*self.invalid())

    def with_stand_ins(self) -> "OTProblem":
        """This problem with its verdict recorded in `checked` and, if its values are invalid,
        uniform weights, `ε = 1` and `τ = 1` in their place (the solve then runs on a sane
        problem and the result says `invalid_input`)."""
        checked = self.validate()
        bad = checked == RESULTS.invalid_input
        n, m = self.geom.shape
        return OTProblem(
            self.geom,
            jnp.where(bad, 1.0 / n, self.a),
            jnp.where(bad, 1.0 / m, self.b),
            jnp.where(bad, 1.0, self.tau_a),
            jnp.where(bad, 1.0, self.tau_b),
            jnp.where(bad, 1.0, self.epsilon),
            checked,
        )

    # ---- small helpers shared by solvers -------------------------------------------------
    @property
    def mask_a(self):
        return self.a > 0

    @property
    def mask_b(self):
        return self.b > 0

    @property
    def log_a(self):
        return _xlogx_safe_log(self.a)

    @property
    def log_b(self):
        return _xlogx_safe_log(self.b)

    @property
    def balanced(self):
        """1.0 when both marginals are hard constraints (the dual then has a gauge freedom)."""
        return ((self.tau_a == 1) & (self.tau_b == 1)).astype(self.a.dtype)

    def lam(self, eps=None):
        """`1/ρ = (1 − τ)/(ε τ)` for each side (0 when balanced)."""
        eps = self.epsilon if eps is None else eps
        return (1 - self.tau_a) / (eps * self.tau_a), (1 - self.tau_b) / (eps * self.tau_b)

    def masked(self, f, g):
        """`f`, `g` with `-inf` at zero-weight points (so they drop out of the plan)."""
        return jnp.where(self.mask_a, f, -jnp.inf), jnp.where(self.mask_b, g, -jnp.inf)

    def targets(self, f, g, eps=None):
        """The marginals the plan must have at a solution: `a·exp(−(f − ε log a)/ρ_a)`, ...
        (just `a`, `b` in the balanced case)."""
        eps = self.epsilon if eps is None else eps
        lam_a, lam_b = self.lam(eps)
        ta = self.a * jnp.exp(-lam_a * (f - eps * self.log_a))
        tb = self.b * jnp.exp(-lam_b * (g - eps * self.log_b))
        return jnp.where(self.mask_a, ta, 0.0), jnp.where(self.mask_b, tb, 0.0)

    def marginals(self, f, g, eps=None):
        """Row and column sums of the plan `(P1, Pᵀ1)`."""
        eps = self.epsilon if eps is None else eps
        fm, gm = self.masked(f, g)
        n, m = self.geom.shape
        dtype = self.a.dtype
        if self.geom.is_dense:
            return _dense_marginals(fm, gm, self.geom.cost_matrix, jnp.asarray(eps, dtype))
        r = self.geom.apply_kernel(fm, gm, eps, jnp.ones(m, dtype), 1)
        c = self.geom.apply_kernel(fm, gm, eps, jnp.ones(n, dtype), 0)
        return r, c

    def marginal_error(self, f, g, eps=None):
        """L1 error of the first-order conditions: `‖P1 − a‖₁ + ‖Pᵀ1 − b‖₁` when balanced."""
        r, c = self.marginals(f, g, eps)
        ta, tb = self.targets(f, g, eps)
        return jnp.sum(jnp.abs(r - ta)) + jnp.sum(jnp.abs(c - tb))

    def normalise(self, f, g):
        """Canonical gauge: in the balanced case shift `(f + s, g − s)` so that
        `⟨a, f⟩ = ⟨b, g⟩` (the plan does not change). A no-op when unbalanced."""
        kappa = jnp.sum(self.a * f) - jnp.sum(self.b * g)
        s = -kappa / (jnp.sum(self.a) + jnp.sum(self.b))
        s = self.balanced * s
        f = jnp.where(self.mask_a, f + s, 0.0)
        g = jnp.where(self.mask_b, g - s, 0.0)
        return f, g

    def dual(self, f, g):
        """The dual objective at `(f, g)`; at the solution it equals the primal value
        `⟨C, P⟩ + ε KL(P | a⊗b) + ρ_a KL(P1 | a) + ρ_b KL(Pᵀ1 | b)`."""
        eps = self.epsilon
        lam_a, lam_b = self.lam()
        ft = jnp.where(self.mask_a, f - eps * self.log_a, 0.0)
        gt = jnp.where(self.mask_b, g - eps * self.log_b, 0.0)

        def side(w, pot, lam):
            lin = jnp.sum(w * pot)
            lam_safe = jnp.where(lam > 0, lam, 1.0)
            kl = -jnp.sum(w * jnp.expm1(-lam_safe * pot)) / lam_safe
            return jnp.where(lam > 0, kl, lin)

        r, _ = self.marginals(f, g)
        mass = jnp.sum(r)
        return (
            side(self.a, ft, lam_a)
            + side(self.b, gt, lam_b)
            - eps * (mass - jnp.sum(self.a) * jnp.sum(self.b))
        )


def ot_optimality(y, problem: OTProblem):
    """THE optimality function of entropic OT, zero exactly at the (canonical) solution.

    `F_f = P1 − target_a + β a κ/ε`, `F_g = Pᵀ1 − target_b − β b κ/ε` with
    `κ = ⟨a, f⟩ − ⟨b, g⟩` and `β = 1` in the balanced case (else 0). Its Jacobian in `(f, g)`
    is `(1/ε)([[diag P1, P], [Pᵀ, diag Pᵀ1]] + w wᵀ) + diag(unbalanced terms)` with
    `w = (a, −b)`: symmetric positive definite. The `w wᵀ` term removes the null direction
    `(1, −1)` of the balanced dual (it fixes the gauge `κ = 0` that solvers return), so
    matrix-free CG solves it. Zero-weight points get `F = f · mean(a)/ε` (their potential is 0).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    sol = js.ot.solve(js.ot.Geometry(jnp.array([[0.0, 2.0], [1.0, 0.5]]), epsilon=0.2),
                      solver=js.ot.Sinkhorn(tol=1e-6))
    Ff, Fg = js.ot.ot_optimality((sol.f, sol.g), sol.problem)
    assert jnp.abs(Ff).max() < 1e-5 and jnp.abs(Fg).max() < 1e-5
    assert sol.problem.optimality(sol.value)[0].shape == (2,)   # the same function
    ```
    """
    f, g = y
    eps = problem.epsilon
    r, c = problem.marginals(f, g)
    ta, tb = problem.targets(f, g)
    kappa = jnp.sum(problem.a * f) - jnp.sum(problem.b * g)
    beta = problem.balanced / eps
    Ff = r - ta + beta * problem.a * kappa
    Fg = c - tb - beta * problem.b * kappa
    Ff = jnp.where(problem.mask_a, Ff, f * jnp.mean(problem.a) / eps)
    Fg = jnp.where(problem.mask_b, Fg, g * jnp.mean(problem.b) / eps)
    return Ff, Fg
