"""Hypergradient estimators: how `∇θ F(θ, y*(θ))` is approximated.

Strategies are objects that carry their own behaviour (`hypergradient(problem, theta, y0,
adjoint0)`): `Implicit(linear_solver)` (implicit function theorem with a chosen linear
solver), `TruncatedNeumann(steps, alpha)` (Lorraine et al.'s Neumann series) and
`Unrolled(truncate)` (backpropagation through the inner iterations, optionally truncated). A
user's subclass of `AbstractEstimator` plugs into `js.bilevel.hypergradient` the same way.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, PyTree

from .._adjoint import ImplicitAdjoint, ReportedSolver, UnrollAdjoint
from .._minimise import AbstractMinimiser
from .._neumann import Neumann
from .._problem import HESSIAN_TAGS, adjoint_cg
from .._solution import RESULTS
from ._problem import HypergradientProblem
from ._solution import Hypergradient


class AbstractEstimator(eqx.Module):
    """Base class of the hypergradient estimators taken by `js.bilevel.hypergradient` (and
    by `js.bilevel.AID` / `ITD`).

    Subclasses implement `hypergradient(problem, theta, y0, adjoint0) -> js.bilevel.Hypergradient`:
    `problem` is the bilevel problem of this call (`problem.outer(θ, y)`, `problem.inner(θ,
    y)`, `problem.inner_grad_y(θ, y)`, `problem.solve_inner(θ, y0, adjoint=...)` — the inner
    `js.minimise` with the user's inner solver settings, never raising), `y0` the inner warm
    start, `adjoint0` a warm start of the adjoint vector or `None`. The method must not raise
    on values: it reports them in `result` (`Hypergradient.from_inner` decides it), and
    `js.bilevel.hypergradient` applies `throw`.

    **Example:** a user-written estimator, the Jacobian-free hypergradient (Fung et al.,
    AAAI 2022), which replaces the inner Hessian by the identity: exact when `∇²_yy G = I`.

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    class JacobianFree(js.bilevel.AbstractEstimator):
        def hypergradient(self, problem, theta, y0, adjoint0=None):
            inner = problem.solve_inner(jax.lax.stop_gradient(theta), y0)
            y = inner.value
            loss, (g_theta, g_y) = jax.value_and_grad(problem.outer, argnums=(0, 1))(theta, y)
            _, vjp = jax.vjp(lambda th: problem.inner_grad_y(th, y), theta)
            return js.bilevel.Hypergradient.from_inner(g_theta - vjp(g_y)[0], loss, inner)

    inner = lambda th, y, _: 0.5 * jnp.sum((y - 2.0 * th) ** 2)     # y* = 2θ, Hessian = I
    outer = lambda th, y, _: 0.5 * jnp.sum(y**2)                     # F(θ, y*) = 2‖θ‖²
    theta = jnp.array([1.0, -0.5])
    hg = js.bilevel.hypergradient(outer, inner, theta, jnp.zeros(2), estimator=JacobianFree(),
                                  inner_solver=js.GradientDescent(0.5))
    assert jnp.allclose(hg.grad, 4.0 * theta, atol=1e-4)
    ```
    """

    @abc.abstractmethod
    def hypergradient(
        self,
        problem: HypergradientProblem,
        theta: PyTree[Array],
        y0: PyTree[Array],
        adjoint0: PyTree[Array] | None = None,
    ) -> Hypergradient:
        """The hypergradient at `theta`, the inner solve started from `y0`."""

    def check_adjoint0(self, adjoint0) -> None:
        """Static check of the `adjoint0` argument (trace time): by default, refused."""
        if adjoint0 is not None:
            raise ValueError(
                f"`adjoint0` warm-starts an implicit estimator; {type(self).__name__} has no "
                "adjoint vector."
            )


def _sub(a, b):
    return jtu.tree_map(jnp.subtract, a, b)


class AbstractImplicitEstimator(AbstractEstimator):
    """An estimator by the implicit function theorem, in adjoint form: solve
    `(∇²_yy G) v = ∇_y F` with a linear solver (matrix-free: Hessian–vector products; Krylov
    solvers start from `adjoint0`), then `∇θF − (∂²G/∂θ∂y)ᵀ v`. Subclasses say which solver
    by `get_linear_solver(y)`.

    The linear solve is run quietly (`js.ReportedSolver`): its failure is the result
    `adjoint_not_converged`, never an exception, also under `jax.grad` of the hypergradient
    (which is differentiable: the inner solution carries its implicit derivative).
    """

    @abc.abstractmethod
    def get_linear_solver(self, y) -> lx.AbstractLinearSolver:
        """The lineax solver of the adjoint system at the inner point `y` (its dtype sets the
        default tolerances)."""

    def check_adjoint0(self, adjoint0) -> None:
        pass

    def hypergradient(self, problem, theta, y0, adjoint0=None):
        solver = ReportedSolver(self.get_linear_solver(y0))
        inner = problem.solve_inner(theta, y0, adjoint=ImplicitAdjoint(solver))
        y = inner.value
        loss, (g_theta, g_y) = jax.value_and_grad(problem.outer, argnums=(0, 1))(theta, y)
        _, hvp = jax.linearize(lambda yy: problem.inner_grad_y(theta, yy), y)
        operator = lx.FunctionLinearOperator(hvp, jax.eval_shape(lambda: y), tags=HESSIAN_TAGS)
        options = {} if adjoint0 is None else {"y0": adjoint0}
        lin = lx.linear_solve(operator, g_y, solver, options=options, throw=False)
        v = lin.value
        _, vjp = jax.vjp(lambda th: problem.inner_grad_y(th, y), theta)
        (cross,) = vjp(v)
        return Hypergradient.from_inner(
            _sub(g_theta, cross),
            loss,
            inner,
            adjoint=v,
            adjoint_result=lin.stats["result"],
            adjoint_stats=lin.stats,
        )


class Implicit(AbstractImplicitEstimator):
    """Implicit differentiation: `∇θF − (∂²G/∂θ∂y) (∇²_yy G)⁻¹ ∇_y F` at the inner solution.

    One linear solve with the inner Hessian (matrix-free: Hessian–vector products), the
    adjoint system `(∇²_yy G) v = ∇_y F`, independent of how many inner iterations were run;
    with an adjoint warm start (`adjoint0=` in `js.bilevel.hypergradient`) a Krylov solver
    starts from the previous adjoint vector. A solve that does not converge is reported as
    `js.RESULTS.adjoint_not_converged`.

    **Arguments:**

    - `linear_solver`: a lineax solver for the inner Hessian: `None` (default) is
      jaxsolve's CG, `js.linear.CG` (the Hessian of a convex inner problem is symmetric
      positive definite; on the flattened vector for pytree unknowns such as an equinox
      model's weights), with a relative residual the dtype can reach (1e-10 in float64,
      1e-4 in float32) and at most 1000 Hessian-vector products; negative curvature stops
      it as `not_positive_definite`, reported as `adjoint_not_converged`. Or `lx.GMRES(...)`,
      `lx.BiCGStab(...)`, `lx.Cholesky()`, `lx.LU()`, ...

    **Example:**

    ```python
    import jax.numpy as jnp, lineax as lx
    import jaxsolve as js

    inner = lambda lam, y, _: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * lam * jnp.sum(y**2)
    outer = lambda lam, y, _: jnp.sum(y)                 # = 2 / (1 + lam)
    est = js.bilevel.Implicit(lx.GMRES(rtol=1e-6, atol=1e-6))
    hg = js.bilevel.hypergradient(outer, inner, 1.0, jnp.zeros(2), estimator=est,
                                  inner_solver=js.GradientDescent(0.5))
    assert abs(hg.grad + 0.5) < 1e-5                     # -2 / (1 + lam)^2
    ```
    """

    linear_solver: lx.AbstractLinearSolver | None = None

    def __check_init__(self):
        if self.linear_solver is not None and not isinstance(
            self.linear_solver, lx.AbstractLinearSolver
        ):
            raise TypeError(
                "Implicit's `linear_solver` must be a lineax solver such as lx.CG(rtol=1e-8, "
                f"atol=1e-8) or lx.GMRES(...); got {type(self.linear_solver).__name__}."
            )

    def get_linear_solver(self, y):
        if self.linear_solver is not None:
            return self.linear_solver
        return adjoint_cg(y)


class TruncatedNeumann(AbstractImplicitEstimator):
    """Implicit hypergradient with `(∇²_yy G)⁻¹` replaced by a truncated Neumann series.

    Lorraine, Vicol & Duvenaud (AISTATS 2020): `H⁻¹ ≈ α Σ_{j<K} (I − αH)^j`, so the cost is a
    fixed `steps` Hessian–vector products and the bias shrinks geometrically in `steps` when
    `0 < α < 2 / λ_max(H)`. This is `Implicit(js.Neumann(steps, alpha))`.

    **Arguments:**

    - `steps`: the number of terms `K` (Python int).
    - `alpha`: the step `α` (a pytree leaf).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    inner = lambda lam, y, _: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * lam * jnp.sum(y**2)
    outer = lambda lam, y, _: jnp.sum(y)
    hg = js.bilevel.hypergradient(outer, inner, 1.0, jnp.zeros(2),
                                  estimator=js.bilevel.TruncatedNeumann(steps=30, alpha=0.4),
                                  inner_solver=js.GradientDescent(0.5))
    assert abs(hg.grad + 0.5) < 1e-6     # H = 2 I, (1 - 0.8)^30 is negligible
    ```
    """

    steps: int = eqx.field(static=True, default=50)
    alpha: float | Array = 1.0

    def __check_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(
                f"TruncatedNeumann `steps` must be a positive int; got {self.steps!r}."
            )
        if isinstance(self.alpha, (int, float)) and not self.alpha > 0:
            raise ValueError(f"TruncatedNeumann `alpha` must be positive; got {self.alpha!r}.")

    def get_linear_solver(self, y):
        return Neumann(steps=self.steps, alpha=self.alpha)


class Unrolled(AbstractEstimator):
    """Differentiate through the inner iterations (iterative differentiation, ITD).

    The inner solver runs until `inner_tol` or `inner_max_steps` steps (reaching
    `inner_max_steps` is not a failure here: the derivative is that of the steps run), or with
    `fixed_steps=True` exactly `inner_max_steps` steps (the inner solver is stopped by the step
    count only, never by `inner_tol`: stopping early at an already optimal warm start would
    cut the dependence of `y` on `θ`). With `truncate=K` only the last `K` steps are
    differentiated (truncated backpropagation, Shaban et al. 2019), the earlier ones are a
    constant warm start. Uses `js.UnrollAdjoint` from the core. Best with
    `js.GradientDescent(lr)` as the inner solver.

    **Arguments:**

    - `truncate`: differentiate only the last `truncate` steps (`None`: all of them).
    - `kind`: the unrolled loop's kind, `"checkpointed"` (default, reverse mode with
      recursive checkpointing) or `"bounded"`.
    - `fixed_steps`: run exactly `inner_max_steps` inner steps (default `False`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    inner = lambda lam, y, _: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * lam * jnp.sum(y**2)
    outer = lambda lam, y, _: jnp.sum(y)
    hg = js.bilevel.hypergradient(outer, inner, 1.0, jnp.zeros(2),
                                  estimator=js.bilevel.Unrolled(), inner_tol=1e-10,
                                  inner_solver=js.GradientDescent(0.3), inner_max_steps=200)
    assert abs(hg.grad + 0.5) < 1e-6
    # exactly 3 gradient steps y <- y - 0.3 (2y - 1) from 0: y_3 = (1 - 0.4**3) / 2
    hg = js.bilevel.hypergradient(outer, inner, 1.0, jnp.zeros(2),
                                  estimator=js.bilevel.Unrolled(fixed_steps=True),
                                  inner_solver=js.GradientDescent(0.3), inner_max_steps=3)
    assert hg.stats["num_steps"] == 3 and jnp.allclose(hg.y, (1 - 0.4**3) / 2)
    ```
    """

    truncate: int | None = eqx.field(static=True, default=None)
    kind: str = eqx.field(static=True, default="checkpointed")
    fixed_steps: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if self.truncate is not None and (
            isinstance(self.truncate, bool)
            or not isinstance(self.truncate, int)
            or self.truncate < 1
        ):
            raise ValueError(
                f"Unrolled `truncate` must be None or a positive int; got {self.truncate!r}."
            )
        if self.kind not in ("checkpointed", "bounded"):
            raise ValueError(
                f"Unrolled `kind` must be 'checkpointed' or 'bounded'; got {self.kind!r}."
            )

    def hypergradient(self, problem, theta, y0, adjoint0=None):
        steps = problem.inner_max_steps
        solver = problem.inner_solver
        if self.fixed_steps:
            wrap = lambda n: FixedSteps(solver=solver, steps=n)
        else:
            wrap = lambda n: solver
        if self.truncate is not None and self.truncate < steps:
            head = problem.solve_inner(
                jax.lax.stop_gradient(theta),
                y0,
                solver=wrap(steps - self.truncate),
                max_steps=steps - self.truncate,
            )
            y_start, tail_steps = jax.lax.stop_gradient(head.value), self.truncate
            head_steps = head.stats["num_steps"]
        else:
            y_start, tail_steps, head_steps = y0, steps, 0
        unroll = UnrollAdjoint(kind=self.kind)

        def loss(th):
            sol = problem.solve_inner(
                th, y_start, adjoint=unroll, solver=wrap(tail_steps), max_steps=tail_steps
            )
            return problem.outer(th, sol.value), sol

        (value, inner), grad = jax.value_and_grad(loss, has_aux=True)(theta)
        # Unrolling differentiates whatever the loop computed; only a non-finite inner solve
        # makes its gradient meaningless.
        ok = (inner.result == RESULTS.successful) | (inner.result == RESULTS.max_steps_reached)
        hg = Hypergradient.from_inner(grad, value, inner, inner_ok=ok)
        return eqx.tree_at(lambda h: h.stats["num_steps"], hg, hg.stats["num_steps"] + head_steps)


class FixedSteps(AbstractMinimiser):
    """`solver`, stopped by the step count only: `terminate` says done after exactly `steps`
    steps (`successful`), or earlier if the error is not finite (`nonfinite`). Its `tol` is
    not used. How `Unrolled(fixed_steps=True)` and `ITD` run exactly their inner steps."""

    solver: AbstractMinimiser
    steps: int = eqx.field(static=True)
    tol: float | Array | None = None

    def init(self, problem, y, options):
        return self.solver.init(problem, y, options), jnp.array(0, jnp.int32)

    def step(self, problem, y, state):
        inner, count = state
        y, inner = self.solver.step(problem, y, inner)
        return y, (inner, count + 1)

    def error(self, problem, y, state):
        return self.solver.error(problem, y, state[0])

    def terminate(self, problem, y, state):
        finite = jnp.isfinite(self.error(problem, y, state))
        result = RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite)
        return (state[1] >= self.steps) | ~finite, result

    def postprocess(self, problem, y, state):
        return self.solver.postprocess(problem, y, state[0])
