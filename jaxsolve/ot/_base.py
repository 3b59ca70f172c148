"""`AbstractOTSolver`: the base class every entropic-OT solver subclasses.

How to add a solver (e.g. Sinkhorn–Newton–Sparse):

1. Subclass `AbstractOTSolver` with fields `tol` (absolute tolerance on the L1 marginal
   error; `None`: the family default, `OTProblem.default_tol`) and `max_steps` (the most
   iterations: Sinkhorn sweeps and Newton steps, warm-up included).
2. Implement the core protocol over the potentials `y = (f, g)` and an `OTProblem`
   (geometry, weights `a`, `b`, `tau_a`, `tau_b`, `epsilon`, and helpers: `marginals`,
   `targets`, `marginal_error`, `masked`, `normalise`, `dual`): `init(problem, y, options)`,
   `step(problem, y, state) -> (y, state)` (one loop step: at least one iteration),
   `terminate(problem, y, state) -> (done, result)` (say done once the marginal error is at
   most `tol`, or with `max_steps_reached` once `max_steps` iterations are spent) and
   `error(problem, y, state)` (the marginal error, read from the state where possible).
   `postprocess` puts the potentials in the canonical gauge (`problem.normalise`), which the
   implicit derivative assumes; call `super().postprocess` when overriding it, and return
   `num_steps` (iterations done) among its stats.

`js.ot.solve` runs it with `js.iterative_solve` (loop bound: `max_steps` loop steps), which
differentiates it through `OTProblem.optimality` (shared by all OT solvers: same optimality
function, same implicit derivative), validates the data and applies `throw`; the result is
wrapped in an `OTSolution`.
"""

import equinox as eqx
from jaxtyping import Array

from .._iterate import AbstractIterativeSolver
from ._problem import OTProblem


class AbstractOTSolver(AbstractIterativeSolver[OTProblem, tuple[Array, Array], object]):
    """Base class of entropic-OT solvers (`js.ot.Sinkhorn`, `js.ot.SparseNewton`, ...).

    Subclasses implement the core protocol (`init`, `step`, `terminate`, `error`) over the
    potentials `y = (f, g)` and an `OTProblem`; see the module docstring of
    `jaxsolve/ot/_base.py`. All of them share `OTProblem.optimality`, hence the same implicit
    derivative. `tol` is on the L1 marginal error, `max_steps` counts iterations (Sinkhorn
    sweeps and Newton steps), and so does `stats["num_steps"]`.

    **Example:** plain Sinkhorn in a dozen lines, run by `js.ot.solve`.

    ```python
    import equinox as eqx, jax, jax.numpy as jnp
    import jaxsolve as js

    class PlainSinkhorn(js.ot.AbstractOTSolver):
        tol: float | None = None
        max_steps: int = eqx.field(static=True, default=10_000)

        def init(self, problem, y, options):
            return jnp.array(0), problem.marginal_error(*y)

        def step(self, problem, y, state):
            f, g = y
            eps, geom = problem.epsilon, problem.geom
            f = eps * problem.log_a - eps * geom.lse(g / eps, eps, 1)
            g = eps * problem.log_b - eps * geom.lse(f / eps, eps, 0)
            return (f, g), (state[0] + 1, problem.marginal_error(f, g))

        def terminate(self, problem, y, state):
            done, result = js.converged_by(state[1], self.tol)
            spent = state[0] >= self.max_steps
            return done | spent, js.RESULTS.where(done, result, js.RESULTS.max_steps_reached)

        def error(self, problem, y, state):
            return state[1]

    x = jax.random.normal(jax.random.PRNGKey(0), (20, 2))
    geom = js.ot.PointCloud(x, x + 1.0, epsilon=0.5)
    sol = js.ot.solve(geom, solver=PlainSinkhorn(tol=1e-6))
    ref = js.ot.solve(geom, solver=js.ot.Sinkhorn(tol=1e-6))
    assert jnp.allclose(sol.plan, ref.plan, atol=1e-6)
    # the same optimality conditions, hence the same implicit derivative
    grad = lambda s: jax.grad(lambda e: js.ot.solve(js.ot.PointCloud(x, x + 1.0, epsilon=e),
                                                   solver=s).reg_cost)(0.5)
    assert jnp.allclose(grad(PlainSinkhorn(tol=1e-6)), grad(js.ot.Sinkhorn(tol=1e-6)), rtol=1e-4)
    ```
    """

    tol: eqx.AbstractVar[float | Array | None]
    max_steps: eqx.AbstractVar[int]

    def tol_value(self) -> float | Array:
        """`tol`, which `js.ot.solve` has filled in (`None` means the family default there)."""
        if self.tol is None:
            raise ValueError(
                f"{type(self).__name__}'s `tol` is None: js.ot.solve fills in the OT family's "
                "default; run through js.iterative_solve, give the solver a `tol`."
            )
        return self.tol

    def postprocess(self, problem: OTProblem, y, state):
        return problem.normalise(*y), {}
