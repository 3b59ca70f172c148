"""Differentiating a solve: the implicit function theorem, once, for every solver.

A solver returns `y*(θ)` with `F(y*(θ), θ) = 0`. Differentiating that identity gives the
tangent `ẏ = −(∂F/∂y)⁻¹ (∂F/∂θ) θ̇`: one linear solve, no iterations. `implicit_jvp` states
this as a `custom_jvp` rule. The rule is linear in `θ̇` and built from JAX and lineax
primitives, so JAX transposes it for reverse mode (the linear solve becomes the adjoint solve
with `(∂F/∂y)ᵀ`) and differentiates it again for second derivatives.

`ImplicitAdjoint` and `UnrollAdjoint` choose between this and differentiating through the
iterations; `custom_root` and `custom_fixed_point` put the same rule around a user's solver.
"""

import abc
import functools
import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, PyTree

from ._checks import floats_to_arrays
from ._iterate import LoopKind


def _is_none(x):
    return x is None


@eqx.filter_custom_jvp
def _implicit_impl(inputs, *, fn_primal, fn_rewrite, tags, linear_solver):
    del fn_rewrite, tags, linear_solver
    return fn_primal(inputs)


@_implicit_impl.def_jvp
def _implicit_impl_jvp(primals, tangents, *, fn_primal, fn_rewrite, tags, linear_solver):
    (inputs,) = primals
    (t_inputs,) = tangents
    root, residual = _implicit_impl(
        inputs, fn_primal=fn_primal, fn_rewrite=fn_rewrite, tags=tags, linear_solver=linear_solver
    )
    t_residual = jtu.tree_map(_zero_tangent, residual)
    if all(t is None for t in jtu.tree_leaves(t_inputs, is_leaf=_is_none)):
        return (root, residual), (jtu.tree_map(jnp.zeros_like, root), t_residual)
    # ∂F/∂y at the root, matrix-free: lineax linearises `fn_rewrite` in its first argument.
    # Linearised once, so Krylov iterations apply only the linear part (no primal recomputation).
    operator = lx.linearise(
        lx.JacobianLinearOperator(lambda y, _: fn_rewrite(y, inputs), root, None, tags=tags)
    )
    # (∂F/∂θ) θ̇, by forward mode through the optimality function.
    mask = jtu.tree_map(lambda t: t is not None, t_inputs, is_leaf=_is_none)
    diff, static = eqx.partition(inputs, mask)
    t_diff = eqx.filter(t_inputs, mask, is_leaf=_is_none)
    _, rhs = jax.jvp(lambda d: fn_rewrite(root, eqx.combine(d, static)), (diff,), (t_diff,))
    t_root = lx.linear_solve(operator, rhs, linear_solver, throw=False).value
    t_root = jtu.tree_map(jnp.negative, t_root)
    return (root, residual), (t_root, t_residual)


def _stop_gradient(tree):
    return jtu.tree_map(lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, tree)


def _zero_tangent(x):
    if eqx.is_inexact_array(x):
        return jnp.zeros_like(x)
    return None


def implicit_jvp(
    fn_primal: Callable[[Any], tuple[PyTree[Array], Any]],
    fn_rewrite: Callable[[PyTree[Array], Any], PyTree[Array]],
    inputs: Any,
    tags: frozenset = frozenset(),
    linear_solver: lx.AbstractLinearSolver | None = None,
) -> tuple[PyTree[Array], Any]:
    """Differentiate `root, residual = fn_primal(inputs)` by the implicit function theorem.

    **Arguments:**

    - `fn_primal`: `inputs -> (root, residual)`; the solve. It is never differentiated.
    - `fn_rewrite`: `(root, inputs) -> F`, the optimality function, zero at the root, with the
      same structure as `root`. Everything it depends on must be passed through `inputs`
      (closure-convert functions first, e.g. with `eqx.filter_closure_convert`).
    - `inputs`: a pytree; every floating-point array leaf is differentiable.
    - `tags`: lineax tags for `∂F/∂y` (e.g. `{lx.symmetric_tag, lx.positive_semidefinite_tag}`
      for the Hessian of a minimisation), used by the linear solver.
    - `linear_solver`: a lineax solver for `∂F/∂y`
      (default: `lx.AutoLinearSolver(well_posed=None)`).

    **Returns:** `(root, residual)`; `residual` (stats, state) carries no derivative.
    """
    if linear_solver is None:
        linear_solver = lx.AutoLinearSolver(well_posed=None)
    root, residual = _implicit_impl(
        inputs, fn_primal=fn_primal, fn_rewrite=fn_rewrite, tags=tags, linear_solver=linear_solver
    )
    return root, jax.lax.stop_gradient(residual)


class ReportedSolver(lx.AbstractLinearSolver):
    """A lineax solver that reports its result in `stats["result"]` and, when `quiet`, tells
    lineax it succeeded. lineax raises on every failed tangent and transpose solve (it has
    nowhere to pipe their result); wrapping the solver is how `throw=False` reaches the
    derivative's linear solves: a failed adjoint solve then returns its last iterate instead of
    raising. With `quiet=False` lineax still raises for failed derivative solves."""

    solver: lx.AbstractLinearSolver
    quiet: bool = eqx.field(static=True, default=True)
    zero_nonfinite: bool = eqx.field(static=True, default=False)

    def init(self, operator, options):
        return self.solver.init(operator, options)

    def compute(self, state, vector, options):
        value, result, stats = self.solver.compute(state, vector, options)
        if self.zero_nonfinite:
            # lineax raises on a non-finite tangent/transpose solution whatever its result
            # says; a failed member's derivative (NaN data, a singular Jacobian) is then zero.
            value = jtu.tree_map(lambda v: jnp.where(jnp.isfinite(v), v, 0), value)
        # A solver that reports a more precise code itself (jaxsolve's linear solvers) keeps it.
        stats = {"result": result, **stats}
        if not self.quiet:
            return value, result, stats
        return value, lx.RESULTS.successful, stats

    def transpose(self, state, options):
        return self.solver.transpose(state, options)

    def conj(self, state, options):
        return self.solver.conj(state, options)

    def assume_full_rank(self):
        return self.solver.assume_full_rank()


class AbstractAdjoint(eqx.Module):
    """How a solve is differentiated. See `ImplicitAdjoint` and `UnrollAdjoint`.

    `js.iterative_solve` calls `apply(fn_primal, fn_rewrite, inputs, tags, default_solver,
    throw)`: `fn_primal(inputs) -> (root, residual)` runs the loop (whose kind is
    `loop_kind`), `fn_rewrite(root, inputs)` is the optimality function, `default_solver` the
    problem's linear solver for the implicit derivative, and `throw=False` means no derivative
    solve may raise.
    """

    @property
    @abc.abstractmethod
    def loop_kind(self) -> LoopKind: ...

    @abc.abstractmethod
    def apply(
        self, fn_primal, fn_rewrite, inputs, tags, default_solver, throw
    ) -> tuple[PyTree[Array], Any]: ...


class ImplicitAdjoint(AbstractAdjoint):
    """Differentiate a solve by the implicit function theorem (the default everywhere).

    The derivative needs one linear solve with the Jacobian of the optimality conditions at the
    solution, never the iterations: memory is independent of the number of steps, and any
    solver with the same optimality conditions has the same derivative. Forward mode, reverse
    mode and higher derivatives all work.

    **Arguments:**

    - `linear_solver`: a lineax solver for that Jacobian, e.g. `lx.CG(rtol=1e-8, atol=1e-8)`
      (symmetric positive definite problems, matrix-free), `lx.GMRES(...)`, `lx.LU()`,
      `js.Neumann(steps, alpha)`, or jaxsolve's own `js.linear` solvers. `None` (default)
      lets each problem family choose (its problem's `adjoint_solver`): for `minimise`,
      `root_find` and `fixed_point` a dense direct solve up to 256 unknowns, and above that
      matrix-free `js.linear.CG` on the Hessian (`minimise`) or `lx.GMRES` (the others), with
      tolerances float32 can reach; matrix-free CG for optimal transport. With
      `throw=False` in the entry point, a derivative solve that fails returns its last
      iterate instead of raising.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, lineax as lx
    import jaxsolve as js

    def inner(y, lam):  # ridge-like inner problem, y*(lam) = 1 / (1 + lam)
        return 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * lam * jnp.sum(y**2)

    def outer(lam):
        adjoint = js.ImplicitAdjoint(linear_solver=lx.CG(rtol=1e-6, atol=1e-6))
        return js.minimise(inner, jnp.zeros(2), lam, adjoint=adjoint).value.sum()

    g = jax.grad(outer)(1.0)   # d/dlam 2/(1+lam) = -2/(1+lam)^2 = -0.5
    assert abs(g + 0.5) < 1e-4
    ```
    """

    linear_solver: lx.AbstractLinearSolver | None = None

    @property
    def loop_kind(self) -> LoopKind:
        return "lax"

    def apply(self, fn_primal, fn_rewrite, inputs, tags, default_solver, throw):
        solver = default_solver if self.linear_solver is None else self.linear_solver
        if not throw:
            solver = ReportedSolver(solver, zero_nonfinite=True)
        return implicit_jvp(fn_primal, fn_rewrite, inputs, tags, solver)


class UnrollAdjoint(AbstractAdjoint):
    """Differentiate through the iterations themselves (automatic differentiation of the loop).

    Useful to check implicit derivatives, for truncated backpropagation, and for problems whose
    implicit derivative is not well posed. Memory grows with the number of steps.

    **Arguments:**

    - `kind`: `"checkpointed"` (default; reverse mode with recursive checkpointing, memory
      about `O(log steps)` checkpoints, no forward mode) or `"bounded"` (forward and reverse mode;
      stores every step).
    - `checkpoints`: number of checkpoints for `"checkpointed"` (`None`: equinox's default).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    fn = lambda y, lam: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * lam * jnp.sum(y**2)
    solve = lambda lam: js.minimise(
        fn, jnp.zeros(2), lam, solver=js.GradientDescent(0.1), adjoint=js.UnrollAdjoint(),
        tol=1e-6, max_steps=200,
    ).value.sum()
    assert abs(jax.grad(solve)(1.0) + 0.5) < 1e-4
    ```
    """

    kind: str = eqx.field(static=True, default="checkpointed")
    checkpoints: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.kind not in ("checkpointed", "bounded"):
            raise ValueError(
                f"UnrollAdjoint kind must be 'checkpointed' or 'bounded'; got {self.kind!r}."
            )

    @property
    def loop_kind(self) -> LoopKind:
        return self.kind  # type: ignore[return-value]

    def apply(self, fn_primal, fn_rewrite, inputs, tags, default_solver, throw):
        return fn_primal(inputs)


def check_adjoint(adjoint) -> AbstractAdjoint:
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(
            "`adjoint` must be js.ImplicitAdjoint(...) or js.UnrollAdjoint(...); "
            f"got {type(adjoint).__name__}."
        )
    return adjoint


def custom_root(
    optimality_fn: Callable[..., PyTree[Array]],
    *,
    linear_solver: lx.AbstractLinearSolver | None = None,
    has_aux: bool = False,
    tags: frozenset = frozenset(),
):
    """Decorator: make a user's solver differentiable by the implicit function theorem.

    The decorated `solver(init, *args)` returns `y*` (or `(y*, aux)` with `has_aux=True`) such
    that `optimality_fn(y*, *args) = 0`. Derivatives with respect to `args` — and to arrays that
    `optimality_fn` closes over — then come from one linear solve with `∂optimality/∂y`, not from
    the solver's iterations: the solver may be a Python loop, a `lax.while_loop`, an optax loop
    or a call into another library. `jax.grad`, `jax.jvp`, `jax.jacfwd` and higher derivatives
    (e.g. Hessian–vector products of an outer loss) all work. `init` gets no derivative.

    **Arguments:**

    - `optimality_fn`: `(y, *args) -> F`, same structure as `y`, zero at the solution.
    - `linear_solver`: a lineax solver for `∂F/∂y` (CG, GMRES, BiCGStab, LU, `js.Neumann`, ...);
      default `lx.AutoLinearSolver(well_posed=None)` (dense, direct).
    - `has_aux`: the solver returns `(y, aux)`; `aux` gets no derivative.
    - `tags`: lineax tags describing `∂F/∂y` (e.g. `lx.positive_semidefinite_tag` for CG).

    As in JAXopt's `@implicit_diff.custom_root(optimality_fun)`, the decorated solver may
    take keyword arguments (`solver(init, *args, **kwargs)`, passed on to
    `optimality_fn(y, *args, **kwargs)` too, and differentiated like `args`), and may ignore
    its `init` and be called with `init=None`: then the solution's structure is found by
    tracing the solver once (`jax.eval_shape`).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    def optimality(y, a):        # root of y**3 - a
        return y**3 - a

    @js.custom_root(optimality)
    def cube_root(y, a):         # any solver: here plain Newton iterations
        for _ in range(30):
            y = y - (y**3 - a) / (3 * y**2)
        return y

    g = jax.grad(lambda a: cube_root(1.0, a))(8.0)   # d a^(1/3)/da = 1/(3 a^(2/3)) = 1/12
    assert abs(g - 1 / 12) < 1e-6
    ```
    """
    if not callable(optimality_fn):
        raise TypeError(f"`optimality_fn` must be callable; got {type(optimality_fn).__name__}.")

    def decorator(solver: Callable):
        if not callable(solver):
            raise TypeError(f"custom_root decorates a callable; got {type(solver).__name__}.")

        try:
            first = next(iter(inspect.signature(solver).parameters), None)
        except (TypeError, ValueError):
            first = None

        @functools.wraps(solver)
        def wrapped(*args, **kwargs):
            if args:
                init, args = args[0], args[1:]
            elif first is not None and first in kwargs:  # solver(init_params=None, ...)
                init = kwargs.pop(first)
            else:
                raise TypeError(
                    "A custom_root solver takes the initial point (or None) as its first "
                    "argument: solver(init, *args, **kwargs)."
                )
            # Hoist arrays closed over by the optimality function into explicit inputs, so
            # that they are differentiated too.
            init = jtu.tree_map(jnp.asarray, init)
            args, kwargs = floats_to_arrays((args, kwargs))
            # A solver that ignores its `init` (JAXopt's idiom: called with None) tells the
            # solution's structure by its output's shape.
            like = init if init is not None else _solution_like(solver, args, kwargs, has_aux)
            closed_opt = eqx.filter_closure_convert(optimality_fn, like, *args, **kwargs)

            closed_solver = _closure_convert_if_traceable(solver, init, args, kwargs)

            def fn_primal(inputs):
                _, solver_, init_, (args_, kwargs_) = inputs
                args_, kwargs_ = floats_to_arrays((args_, kwargs_))
                out = solver_(init_, *args_, **kwargs_)
                if has_aux:
                    if not (isinstance(out, tuple) and len(out) == 2):
                        raise TypeError(
                            "With has_aux=True the solver must return a pair (solution, aux)."
                        )
                    return out
                return out, None

            def fn_rewrite(y, inputs):
                opt, _, _, (args_, kwargs_) = inputs
                args_, kwargs_ = floats_to_arrays((args_, kwargs_))
                return opt(y, *args_, **kwargs_)

            # The solver's own constants (and `init`) carry no derivative: by the implicit
            # function theorem the root depends on them only through the optimality function.
            inputs = (
                closed_opt,
                _stop_gradient(closed_solver),
                jax.lax.stop_gradient(init),
                (args, kwargs),
            )
            root, aux = implicit_jvp(fn_primal, fn_rewrite, inputs, tags, linear_solver)
            return (root, aux) if has_aux else root

        return wrapped

    return decorator


_UNTRACEABLE = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.TracerArrayConversionError,
)


def _closure_convert_if_traceable(solver, init, args, kwargs):
    # Arrays the solver closes over become leaves (so an outer transformation's tracers don't
    # leak into the custom_jvp). A solver with Python control flow on values cannot be traced:
    # it is called as it is, which works eagerly (e.g. under `jax.grad` without `jit`).
    try:
        return eqx.filter_closure_convert(solver, init, *args, **kwargs)
    except _UNTRACEABLE:
        return solver


def _solution_like(solver, args, kwargs, has_aux):
    """Zeros shaped like the solution of `solver(None, *args, **kwargs)` (found by tracing)."""
    try:
        out = jax.eval_shape(lambda: solver(None, *args, **kwargs))
    except _UNTRACEABLE as e:
        raise TypeError(
            "custom_root: the solver was called with init=None, so the solution's shape must "
            "come from tracing the solver (jax.eval_shape), which failed: it has Python control "
            "flow on array values. Pass an `init` shaped like the solution instead."
        ) from e
    if has_aux:
        out = out[0]
    return jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), out)


def custom_fixed_point(
    fixed_point_fn: Callable[..., PyTree[Array]],
    *,
    linear_solver: lx.AbstractLinearSolver | None = None,
    has_aux: bool = False,
):
    """Decorator: make a user's fixed-point solver differentiable by the implicit function theorem.

    Like `custom_root` with optimality `y − T(y, *args)`: the decorated `solver(init, *args)`
    returns `y*` with `y* = fixed_point_fn(y*, *args)`. Typical use: deep-equilibrium and
    graph layers such as Convergent Graph Solvers, `H = γ A(θ) H + b(θ)`.

    **Arguments:**

    - `fixed_point_fn`: `(y, *args) -> T(y)`, same structure as `y`.
    - `linear_solver`: a lineax solver for `I − ∂T/∂y` (default dense direct; `lx.GMRES(...)`
      or `js.Neumann(steps, alpha=1.0)` for large contractive maps).
    - `has_aux`: the solver returns `(y, aux)`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    T = lambda h, theta: 0.5 * jnp.tanh(h) + theta      # a contraction

    @js.custom_fixed_point(T)
    def equilibrium(h, theta):
        return jax.lax.fori_loop(0, 100, lambda _, h: T(h, theta), h)

    theta = jnp.array([0.3, -0.2])
    J = jax.jacobian(lambda t: equilibrium(jnp.zeros(2), t))(theta)
    h = equilibrium(jnp.zeros(2), theta)               # closed form: (I - 0.5 diag(sech^2 h))^-1
    assert jnp.allclose(J, jnp.diag(1 / (1 - 0.5 / jnp.cosh(h) ** 2)), atol=1e-6)
    ```
    """
    if not callable(fixed_point_fn):
        raise TypeError(f"`fixed_point_fn` must be callable; got {type(fixed_point_fn).__name__}.")

    def optimality(y, *args, **kwargs):
        return jtu.tree_map(jnp.subtract, y, fixed_point_fn(y, *args, **kwargs))

    return custom_root(optimality, linear_solver=linear_solver, has_aux=has_aux)
