"""The typed problems of the core families: what a solver receives, and the optimality function
that the implicit adjoint differentiates.

User functions are closure-converted before they are put in a problem (see
`closure_convert`), so arrays they close over are pytree leaves: differentiable inputs, not
compile-time constants.
"""

from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, PyTree, Scalar

from ._solution import RESULTS

HESSIAN_TAGS = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})


class AbstractProblem(eqx.Module):
    """Base class of the problems solvers receive.

    A problem carries its family's `optimality(y)` (zero exactly at a solution: the one
    function `js.ImplicitAdjoint` differentiates), the lineax `tags` of its Jacobian, the
    default linear solver of the implicit derivative, the family's default tolerance and the
    name of its error measure in `Solution.stats`, and `validate()`: value checks of its data
    as a result code (`successful` when the data are fine).
    """

    error_name: ClassVar[str] = "error"
    tags: ClassVar[frozenset] = frozenset()

    def optimality(self, y: PyTree[Array]) -> PyTree[Array]:
        raise NotImplementedError

    def adjoint_solver(self, y: PyTree[Array]) -> lx.AbstractLinearSolver:
        """The default linear solver of `js.ImplicitAdjoint()` for this problem."""
        return lx.AutoLinearSolver(well_posed=None)

    def validate(self) -> RESULTS:
        return RESULTS.successful  # pyright: ignore[reportReturnType]


def float_dtype(tree: Any):
    """The floating dtype a problem computes in: the widest of `tree`'s inexact leaves."""
    leaves = [
        x
        for x in jtu.tree_leaves(tree)
        if isinstance(x, float) or (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact))
    ]
    if not leaves:
        return jnp.result_type(float)
    return jnp.result_type(*leaves)


# Below this many unknowns the implicit derivative materialises the Jacobian and solves it
# directly (a few batched Jacobian-vector products and one small factorisation beat a Krylov
# loop there); above it, the solve is matrix-free.
DENSE_ADJOINT_MAX_SIZE = 256


def tree_size(tree: Any) -> int:
    return sum(int(jnp.size(x)) for x in jtu.tree_leaves(tree))


def krylov_tolerances(y: Any) -> tuple[float, float]:
    """`(rtol, atol)` of a matrix-free derivative solve that the dtype of `y` can reach
    (float32 Hessian-vector products carry relative errors near 1e-6: 1e-4 is reachable)."""
    return (1e-10, 1e-12) if jnp.finfo(float_dtype(y)).bits > 32 else (1e-4, 1e-6)


def adjoint_cg(y: Any) -> lx.AbstractLinearSolver:
    """The matrix-free solver of a symmetric positive definite derivative system (the Hessian
    of `minimise`, the adjoint system of `js.bilevel.Implicit`) for unknowns shaped like `y`:
    jaxsolve's CG (`js.linear.CG`: relative residual `‖b − Hv‖₂/‖b‖₂ ≤ 1e-10` in float64,
    1e-4 in float32, at most `ADJOINT_CG_MAX_STEPS` Hessian-vector products), on the
    flattened vector when `y` is a pytree. lineax's `lx.CG` is not used: its breakdown test
    (`|pᵀHp| ≤ 100·eps·size·‖r‖²` gives NaN) fails in float32 on any Hessian with eigenvalues
    below `1.2e-5·size` (1.2 at 10⁵ unknowns), and its elementwise stopping rule is out of
    float32's reach on a network's weights."""
    from ._raveled import for_vectors_like
    from .linear import CG  # lazily: jaxsolve.linear builds on this module

    tol = default_tol(float_dtype(y), 1e-10, 1e-4)
    return for_vectors_like(y, CG(tol=tol, max_steps=ADJOINT_CG_MAX_STEPS))


# The most Hessian-vector products of a default adjoint CG solve: a convex inner problem whose
# CG needs more is too ill-conditioned for its implicit derivative to mean much in float32.
ADJOINT_CG_MAX_STEPS = 1000


def krylov_adjoint(y: Any, symmetric: bool) -> lx.AbstractLinearSolver:
    """The default linear solver of an implicit derivative: dense and direct for small `y`;
    matrix-free CG (symmetric positive definite Jacobians, `adjoint_cg`) or GMRES otherwise,
    with tolerances that the dtype of `y` can reach."""
    if tree_size(y) <= DENSE_ADJOINT_MAX_SIZE:
        return lx.AutoLinearSolver(well_posed=None)
    if symmetric:
        return adjoint_cg(y)
    rtol, atol = krylov_tolerances(y)
    return lx.GMRES(rtol=rtol, atol=atol, restart=40, max_steps=10 * tree_size(y))


def default_tol(dtype, tol64: float, tol32: float) -> float:
    """A family's default tolerance for `dtype` (16- and 32-bit floats get `tol32`)."""
    return tol64 if jnp.finfo(dtype).bits > 32 else tol32


class MinimiseProblem(AbstractProblem):
    """`min_y fn(y, args)`; optimality `∇_y fn(y, args) = 0` (its Jacobian, the Hessian, is
    tagged symmetric positive semidefinite). Error measure: `‖∇_y fn‖₂`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    problem = js.MinimiseProblem(lambda y, a: jnp.sum((y - a) ** 2), jnp.ones(2))
    assert jnp.allclose(problem.optimality(jnp.zeros(2)), -2.0)
    ```
    """

    fn: Callable[[PyTree[Array], Any], Scalar]
    args: Any
    tags: ClassVar[frozenset] = HESSIAN_TAGS

    def optimality(self, y):
        return jax.grad(self.fn)(y, self.args)

    def value_and_grad(self, y):
        return jax.value_and_grad(self.fn)(y, self.args)

    def adjoint_solver(self, y):
        return krylov_adjoint(y, symmetric=True)

    @staticmethod
    def default_tol(dtype) -> float:
        return default_tol(dtype, 1e-6, 1e-4)


class _AbstractMapProblem(AbstractProblem):
    """Problems given by a map `fn(y, args)` of `y`'s structure (roots and fixed points): one
    non-symmetric Jacobian, hence one default adjoint solver and one default tolerance."""

    fn: eqx.AbstractVar[Callable[[PyTree[Array], Any], PyTree[Array]]]
    args: eqx.AbstractVar[Any]

    def adjoint_solver(self, y):
        return krylov_adjoint(y, symmetric=False)

    @staticmethod
    def default_tol(dtype) -> float:
        return default_tol(dtype, 1e-8, 1e-5)


class RootProblem(_AbstractMapProblem):
    """`fn(y, args) = 0`, `fn` mapping `y` to a pytree of the same structure; optimality
    `fn(y, args)`. Error measure: `‖fn(y, args)‖₂`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    problem = js.RootProblem(lambda y, a: y**2 - a, 4.0)
    assert problem.optimality(jnp.array(2.0)) == 0.0
    ```
    """

    fn: Callable[[PyTree[Array], Any], PyTree[Array]]
    args: Any

    def optimality(self, y):
        return self.fn(y, self.args)


class FixedPointProblem(_AbstractMapProblem):
    """`y = fn(y, args)`; optimality `y − fn(y, args)` (so the implicit derivative solves with
    `I − ∂fn/∂y`, and `js.Neumann(alpha=1)` is the series `Σ (∂fn/∂y)^k`). Error measure:
    `‖fn(y, args) − y‖₂`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    problem = js.FixedPointProblem(lambda y, a: 0.5 * y + a, 1.0)
    assert problem.optimality(jnp.array(2.0)) == 0.0
    ```
    """

    fn: Callable[[PyTree[Array], Any], PyTree[Array]]
    args: Any

    def optimality(self, y):
        return jtu.tree_map(jnp.subtract, y, self.fn(y, self.args))
