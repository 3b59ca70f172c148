"""Constrained and composite minimisation: projected and proximal gradient (FISTA) and L-BFGS-B.

All three solve `min_y f(y, args) + g(y, args)` where `g` is known through its prox
`prox(z, args, step)` (for a constraint set `C(args)`: the projection, for box bounds: the
clip). Their problem, `ConstrainedMinimiseProblem`, has the optimality function

    F(y) = y − prox(y − ∇f(y), args, 1)

(the fixed-point residual of the proximal-gradient map with unit step; `∇f(y)` when `g = 0`),
zero exactly at a minimiser of a convex problem. It is both the family's error measure
(`tol` bounds `‖F(y)‖₂`, as JAXopt's ProximalGradient and SciPy's L-BFGS-B `pgtol` do, in the
2-norm) and what `js.ImplicitAdjoint` differentiates: its Jacobian `I − ∂prox (I − ∇²f)` is the
identity on the active set (where the prox is locally constant) and `∇²f` on the free
variables, so derivatives are those of the problem restricted to its active set, with respect
to `args` (penalties, radii) and to the bounds.
"""

from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree, Scalar

from ._checks import check_same_structure
from ._iterate import converged_by, tree_all_finite, tree_norm
from ._linesearch import backtracking
from ._minimise import AbstractMinimiser
from ._problem import MinimiseProblem, default_tol, krylov_adjoint
from ._solution import RESULTS
from .projections._projections import _clip, box

# ---------------------------------------------------------------------------------------------
# The problem


class ConstrainedMinimiseProblem(MinimiseProblem):
    """`min_y fn(y, args) + g(y, args)`, `g` given by its prox (or box `bounds`).

    Optimality `y − prox(y − ∇_y fn(y, args), args, 1)` (not symmetric: tagged with no
    structure, so the default derivative solve is dense LU up to 256 unknowns and GMRES above).
    Error measure: the norm of that residual. `validate()` reports `invalid_input` when a
    lower bound exceeds its upper bound (or either is NaN).

    **Arguments:**

    - `fn`: the smooth part `(y, args) -> scalar`.
    - `args`: its arguments, shared with the prox.
    - `prox`: `(z, args, step) -> z` (closure-converted: arrays it closes over are leaves),
      or `None` with `bounds`.
    - `bounds`: `(lower, upper)`, pytrees of `y`'s structure and shapes, or `None`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    fn = lambda y, a: 0.5 * jnp.sum((y - a) ** 2)
    lower, upper = jnp.zeros(2), jnp.full(2, jnp.inf)
    problem = js.ConstrainedMinimiseProblem(fn, jnp.array([1.0, -1.0]), bounds=(lower, upper))
    assert jnp.allclose(problem.optimality(jnp.array([1.0, 0.0])), 0.0)
    ```
    """

    fn: Callable[[PyTree[Array], Any], Scalar]
    args: Any
    prox: Callable | None = None
    bounds: tuple[PyTree[Array], PyTree[Array]] | None = None
    tags: ClassVar[frozenset] = frozenset()

    def prox_step(self, z, step):
        """The prox of `step · g` at `z` (the box projection when the problem has bounds)."""
        if self.bounds is not None:
            return box(z, self.bounds)
        if self.prox is None:
            return z
        return self.prox(z, self.args, step)

    def residual(self, y, grad):
        """`y − prox(y − grad, 1)`: the fixed-point residual, given `grad = ∇f(y)`."""
        one = jnp.ones((), jtu.tree_leaves(y)[0].dtype)
        z = jtu.tree_map(jnp.subtract, y, grad)
        return jtu.tree_map(jnp.subtract, y, self.prox_step(z, one))

    def optimality(self, y):
        return self.residual(y, jax.grad(self.fn)(y, self.args))

    def adjoint_solver(self, y):
        return krylov_adjoint(y, symmetric=False)

    def validate(self) -> RESULTS:
        if self.bounds is None:
            return RESULTS.successful  # pyright: ignore[reportReturnType]
        lower, upper = self.bounds
        ok = jnp.all(
            jnp.stack(
                [
                    jnp.all(lo <= hi)
                    for lo, hi in zip(jtu.tree_leaves(lower), jtu.tree_leaves(upper))
                ]
            )
        )
        return RESULTS.where(ok, RESULTS.successful, RESULTS.invalid_input)


class _ProblemBuilder(eqx.Module):
    """Builds the problem inside `minimise`'s jitted body (the `problem_cls` of
    `run_entry_point`): closure-converts the prox and checks that it keeps `y`'s structure."""

    prox: Callable | None
    bounds: Any
    y0: Any

    def default_tol(self, dtype) -> float:
        return default_tol(dtype, 1e-6, 1e-4)

    def __call__(self, fn, args):
        prox = self.prox
        if prox is not None:
            step = jnp.ones((), jtu.tree_leaves(self.y0)[0].dtype)
            try:
                out = jax.eval_shape(prox, self.y0, args, step)
            except (TypeError, ValueError) as e:
                raise type(e)(
                    f"The solver's projection/prox could not be called as prox(y, args, step) "
                    f"(projection(y, args) for js.ProjectedGradient) with y like `y0`: {e}"
                ) from e
            check_same_structure(out, self.y0, "The projection/prox's output")
            prox = eqx.filter_closure_convert(prox, self.y0, args, step)
        return ConstrainedMinimiseProblem(fn, args, prox, self.bounds)


def check_bounds(bounds, y0):
    """`bounds=(lower, upper)` as two pytrees of `y0`'s structure, shapes and dtypes; `None`
    (or a `None` side) is unbounded, scalars broadcast."""
    if not (isinstance(bounds, tuple) and len(bounds) == 2):
        raise TypeError(
            "`bounds` must be a pair (lower, upper) of pytrees like y0 (or scalars, or None "
            f"for no bound on that side); got {type(bounds).__name__}."
        )
    out = []
    for side, fill in zip(bounds, (-jnp.inf, jnp.inf)):
        if side is None:
            side = fill
        if jtu.tree_structure(side) != jtu.tree_structure(y0):
            if jnp.ndim(side) == 0 and not isinstance(side, (dict, list, tuple)):
                side = jtu.tree_map(lambda _: side, y0)
            elif len(jtu.tree_leaves(y0)) == 1 and not isinstance(side, (dict, list, tuple)):
                side = jtu.tree_map(lambda _: side, y0)
            else:
                raise ValueError(
                    "Each bound must be a scalar or a pytree of y0's structure; got "
                    f"{jtu.tree_structure(side)}, expected {jtu.tree_structure(y0)}."
                )

        def leaf(b, y):
            b = jnp.asarray(b)
            if not jnp.issubdtype(b.dtype, jnp.floating) and not jnp.issubdtype(
                b.dtype, jnp.integer
            ):
                raise TypeError(f"Bounds must be real numbers; got a {b.dtype} array.")
            try:
                return jnp.broadcast_to(b, jnp.shape(y)).astype(jnp.result_type(y))
            except ValueError as e:
                raise ValueError(
                    f"A bound of shape {jnp.shape(b)} does not broadcast to its y0 leaf of "
                    f"shape {jnp.shape(y)}."
                ) from e

        out.append(jtu.tree_map(leaf, side, y0))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# The solvers


class AbstractConstrainedMinimiser(AbstractMinimiser):
    """Base class of the minimisers of `f + g` (`g` a constraint's indicator or a penalty known
    by its prox): `js.ProjectedGradient`, `js.ProximalGradient`, `js.LBFGSB`.

    `js.minimise` gives them a `js.ConstrainedMinimiseProblem`; their family's rule: done once
    the fixed-point residual `‖y − prox(y − ∇f(y), 1)‖₂ <= tol` (the state's `error`).
    Subclasses say whether they take `bounds` (`uses_bounds`) and give their prox
    (`prox_fn()`, `None` for bounds).
    """

    uses_bounds: ClassVar[bool] = False

    def prox_fn(self) -> Callable | None:
        return None

    def problem_builder(self, y0, bounds):
        if self.uses_bounds:
            bounds = check_bounds((None, None) if bounds is None else bounds, y0)
        elif bounds is not None:
            raise TypeError(
                f"{type(self).__name__} takes its constraint through its projection/prox, not "
                "`bounds`: use js.ProjectedGradient(lambda y, args: js.projections.box(y, "
                "(lower, upper))), or js.LBFGSB() with bounds=(lower, upper)."
            )
        return _ProblemBuilder(self.prox_fn(), bounds, y0)

    def error(self, problem, y, state) -> Scalar:
        return state.error

    def terminate(self, problem, y, state):
        done, result = converged_by(state.error, self.tol)
        failed = state.failed
        result = RESULTS.where(failed, RESULTS.line_search_failed, result)
        return done | failed, result

    def postprocess(self, problem, y, state):
        return state.x, {}


def _constrained(problem, solver) -> ConstrainedMinimiseProblem:
    if not isinstance(problem, ConstrainedMinimiseProblem):
        raise TypeError(
            f"{type(solver).__name__} solves a js.ConstrainedMinimiseProblem (js.minimise builds "
            f"one from the solver's projection/prox or `bounds`); got {type(problem).__name__}."
        )
    return problem


def _finite_or_nan(err, f, g):
    # A NaN objective or gradient is a nonfinite error even where the prox would hide it.
    return jnp.where(jnp.isfinite(f) & tree_all_finite(g), err, jnp.nan)


def _tree_vdot(a, b):
    return sum(jnp.sum(x * y) for x, y in zip(jtu.tree_leaves(a), jtu.tree_leaves(b)))


def _axpy(alpha, x, y):  # alpha x + y
    return jtu.tree_map(lambda a, b: (alpha * a + b).astype(b.dtype), x, y)


class _ProxState(eqx.Module):
    x: PyTree[Array]  # the iterate (feasible after the first step)
    fx: Scalar
    z: PyTree[Array]  # the extrapolated point, where the next step starts
    fz: Scalar
    gz: PyTree[Array]
    t: Scalar  # FISTA's momentum sequence
    stepsize: Scalar
    streak: Array  # steps accepted at the first trial in a row (the step grows after 3)
    error: Scalar
    failed: Array


class _AbstractProxGradient(AbstractConstrainedMinimiser):
    """Proximal gradient with FISTA momentum, adaptive restart and backtracking (Beck and
    Teboulle 2009; O'Donoghue and Candès 2015 for the restart)."""

    # Shared fields, keyword-only so that each subclass's own first field (its projection or
    # prox) stays the one positional argument.
    stepsize: float | Array | None = eqx.field(default=None, kw_only=True)
    acceleration: bool = eqx.field(static=True, default=True, kw_only=True)
    restart: bool = eqx.field(static=True, default=True, kw_only=True)
    max_backtracks: int = eqx.field(static=True, default=30, kw_only=True)
    tol: float | Array | None = eqx.field(default=None, kw_only=True)

    def init(self, problem, y, options):
        problem = _constrained(problem, self)
        fx, gx = problem.value_and_grad(y)
        dtype = jtu.tree_leaves(y)[0].dtype
        if self.stepsize is None:
            # 1 / (secant curvature along −∇f): an overestimate of 1/L, so the first line
            # search only halves it, whatever the scale of the problem.
            gnorm = tree_norm(gx)
            h = 1e-3 * (1 + tree_norm(y)) / jnp.where(gnorm > 0, gnorm, 1.0)
            _, g1 = problem.value_and_grad(_axpy(-h, gx, y))
            dg = tree_norm(jtu.tree_map(jnp.subtract, g1, gx))
            curv = dg / jnp.where(gnorm > 0, h * gnorm, 1.0)
            eta = jnp.where((curv > 0) & jnp.isfinite(curv), 1.0 / curv, 1.0)
        else:
            eta = jnp.asarray(self.stepsize)
        err = _finite_or_nan(tree_norm(problem.residual(y, gx)), fx, gx)
        return _ProxState(
            x=y,
            fx=fx,
            z=y,
            fz=fx,
            gz=gx,
            t=jnp.ones((), dtype),
            stepsize=eta.astype(dtype),
            streak=jnp.array(0, jnp.int32),
            error=err,
            failed=jnp.array(False),
        )

    def step(self, problem, y, state):
        problem = _constrained(problem, self)
        z, fz, gz, x = state.z, state.fz, state.gz, state.x
        eps = jnp.finfo(state.fz.dtype).eps
        # Below this relative change of f, rounding dominates f's differences: the test then
        # uses the gradients instead (as TFOCS does), exact for quadratics.
        f_tol = jnp.maximum(1e-10, 1e3 * eps)
        if self.acceleration:
            t_next = 0.5 * (1 + jnp.sqrt(1 + 4 * state.t**2))
            beta_next = (state.t - 1) / t_next
        else:
            t_next, beta_next = state.t, None

        def trial(eta):
            xn = problem.prox_step(_axpy(-eta, gz, z), eta)
            fxn, gxn = problem.value_and_grad(xn)  # the gradient: for the test and the error
            return xn, fxn, gxn

        def accept(eta, out):
            xn, fxn, gxn = out[:3]
            d = jtu.tree_map(jnp.subtract, xn, z)
            dd = _tree_vdot(d, d)
            by_value = fxn - fz - _tree_vdot(gz, d)
            by_grad = 0.5 * jnp.abs(_tree_vdot(jtu.tree_map(jnp.subtract, gxn, gz), d))
            simple = jnp.abs(fxn - fz) >= f_tol * jnp.maximum(jnp.abs(fxn), jnp.abs(fz))
            curvature = jnp.where(simple, by_value, by_grad)
            return (curvature <= 0.5 * dd / eta) | (dd == 0)

        if self.stepsize is None:
            grow = state.streak >= 3
            eta0 = jnp.where(grow, 2 * state.stepsize, state.stepsize)
            eta, out, ok, halvings = backtracking(trial, accept, eta0, self.max_backtracks)
            streak = jnp.where(halvings == 0, jnp.where(grow, 0, state.streak + 1), 0)
        else:
            eta = state.stepsize
            out = trial(eta)
            ok, streak = jnp.array(True), state.streak
        xn, fxn, gxn = out
        if beta_next is None:
            zn, fzn, gzn = xn, fxn, gxn
        else:
            step_x = jtu.tree_map(jnp.subtract, xn, x)
            beta = beta_next
            if self.restart:
                # Gradient restart: the step xn − x points against the gradient mapping z − xn.
                bad = _tree_vdot(jtu.tree_map(jnp.subtract, z, xn), step_x) > 0
                beta = jnp.where(bad, 0.0, beta)
                t_next = jnp.where(bad, jnp.ones_like(t_next), t_next)
            zn = _axpy(beta, step_x, xn)
            if self.restart:  # after a restart zn = xn, whose value and gradient are known
                fzn, gzn = jax.lax.cond(bad, lambda: (fxn, gxn), lambda: problem.value_and_grad(zn))
            else:
                fzn, gzn = problem.value_and_grad(zn)
        err = _finite_or_nan(tree_norm(problem.residual(xn, gxn)), fxn, gxn)
        new = _ProxState(
            x=xn,
            fx=fxn,
            z=zn,
            fz=fzn,
            gz=gzn,
            t=jnp.asarray(t_next).astype(state.t.dtype),
            stepsize=jnp.asarray(eta).astype(state.stepsize.dtype),
            streak=jnp.asarray(streak, jnp.int32),
            error=err,
            failed=~ok,
        )
        return xn, new

    def postprocess(self, problem, y, state):
        return state.x, {"stepsize": state.stepsize}


class _ProjectionAsProx(eqx.Module):
    projection: Callable

    def __call__(self, z, args, step):
        del step
        return self.projection(z, args)


class ProjectedGradient(_AbstractProxGradient):
    """Projected gradient descent with FISTA acceleration: `min f(y, args)` over `y ∈ C(args)`.

    Each step is `x⁺ = P(z − η ∇f(z), args)` from the extrapolated point `z` (FISTA, with
    gradient-based adaptive restart), `η` found by backtracking on the quadratic upper bound
    (`js.minimise`'s one line search; it starts from a secant estimate of `1/L` and grows again
    after three steps accepted at once). The error (and `tol`) is the fixed-point residual
    `‖y − P(y − ∇f(y), args)‖₂` (the projected gradient; `‖∇f‖₂` in the interior).
    Derivatives by `js.ImplicitAdjoint` (default) differentiate that residual: correct on the
    active set, with respect to `args`, projection hyperparameters included.

    **Arguments:**

    - `projection`: `(y, args) -> y`, the Euclidean projection onto the feasible set: one of
      `js.projections` (e.g. `js.projections.nonnegative`), or a function that picks its
      hyperparameters out of the objective's `args`.
    - `stepsize`: `None` (default: backtracking) or a fixed step `η ≤ 1/L`. With
      `js.UnrollAdjoint()` pass a fixed step: the backtracking loop is a `lax.while_loop`,
      which reverse mode cannot differentiate.
    - `acceleration`: FISTA momentum (default `True`); `restart`: adaptive restart.
    - `max_backtracks`: the most halvings per step (then `line_search_failed`).

    **Example:** non-negative least squares.

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    A = jax.random.normal(jax.random.PRNGKey(0), (20, 5)); b = A @ jnp.array([1., -1, 2, 0, -3])
    fn = lambda w, data: 0.5 * jnp.sum((data[0] @ w - data[1]) ** 2)
    solver = js.ProjectedGradient(js.projections.nonnegative)
    sol = js.minimise(fn, jnp.zeros(5), (A, b), solver=solver)
    assert (sol.value >= 0).all() and sol.result == js.RESULTS.successful
    ```
    """

    projection: Callable

    def __check_init__(self):
        if not callable(self.projection):
            raise TypeError(
                "ProjectedGradient takes a projection `projection(y, args) -> y`, e.g. "
                f"js.projections.nonnegative; got {type(self.projection).__name__}."
            )

    def prox_fn(self):
        return _ProjectionAsProx(self.projection)


class ProximalGradient(_AbstractProxGradient):
    """Proximal gradient (ISTA/FISTA) for `min f(y, args) + g(y, args)`, `g` known by its prox.

    Each step is `x⁺ = prox(z − η ∇f(z), args, η)` (FISTA momentum with adaptive restart,
    backtracking as in `js.ProjectedGradient`). `fn` passed to `js.minimise` is the smooth part
    `f`. The error (and `tol`) is the fixed-point residual `‖y − prox(y − ∇f(y), args, 1)‖₂`.
    Derivatives through `js.ImplicitAdjoint` (default) are those of the problem on its support
    (e.g. a Lasso's derivative with respect to its penalty), with respect to all of `args`.

    **Arguments:**

    - `prox`: `(y, args, step) -> y`, the prox of `step · g(·, args)`: one of `js.prox`, or a
      function that picks its hyperparameters out of `args`.
    - `stepsize`, `acceleration`, `restart`, `max_backtracks`: as in `js.ProjectedGradient`.

    **Example:** a Lasso.

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    A = jax.random.normal(jax.random.PRNGKey(0), (20, 5)); b = A @ jnp.array([1., 0, 2, 0, -3])
    fn = lambda w, args: 0.5 * jnp.sum((A @ w - b) ** 2)
    prox = lambda w, lam, step: js.prox.l1(w, lam, step)
    sol = js.minimise(fn, jnp.zeros(5), 1.0, solver=js.ProximalGradient(prox))
    assert sol.result == js.RESULTS.successful and sol.value[1] == 0.0
    ```
    """

    prox: Callable

    def __check_init__(self):
        if not callable(self.prox):
            raise TypeError(
                "ProximalGradient takes a prox `prox(y, args, step) -> y`, e.g. js.prox.l1; "
                f"got {type(self.prox).__name__}."
            )

    def prox_fn(self):
        return self.prox


# ---------------------------------------------------------------------------------------------
# L-BFGS-B


class _LBFGSBState(eqx.Module):
    x: Array  # flat, feasible
    f: Scalar
    g: Array
    s: Array  # (memory, n) curvature pairs, newest last
    yk: Array
    gamma: Scalar
    error: Scalar
    failed: Array
    retry: Array  # the last step's line search failed: this one is a projected-gradient step


class LBFGSB(AbstractConstrainedMinimiser):
    """L-BFGS-B: limited-memory BFGS for box bounds `lower ≤ y ≤ upper`, passed as
    `js.minimise(..., solver=js.LBFGSB(), bounds=(lower, upper))`.

    Each step splits the variables by Bertsekas's ε-active set: a coordinate is active when it
    lies within `ε = min(1e-3, ‖y − P(y − ∇f)‖)` of a bound that its gradient pushes it
    against. The direction is the L-BFGS two-loop recursion on the free variables (curvature
    pairs restricted to them; pairs with no positive curvature there are skipped), a scaled
    gradient step on the active ones; then a projected backtracking line search
    `y(α) = P(y + α d)` with the Armijo test on `∇fᵀ(y(α) − y)`. A failed line search resets
    the memory and retries with a projected-gradient step; a second failure stops with
    `line_search_failed`. `±inf` bounds leave coordinates free (with none, this is L-BFGS with
    an Armijo line search). The error (and `tol`) is the projected gradient
    `‖y − P(y − ∇f(y))‖₂` (SciPy's `pgtol`, in the 2-norm). Lower bounds above upper bounds (or
    NaN bounds) give `invalid_input`.

    Derivatives (`js.ImplicitAdjoint`, default) are with respect to `args` and the bounds: a
    coordinate on its bound moves with the bound, the free ones follow the Hessian on the free
    variables.

    **Arguments:**

    - `memory_size`: number of curvature pairs kept (default 10).
    - `max_backtracks`: the most halvings of the line search per step.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    rosen = lambda y, _: (1 - y[0]) ** 2 + 100 * (y[1] - y[0] ** 2) ** 2
    sol = js.minimise(rosen, jnp.array([-1.2, 1.0]), solver=js.LBFGSB(),
                      bounds=(jnp.array([-2.0, -2.0]), jnp.array([0.5, 2.0])), tol=1e-8)
    assert jnp.allclose(sol.value, jnp.array([0.5, 0.25]), atol=1e-6)
    ```
    """

    memory_size: int = eqx.field(static=True, default=10)
    max_backtracks: int = eqx.field(static=True, default=30)
    tol: float | Array | None = None
    uses_bounds: ClassVar[bool] = True

    def __check_init__(self):
        if self.memory_size < 1 or self.max_backtracks < 1:
            raise ValueError(
                "LBFGSB memory_size and max_backtracks must be >= 1; got "
                f"{self.memory_size}, {self.max_backtracks}."
            )

    def _flat(self, problem, y):
        problem = _constrained(problem, self)
        if problem.bounds is None:
            raise TypeError("LBFGSB needs a problem with `bounds` (js.minimise(..., bounds=...)).")
        x, unravel = ravel_pytree(y)
        lo, _ = ravel_pytree(problem.bounds[0])
        hi, _ = ravel_pytree(problem.bounds[1])
        fun = lambda v: problem.fn(unravel(v), problem.args)
        return x, unravel, lo.astype(x.dtype), hi.astype(x.dtype), jax.value_and_grad(fun)

    def init(self, problem, y, options):
        x, _, lo, hi, vg = self._flat(problem, y)
        x = _clip(x, lo, hi)
        f, g = vg(x)
        n, m = x.size, self.memory_size
        err = _finite_or_nan(jnp.linalg.norm(x - _clip(x - g, lo, hi)), f, g)
        gnorm = jnp.linalg.norm(g)
        return _LBFGSBState(
            x=x,
            f=f,
            g=g,
            s=jnp.zeros((m, n), x.dtype),
            yk=jnp.zeros((m, n), x.dtype),
            gamma=jnp.where(gnorm > 0, 1 / jnp.where(gnorm > 0, gnorm, 1.0), 1.0).astype(x.dtype),
            error=err,
            failed=jnp.array(False),
            retry=jnp.array(False),
        )

    def step(self, problem, y, state):
        _, unravel, lo, hi, vg = self._flat(problem, y)
        x, f, g = state.x, state.f, state.g
        dtype = x.dtype
        tiny = jnp.finfo(dtype).eps
        proj = lambda v: _clip(v, lo, hi)
        eps_act = jnp.minimum(1e-3, state.error)
        active = ((x <= lo + eps_act) & (g > 0)) | ((x >= hi - eps_act) & (g < 0))
        free = (~active).astype(dtype)
        # Two-loop recursion on the free variables, with the pairs restricted to them.
        s_f, y_f = state.s * free, state.yk * free
        sy = jnp.sum(s_f * y_f, axis=1)
        yy = jnp.sum(y_f * y_f, axis=1)
        good = sy > tiny * jnp.maximum(yy, tiny)
        rho = jnp.where(good, 1 / jnp.where(good, sy, 1.0), 0.0)
        # γ from the newest pair with positive curvature on the free variables.
        newest = jnp.max(jnp.where(good, jnp.arange(self.memory_size), -1))
        gamma = jnp.where(
            newest >= 0, sy[newest] / jnp.where(newest >= 0, yy[newest], 1.0), state.gamma
        )
        gamma = jnp.where(state.retry, state.gamma, gamma)
        rho = jnp.where(state.retry, 0.0, rho)

        def back(q, sya):
            s_i, y_i, r_i = sya
            a = r_i * jnp.dot(s_i, q)
            return q - a * y_i, a

        q, alphas = jax.lax.scan(back, g * free, (s_f, y_f, rho), reverse=True)

        def fwd(r, syab):
            s_i, y_i, r_i, a = syab
            b = r_i * jnp.dot(y_i, r)
            return r + s_i * (a - b), None

        r, _ = jax.lax.scan(fwd, gamma * q, (s_f, y_f, rho, alphas))
        d = jnp.where(active, -gamma * g, -r)

        def trial(alpha):
            xn = proj(x + alpha * d)
            fn, gn = vg(xn)
            return xn, fn, gn

        def accept(alpha, out):
            xn, fn, _ = out
            return fn <= f + 1e-4 * jnp.dot(g, xn - x) + 10 * tiny * jnp.abs(f)

        _, (xn, fn, gn), ok, _ = backtracking(
            trial, accept, jnp.ones((), dtype), self.max_backtracks
        )
        ok = ok & jnp.all(jnp.isfinite(gn))
        sn, yn = xn - x, gn - g
        keep = ok & (jnp.dot(sn, yn) > tiny * jnp.dot(yn, yn))
        s_new = jnp.where(keep, jnp.roll(state.s, -1, axis=0).at[-1].set(sn), state.s)
        y_new = jnp.where(keep, jnp.roll(state.yk, -1, axis=0).at[-1].set(yn), state.yk)
        gamma_new = jnp.where(keep, jnp.dot(sn, yn) / jnp.dot(yn, yn), state.gamma)
        # A failed line search: keep x, forget the memory, retry with a projected gradient step.
        x_out = jnp.where(ok, xn, x)
        f_out = jnp.where(ok, fn, f)
        g_out = jnp.where(ok, gn, g)
        s_new = jnp.where(ok, s_new, 0.0)
        y_new = jnp.where(ok, y_new, 0.0)
        gnorm = jnp.linalg.norm(g)
        gamma_new = jnp.where(ok, gamma_new, 1 / jnp.where(gnorm > 0, gnorm, 1.0))
        err = _finite_or_nan(jnp.linalg.norm(x_out - proj(x_out - g_out)), f_out, g_out)
        new = _LBFGSBState(
            x=x_out,
            f=f_out,
            g=g_out,
            s=s_new,
            yk=y_new,
            gamma=gamma_new.astype(dtype),
            error=err,
            failed=(~ok) & state.retry,
            retry=~ok,
        )
        return unravel(x_out), new

    def postprocess(self, problem, y, state):
        return ravel_pytree(y)[1](state.x), {}
