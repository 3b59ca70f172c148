"""`OTSolution`: what `js.ot.solve` returns."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from .._solution import Solution
from ._geometry import plan_dot_cost
from ._problem import OTProblem


class OTSolution(Solution):
    """The solution of an entropic OT problem: a `js.Solution` whose `value` is the pair of
    potentials `(f, g)`.

    Everything here is differentiable (implicitly by default) with respect to the geometry
    (points, cost matrix, epsilon) and the weights.

    **Attributes:**

    - `f`, `g`: the dual potentials; the plan is `P_ij = exp((f_i + g_j − C_ij)/ε)`. In the
      balanced case they are normalised so that `⟨a, f⟩ = ⟨b, g⟩`. Zero-weight points have
      potential 0 (they carry no mass).
    - `value`: `(f, g)`.
    - `problem`: the `OTProblem` solved (`geom`, `a`, `b`, `tau_a`, `tau_b`, `epsilon`).
    - `result`: a `js.RESULTS` member; `stats`: `num_steps` (iterations: sweeps and Newton
      steps), `marginal_error`, and the solver's own counts. (`state` is not kept: Sinkhorn's
      holds the `n × m` kernel; warm-start with
      `init=(sol.f, sol.g)` instead.)

    **Properties and methods:** `plan` (materialised `n × m`), `apply(v, axis=1)` (`P v`
    without materialising; `axis=0` gives `Pᵀ v`), `marginals`, `transport_cost` (`⟨P, C⟩`),
    `reg_cost` (the regularised objective, `⟨C, P⟩ + ε KL(P | a⊗b)` plus the KL marginal
    terms when unbalanced).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (20, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (20, 2))
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.1))
    v = jnp.arange(20.0)
    assert jnp.allclose(sol.apply(v), sol.plan @ v)          # P v without forming P
    assert jnp.allclose(sol.apply(v, axis=0), sol.plan.T @ v)
    assert sol.reg_cost >= sol.transport_cost - 1e-9         # the KL term is >= 0
    assert isinstance(sol, js.Solution) and sol.value[0] is sol.f
    ```
    """

    problem: OTProblem = eqx.field(kw_only=True)

    @property
    def f(self) -> Array:
        return self.value[0]

    @property
    def g(self) -> Array:
        return self.value[1]

    @property
    def a(self):
        return self.problem.a

    @property
    def b(self):
        return self.problem.b

    @property
    def geom(self):
        return self.problem.geom

    @property
    def epsilon(self):
        return self.problem.epsilon

    @property
    def plan(self) -> Array:
        fm, gm = self.problem.masked(self.f, self.g)
        return self.geom.kernel(fm, gm, self.epsilon)

    def apply(self, v: Array, axis: int = 1) -> Array:
        """`P v` (`axis=1`, `v` of length `m`, or `(m, k)`) or `Pᵀ v` (`axis=0`), never
        materialising `P` when the geometry is blockwise."""
        if axis not in (0, 1):
            raise ValueError(f"`axis` must be 0 (Pᵀ v) or 1 (P v); got {axis!r}.")
        n, m = self.geom.shape
        v = jnp.asarray(v)
        want = m if axis == 1 else n
        if v.shape[:1] != (want,):
            raise ValueError(
                f"apply(v, axis={axis}) needs v with leading dimension {want}; got {v.shape}."
            )
        fm, gm = self.problem.masked(self.f, self.g)
        return self.geom.apply_kernel(fm, gm, self.epsilon, v, axis)

    @property
    def marginals(self) -> tuple[Array, Array]:
        return self.problem.marginals(self.f, self.g)

    @property
    def transport_cost(self) -> Array:
        fm, gm = self.problem.masked(self.f, self.g)
        return plan_dot_cost(self.geom, fm, gm, self.epsilon)

    @property
    def reg_cost(self) -> Array:
        """The regularised objective, computed as the dual at the potentials. Its first
        derivative is the envelope theorem's (the dual is stationary in `(f, g)` at the
        solution, so only its explicit dependence on the geometry, weights and ε counts): no
        linear solve, in the compiled program or at run time. Higher derivatives still see the
        potentials' implicit dependence."""
        return _dual_at_optimum(self.problem, self.f, self.g)


@eqx.filter_custom_jvp
def _dual_at_optimum(problem, f, g):
    return problem.dual(f, g)


@_dual_at_optimum.def_jvp
def _dual_at_optimum_jvp(primals, tangents):
    problem, f, g = primals
    t_problem = tangents[0]
    if t_problem is None:  # only the potentials vary: the dual is stationary in them
        return problem.dual(f, g), jnp.zeros_like(problem.dual(f, g))
    return eqx.filter_jvp(lambda p: p.dual(f, g), (problem,), (t_problem,))
