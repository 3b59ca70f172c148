"""What the bilevel entry points return: `Hypergradient` and `BilevelSolution`, both
`js.Solution`s."""

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, PyTree, Scalar

from .._iterate import tree_all_finite
from .._solution import RESULTS, Solution


class Hypergradient(Solution):
    """What `js.bilevel.hypergradient` (and every estimator) returns: a `js.Solution` whose
    `value` is the hypergradient.

    **Attributes:**

    - `value`: the hypergradient `∇θ F(θ, y*(θ))`, same structure as `theta` (also `grad`).
    - `result`: `js.RESULTS.successful`; `inner_not_converged` when the inner solve did not
      converge, `adjoint_not_converged` when the adjoint linear solve did not (the
      hypergradient is then approximate), `nonfinite` when the loss or the hypergradient is
      not finite.
    - `stats`: `num_steps` (inner solver steps), `error` (`‖∇_y G‖₂` at `y`), and
      `adjoint_num_steps` when the adjoint linear solver counts its steps.
    - `loss`: the outer loss `F(θ, y)` at the inner solution.
    - `y`: the inner solution (pass it back as `y0` to warm-start the next call).
    - `adjoint`: the adjoint vector `v = (∇²_yy G)⁻¹ ∇_y F` of the implicit estimators (pass
      it back as `adjoint0`); `None` for `Unrolled`.
    - `inner`: the inner `js.Solution` (its `result` and `stats` say how the inner solve went).
    - `state`, `aux`: `None`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    inner = lambda lam, y, _: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * lam * jnp.sum(y**2)
    outer = lambda lam, y, _: jnp.sum(y)                          # = 2 / (1 + lam)
    hg = js.bilevel.hypergradient(outer, inner, 1.0, jnp.zeros(2),
                                  inner_solver=js.GradientDescent(0.5))
    assert abs(hg.value + 0.5) < 1e-6 and hg.grad is hg.value     # -2 / (1 + lam)^2
    assert abs(hg.loss - 1.0) < 1e-6
    hg = js.bilevel.hypergradient(outer, inner, 1.0, jnp.zeros(2), inner_max_steps=1,
                                  inner_solver=js.GradientDescent(0.1), throw=False)
    assert hg.result == js.RESULTS.inner_not_converged            # flagged, not raised
    assert hg.inner.result == js.RESULTS.max_steps_reached
    ```
    """

    loss: Scalar = None  # pyright: ignore[reportAssignmentType]
    y: PyTree[Array] = None
    adjoint: PyTree[Array] | None = None
    inner: Solution = None  # pyright: ignore[reportAssignmentType]

    @property
    def grad(self) -> PyTree[Array]:
        """The hypergradient (the same as `value`)."""
        return self.value

    @classmethod
    def from_inner(
        cls,
        grad: PyTree[Array],
        loss: Scalar,
        inner: Solution,
        *,
        adjoint: PyTree[Array] | None = None,
        adjoint_result: Any = None,
        adjoint_stats: dict[str, Any] | None = None,
        inner_ok: Bool[Array, ""] | None = None,
    ) -> "Hypergradient":
        """Assemble an estimator's output and decide its `result`.

        **Arguments:**

        - `grad`, `loss`: the hypergradient and the outer loss.
        - `inner`: the inner `js.Solution`.
        - `adjoint`: the adjoint vector, if the estimator has one.
        - `adjoint_result`: the adjoint linear solve's result (a lineax or jaxsolve result),
          if there was one; a failure gives `adjoint_not_converged`.
        - `adjoint_stats`: that solve's stats (its `num_steps` is reported).
        - `inner_ok`: whether the inner solve is good enough for this estimator (default:
          `inner.result == successful`); otherwise `inner_not_converged`.
        """
        if inner_ok is None:
            inner_ok = inner.result == RESULTS.successful
        if adjoint_result is None:
            adjoint_ok = jnp.array(True)
        else:
            # jaxsolve's own linear solvers report a jaxsolve result, lineax's a lineax one.
            if not isinstance(adjoint_result, RESULTS):
                adjoint_result = RESULTS.promote(adjoint_result)
            adjoint_ok = adjoint_result == RESULTS.successful
        # NaN data make the inner solve non-finite: that is the hypergradient's failure too.
        finite = tree_all_finite(grad) & jnp.isfinite(loss) & (inner.result != RESULTS.nonfinite)
        result = RESULTS.where(
            finite,
            RESULTS.where(
                inner_ok,
                RESULTS.where(adjoint_ok, RESULTS.successful, RESULTS.adjoint_not_converged),
                RESULTS.inner_not_converged,
            ),
            RESULTS.nonfinite,
        )
        stats = {"num_steps": inner.stats["num_steps"], "error": inner.stats["error"]}
        if adjoint_stats is not None and "num_steps" in adjoint_stats:
            stats["adjoint_num_steps"] = jnp.asarray(adjoint_stats["num_steps"])
        return cls(
            value=grad,
            result=result,  # pyright: ignore[reportArgumentType]
            stats=jax.lax.stop_gradient(stats),
            loss=loss,
            y=jax.lax.stop_gradient(inner.value),
            adjoint=adjoint,
            inner=inner,
        )


class BilevelSolution(Solution):
    """What `js.bilevel.solve` returns: a `js.Solution` whose `value` is `θ` after the last
    outer step.

    **Attributes:**

    - `value`: the outer variables after the last step (also `theta`).
    - `result`: `js.RESULTS.successful`; `inner_not_converged` if any step's inner problem
      did not converge (see `metrics["inner_converged"]`), `adjoint_not_converged` if any
      step's adjoint solve did not (`metrics["adjoint_converged"]`, AID), `nonfinite` if an
      outer loss or `θ` is not finite.
    - `stats`: `num_steps` (outer steps), `outer_loss` and `hypergrad_norm` of the last step.
    - `y`: the algorithm's inner variable after the last step.
    - `metrics`: a dict of arrays with one entry per outer step: `outer_loss` (`F` at the
      step's iterate), `inner_residual` (‖∇_y G‖, or the method's own lower-level measure),
      `hypergrad_norm` (norm of the direction given to the optimiser), `inner_converged`
      (bool), method-specific entries, and whatever `metrics_fn` returned.
    - `state`: the algorithm's final state (to continue a run, or for inspection).
    - `aux`: `None`.

    **Example:**

    ```python
    import jax.numpy as jnp, optax
    import jaxsolve as js

    inner = lambda th, y, _: 0.5 * jnp.sum((y - th) ** 2)
    outer = lambda th, y, _: jnp.sum((y - 2.0) ** 2)
    sol = js.bilevel.solve(outer, inner, jnp.zeros(1), jnp.zeros(1),
                           algorithm=js.bilevel.AID(js.GradientDescent(0.5)),
                           optimiser=optax.sgd(0.1), num_steps=30)
    assert sol.metrics["outer_loss"].shape == (30,) and sol.stats["num_steps"] == 30
    assert sol.metrics["outer_loss"][-1] < sol.metrics["outer_loss"][0]
    assert sol.theta is sol.value
    ```
    """

    y: PyTree[Array] = None
    metrics: dict[str, Array] = None  # pyright: ignore[reportAssignmentType]

    @property
    def theta(self) -> PyTree[Array]:
        """The outer variables (the same as `value`)."""
        return self.value
