"""Hypergradient estimators: how `∇θ F(θ, y*(θ))` is approximated.

Strategies are objects, not flags: `Implicit(linear_solver)` (implicit function theorem with a
chosen linear solver), `TruncatedNeumann(steps, alpha)` (Lorraine et al.'s Neumann series) and
`Unrolled(truncate)` (backpropagation through the inner iterations, optionally truncated).
"""

import equinox as eqx
import lineax as lx
from jaxtyping import Array

from .._neumann import Neumann


class AbstractEstimator(eqx.Module):
    """Base class of the hypergradient estimators taken by `js.bilevel.hypergradient`."""


class AbstractImplicitEstimator(AbstractEstimator):
    """An estimator that solves `∇²_yy G v = ∇_y F` with a linear solver (implicit function
    theorem). Subclasses say which solver by `linear_solver()`."""

    def get_linear_solver(self) -> lx.AbstractLinearSolver:
        raise NotImplementedError


class Implicit(AbstractImplicitEstimator):
    """Implicit differentiation: `∇θF − (∂²G/∂θ∂y) (∇²_yy G)⁻¹ ∇_y F` at the inner solution.

    The inner solve is differentiated with `js.ImplicitAdjoint(linear_solver)` from the core:
    one linear solve with the inner Hessian (matrix-free: Hessian–vector products), independent
    of how many inner iterations were run. With an adjoint warm start (`adjoint0=` in
    `js.bilevel.hypergradient`) the same identity is used in adjoint form, starting a Krylov
    solver from the previous adjoint vector.

    **Arguments:**

    - `linear_solver`: a lineax solver for the inner Hessian: `lx.CG(rtol, atol)` (default,
      `rtol = atol = 1e-10`; the Hessian of a convex inner problem is symmetric positive
      definite), `lx.GMRES(...)`, `lx.BiCGStab(...)`, `lx.Cholesky()`, `lx.LU()`, ...

    **Example:**

    ```python
    import jax.numpy as jnp, lineax as lx
    import jaxsolve as js

    inner = lambda lam, y, _: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * lam * jnp.sum(y**2)
    outer = lambda lam, y, _: jnp.sum(y)                 # = 2 / (1 + lam)
    est = js.bilevel.Implicit(lx.GMRES(rtol=1e-10, atol=1e-10))
    hg = js.bilevel.hypergradient(outer, inner, 1.0, jnp.zeros(2), estimator=est,
                                  inner_solver=js.GradientDescent(0.5))
    assert abs(hg.grad + 0.5) < 1e-6                     # -2 / (1 + lam)^2
    ```
    """

    linear_solver: lx.AbstractLinearSolver = lx.CG(rtol=1e-10, atol=1e-10)

    def __check_init__(self):
        if not isinstance(self.linear_solver, lx.AbstractLinearSolver):
            raise TypeError(
                "Implicit's `linear_solver` must be a lineax solver such as lx.CG(rtol=1e-8, "
                f"atol=1e-8) or lx.GMRES(...); got {type(self.linear_solver).__name__}."
            )

    def get_linear_solver(self):
        return self.linear_solver


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

    def get_linear_solver(self):
        return Neumann(steps=self.steps, alpha=self.alpha)


class Unrolled(AbstractEstimator):
    """Differentiate through the inner iterations (iterative differentiation, ITD).

    The inner solver runs `inner_max_steps` steps (or until `inner_tol`); with `truncate=K` only
    the last `K` of them are differentiated (truncated backpropagation, Shaban et al. 2019), the
    earlier ones are treated as a constant warm start. Uses `js.UnrollAdjoint` from the core.
    Best with `js.GradientDescent(lr)` as the inner solver.

    **Arguments:**

    - `truncate`: differentiate only the last `truncate` steps (`None`: all of them).
    - `kind`: the unrolled loop's kind, `"checkpointed"` (default, reverse mode with
      recursive checkpointing) or `"bounded"`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    inner = lambda lam, y, _: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * lam * jnp.sum(y**2)
    outer = lambda lam, y, _: jnp.sum(y)
    hg = js.bilevel.hypergradient(outer, inner, 1.0, jnp.zeros(2),
                                  estimator=js.bilevel.Unrolled(),
                                  inner_solver=js.GradientDescent(0.3), inner_max_steps=200)
    assert abs(hg.grad + 0.5) < 1e-6
    ```
    """

    truncate: int | None = eqx.field(static=True, default=None)
    kind: str = eqx.field(static=True, default="checkpointed")

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
