"""`minimise` and its solvers: gradient descent, L-BFGS, and any optax optimiser."""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jaxtyping import Array, PyTree, Scalar

from ._adjoint import AbstractAdjoint, ImplicitAdjoint
from ._iterate import AbstractIterativeSolver, converged_by, tree_norm
from ._problem import MinimiseProblem
from ._solution import Solution
from ._solve import run_entry_point


class _GradState(eqx.Module):
    value: Scalar
    grad: PyTree[Array]
    inner: Any


class AbstractMinimiser(AbstractIterativeSolver[MinimiseProblem, PyTree[Array], Any]):
    """Base class of `minimise`'s solvers.

    Subclasses implement `init(problem, y, options)` and `step(problem, y, state)` over a
    `js.MinimiseProblem` (`problem.fn(y, problem.args)` is the objective); their state has a
    `grad` field (the gradient at `y`). The family's rule: done once `‖∇_y fn‖₂ <= tol`
    (`tol` is a field of every minimiser; `None` takes `js.minimise`'s `tol` or the family
    default for the dtype).
    """

    tol: eqx.AbstractVar[float | Array | None]

    def error(self, problem, y, state) -> Scalar:
        return tree_norm(state.grad)

    def problem_builder(self, y0: Any, bounds: Any) -> Any:
        """What `minimise` builds its problem with, `(fn, args) -> problem` (a class, or a
        hashable module holding the solver's constraint); it also gives `default_tol(dtype)`."""
        if bounds is not None:
            raise TypeError(
                f"{type(self).__name__} does not take `bounds`; use js.LBFGSB() for box bounds, "
                "or js.ProjectedGradient(projection) for other constraints."
            )
        return MinimiseProblem

    def terminate(self, problem, y, state):
        return converged_by(self.error(problem, y, state), self.tol)


class GradientDescent(AbstractMinimiser):
    """Gradient descent `y ← y − η ∇f(y)` with a fixed step.

    **Arguments:**

    - `learning_rate`: the step `η` (a pytree leaf: differentiable under `UnrollAdjoint`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    sol = js.minimise(lambda y, _: jnp.sum((y - 2.0) ** 2), jnp.zeros(3),
                      solver=js.GradientDescent(learning_rate=0.25))
    assert jnp.allclose(sol.value, 2.0, atol=1e-6)
    ```
    """

    learning_rate: float | Array = 1e-2
    tol: float | Array | None = None

    def init(self, problem, y, options):
        value, grad = problem.value_and_grad(y)
        return _GradState(value, grad, None)

    def step(self, problem, y, state):
        y = jtu.tree_map(lambda yi, gi: yi - self.learning_rate * gi, y, state.grad)
        value, grad = problem.value_and_grad(y)
        return y, _GradState(value, grad, None)


class _AbstractOptaxBased(AbstractMinimiser):
    """A minimiser whose update rule is an optax transformation (see `_transform`)."""

    @abc.abstractmethod
    def _transform(self) -> optax.GradientTransformationExtraArgs: ...

    def _value_and_grad(self, value_fn, y, inner):
        return jax.value_and_grad(value_fn)(y)

    def init(self, problem, y, options):
        value, grad = problem.value_and_grad(y)
        return _GradState(value, grad, self._transform().init(y))

    def step(self, problem, y, state):
        # optax's line searches may promote float32 iterates to float64 (under x64): keep the
        # user's dtypes, both in what `fn` sees and in the iterate.
        like_y = lambda z: jtu.tree_map(lambda zi, yi: zi.astype(yi.dtype), z, y)
        value_fn = lambda z: problem.fn(like_y(z), problem.args)
        updates, inner = self._transform().update(
            state.grad, state.inner, y, value=state.value, grad=state.grad, value_fn=value_fn
        )
        y = like_y(optax.apply_updates(y, updates))
        value, grad = self._value_and_grad(value_fn, y, inner)
        return y, _GradState(value, grad, inner)


class OptaxMinimiser(_AbstractOptaxBased):
    """Minimise with any optax optimiser as the update rule.

    `optax.adam(1e-2)`, `optax.sgd(0.1, momentum=0.9)`, chains with clipping, ... Optimisers
    that need the objective (`optax.lbfgs()`, line searches) get `value`, `grad` and `value_fn`
    as extra arguments, as optax expects. Build the `OptaxMinimiser` once and reuse it: a new
    optax object is a new static argument, which compiles again.

    **Arguments:**

    - `optimiser`: an `optax.GradientTransformation`.

    **Example:**

    ```python
    import jax.numpy as jnp, optax
    import jaxsolve as js

    sol = js.minimise(lambda y, _: jnp.sum((y - 2.0) ** 2), jnp.zeros(3),
                      solver=js.OptaxMinimiser(optax.adam(0.1)), tol=1e-5, max_steps=5000)
    assert jnp.allclose(sol.value, 2.0, atol=1e-4)
    ```
    """

    optimiser: optax.GradientTransformation
    tol: float | Array | None = None

    def __check_init__(self):
        if not isinstance(self.optimiser, optax.GradientTransformation):
            raise TypeError(
                "OptaxMinimiser takes an optax.GradientTransformation, e.g. optax.adam(1e-2); "
                f"got {type(self.optimiser).__name__}."
            )

    def _transform(self):
        return optax.with_extra_args_support(self.optimiser)


class LBFGS(_AbstractOptaxBased):
    """L-BFGS with a zoom (strong Wolfe) line search: optax's `optax.lbfgs`.

    The default for `minimise`. The value and gradient found by the line search are reused, so
    each step costs what the line search evaluates (usually one value-and-gradient).

    **Arguments:**

    - `memory_size`: number of curvature pairs kept (default 10).
    - `max_linesearch_steps`: the most evaluations the line search may take per step.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    rosen = lambda y, _: (1 - y[0]) ** 2 + 100 * (y[1] - y[0] ** 2) ** 2
    sol = js.minimise(rosen, jnp.array([-1.2, 1.0]), solver=js.LBFGS(), tol=1e-8)
    assert jnp.allclose(sol.value, 1.0, atol=1e-6)
    ```
    """

    memory_size: int = eqx.field(static=True, default=10)
    max_linesearch_steps: int = eqx.field(static=True, default=30)
    tol: float | Array | None = None

    def __check_init__(self):
        if self.memory_size < 1 or self.max_linesearch_steps < 1:
            raise ValueError(
                "LBFGS memory_size and max_linesearch_steps must be >= 1; got "
                f"{self.memory_size}, {self.max_linesearch_steps}."
            )

    def _transform(self):
        # Built at trace time from static settings, so equal LBFGS() objects never retrace.
        return optax.lbfgs(
            memory_size=self.memory_size,
            linesearch=optax.scale_by_zoom_linesearch(
                max_linesearch_steps=self.max_linesearch_steps, initial_guess_strategy="one"
            ),
        )

    def _value_and_grad(self, value_fn, y, inner):
        return optax.value_and_grad_from_state(value_fn)(y, state=inner)


def minimise(
    fn: Callable[[PyTree[Array], Any], Scalar],
    y0: PyTree[Array],
    args: Any = None,
    *,
    solver: AbstractMinimiser | None = None,
    tol: float | None = None,
    max_steps: int = 1000,
    adjoint: AbstractAdjoint = ImplicitAdjoint(),
    throw: bool = True,
    progress: bool | Callable = False,
    bounds: tuple[Any, Any] | None = None,
) -> Solution:
    """Minimise `fn(y, args)` over `y`, differentiably with respect to `args`.

    The solution `y*(args)` is differentiated by the implicit function theorem on
    `∇_y fn(y*, args) = 0` (default `js.ImplicitAdjoint()`: one linear solve with the Hessian,
    memory independent of `max_steps`) or through the iterations (`js.UnrollAdjoint()`).
    Arrays closed over by `fn` are differentiated too.

    **Arguments:**

    - `fn`: `(y, args) -> scalar`, smooth in `y`.
    - `y0`: the starting point, a pytree of floating-point arrays.
    - `args`: anything `fn` depends on (the hyperparameters, the data).
    - `solver`: `js.LBFGS()` (default), `js.GradientDescent(lr)`, `js.OptaxMinimiser(optax...)`;
      for constrained and composite problems `js.ProjectedGradient(projection)`,
      `js.ProximalGradient(prox)` (then `fn` is the smooth part) or `js.LBFGSB()` (with
      `bounds`).
    - `tol`: absolute tolerance on the Euclidean norm of the gradient `‖∇_y fn‖₂`; for the
      constrained solvers on the fixed-point residual `‖y − prox(y − ∇_y fn, 1)‖₂` (the
      projected gradient; the gradient norm in the interior). `None` (default) takes the
      solver's `tol`, else the family default (1e-6 in float64, 1e-4 in float32).
    - `max_steps`: the most solver steps.
    - `adjoint`: `js.ImplicitAdjoint(linear_solver=...)` (default) or `js.UnrollAdjoint()`. The
      Hessian is tagged symmetric positive semidefinite; the default linear solver is dense up
      to 256 unknowns and matrix-free `js.linear.CG` (Hessian-vector products) above, so the
      derivative scales to a network's weights. At a saddle point (an indefinite Hessian) pass
      `lx.GMRES(...)` or a dense solver.
    - `throw`: raise if the solve fails; with `False` read `sol.result` (use under `vmap`).
    - `progress`: `True` for a progress bar on stderr, or a callback `fn(step, error)`.
    - `bounds`: `(lower, upper)` for `js.LBFGSB()`: pytrees of `y0`'s structure, or scalars,
      or `None` for a side without bounds; `±inf` leaves a coordinate free. Differentiable.

    **Returns:** a `js.Solution`; `stats` has `num_steps` and `error` (the final gradient norm,
    or residual).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    X = jax.random.normal(jax.random.PRNGKey(0), (20, 3)); t = X @ jnp.array([1.0, -2.0, 0.5])
    ridge = lambda w, lam: 0.5 * jnp.sum((X @ w - t) ** 2) + 0.5 * lam * jnp.sum(w**2)
    sol = js.minimise(ridge, jnp.zeros(3), 0.1, tol=1e-5)
    w = jnp.linalg.solve(X.T @ X + 0.1 * jnp.eye(3), X.T @ t)
    assert jnp.allclose(sol.value, w, atol=1e-5)
    ```
    """
    solver = LBFGS() if solver is None else solver
    if not isinstance(solver, AbstractMinimiser):
        raise TypeError(
            "minimise's `solver` must be a js.AbstractMinimiser such as js.LBFGS(), "
            f"js.GradientDescent(...) or js.OptaxMinimiser(optax...); got {type(solver).__name__}."
        )
    return run_entry_point(
        solver.problem_builder(y0, bounds),
        solver,
        fn,
        y0,
        args,
        tol=tol,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=throw,
        progress=progress,
        name="minimise",
        check=_check_scalar_objective,
    )


def _check_scalar_objective(fn, y0, args):
    out = jax.eval_shape(fn, y0, args)
    if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        raise ValueError(
            "minimise's `fn(y, args)` must return a floating-point scalar; got "
            f"{getattr(out, 'shape', type(out))} {getattr(out, 'dtype', '')}. Reduce it, e.g. with "
            "jnp.sum or jnp.mean."
        )
