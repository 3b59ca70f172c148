"""`js.linear.solve`: one entry point for dense, lineax and matrix-free systems."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, PyTree

from .._adjoint import ReportedSolver
from .._checks import floats_to_arrays
from .._functions import function_as_data
from .._iterate import apply_throw
from .._solution import RESULTS, Solution
from .._tree import (
    check_vector_structure,
    is_single_array,
    same_vector_structure,
    tree_norm_scaled,
    tree_ravel,
    tree_sub,
)
from ._cg import CG
from ._common import AbstractIterativeLinearSolver, safe_norm_b


def as_vector(b, name: str = "b"):
    """`b` as a vector: an array (integers become floats), or a pytree of floating arrays
    of one dtype; checked at trace time."""
    leaves = jax.tree_util.tree_leaves(b)
    if not leaves or not all(eqx.is_array_like(x) for x in leaves):
        raise TypeError(
            f"`{name}` must be an array or a pytree of arrays; got {type(b).__name__}"
            f"{'' if leaves else ' with no array leaves'}."
        )
    if is_single_array(b):
        b = jnp.asarray(b)
        if not jnp.issubdtype(b.dtype, jnp.inexact):
            b = b.astype(jnp.result_type(float))
        if b.size == 0:
            raise ValueError(f"`{name}` is empty (shape {b.shape}); there is no system to solve.")
        return b
    # Strongly typed leaves (`astype`): a weakly typed leaf would change type in the loop.
    b = jax.tree_util.tree_map(lambda x: jnp.asarray(x).astype(jnp.asarray(x).dtype), b)
    for leaf in jax.tree_util.tree_leaves(b):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise TypeError(
                f"The leaves of a pytree `{name}` must be floating-point arrays; got one of "
                f"dtype {leaf.dtype}. Cast it (e.g. x.astype(jnp.float32))."
            )
    check_vector_structure(b, "js.linear.solve")
    return b


def _like_b(x0, b):
    """The starting point `x0` in the structure, shapes and dtypes of `b` (checked)."""
    if is_single_array(b):
        x0 = jnp.asarray(x0, dtype=b.dtype)
    if jax.tree_util.tree_structure(x0) != jax.tree_util.tree_structure(b):
        raise ValueError(
            f"`x0` must have the structure of `b`, {jax.tree_util.tree_structure(b)}; got "
            f"{jax.tree_util.tree_structure(x0)}."
        )

    def leaf(x, y):
        x = jnp.asarray(x, dtype=y.dtype)
        if x.shape != y.shape:
            raise ValueError(f"`x0` must have the shape of `b`, {y.shape}; got {x.shape}.")
        return x

    return jax.tree_util.tree_map(leaf, x0, b)


def as_operator(A, b) -> lx.AbstractLinearOperator:
    """A square array, a lineax operator, or a matvec callable, as a lineax operator; shapes
    and (pytree) structures are checked against `b` here, at trace time."""
    pytree = not is_single_array(b)
    if isinstance(A, lx.AbstractLinearOperator):
        op = A
    elif eqx.is_array_like(A) and not callable(A):
        if pytree:
            raise TypeError(
                "A matrix `A` acts on single-array vectors, but `b` is a pytree "
                f"({jax.tree_util.tree_structure(b)}). Pass lx.PyTreeLinearOperator(matrix, "
                "structure), a lineax operator, or a matvec callable on pytrees; or flatten "
                "`b` with jax.flatten_util.ravel_pytree."
            )
        A = jnp.asarray(A)
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(
                f"`A` must be a square matrix; got shape {A.shape}. For a rectangular "
                "least-squares problem use lineax.linear_solve with lx.QR()."
            )
        if not jnp.issubdtype(A.dtype, jnp.inexact):
            A = A.astype(jnp.result_type(float))
        op = lx.MatrixLinearOperator(A)
    elif callable(A):
        op = lx.FunctionLinearOperator(A, jax.eval_shape(lambda: b))
    else:
        raise TypeError(
            "`A` must be a square array, a lineax operator, or a matvec callable v -> A v; "
            f"got {type(A).__name__}."
        )
    if not same_vector_structure(op.in_structure(), op.out_structure()):
        raise ValueError(
            "`A` must be square (same input and output structure); got "
            f"{op.in_structure()} -> {op.out_structure()}."
        )
    b_struct = jax.eval_shape(lambda: b)
    out = op.out_structure()
    if pytree or not is_single_array(out):
        if not same_vector_structure(out, b_struct):
            raise ValueError(
                f"`b` has the structure {b_struct} but `A` maps vectors of structure "
                f"{op.in_structure()} to {out}; they must match (shapes and dtypes)."
            )
        return op
    if getattr(out, "shape", None) != b_struct.shape:
        raise ValueError(
            f"`b` has shape {b_struct.shape} but `A` maps vectors of shape "
            f"{getattr(op.in_structure(), 'shape', op.in_structure())} to shape "
            f"{getattr(out, 'shape', out)}; they must match."
        )
    return op


def flat_system(A, b, x0=None):
    """`A x = b` on flat vectors, for the solvers that keep vectors as rows of a matrix
    (RecycledCG's Ritz space, GCRO-DR's recycled space): `(operator, flat operator, flat b,
    flat x0 (zeros when None), unravel)`; a grid or a pytree `b` is flattened (one dtype)."""
    b = as_vector(b)
    op = as_operator(A, b)
    bf, unravel = tree_ravel(b)
    mv = lambda v: tree_ravel(op.mv(unravel(v)))[0]
    flat = lx.FunctionLinearOperator(mv, jax.ShapeDtypeStruct(bf.shape, bf.dtype))
    x = jnp.zeros_like(bf) if x0 is None else tree_ravel(x0)[0].astype(bf.dtype)
    if x.shape != bf.shape:
        raise ValueError(f"`x0` must have the shape (structure) of `b`; got {x.size} entries.")
    return op, flat, bf, x, unravel


@eqx.filter_jit
def _solve(operator, b, solver, x0, throw):
    if not isinstance(operator, lx.AbstractLinearOperator):  # a matvec, held as data
        operator = as_operator(operator, b)
    options = {} if x0 is None else {"y0": x0}
    # With throw=False no solve may raise, the derivative's transpose/tangent solves included:
    # lineax raises on those unconditionally, so the solver reports instead of failing.
    run = solver if throw else ReportedSolver(solver, quiet=True)
    out = lx.linear_solve(operator, b, run, options=options, throw=False)
    stats = dict(out.stats)
    result = stats.pop("result", out.result)
    result = result if isinstance(result, RESULTS) else RESULTS.promote(result)
    if "error" not in stats:  # direct solvers: report the same error measure as the others
        r = tree_sub(b, operator.mv(out.value))
        stats["error"] = jax.lax.stop_gradient(tree_norm_scaled(r) / safe_norm_b(b))
        stats.setdefault("num_steps", jnp.array(0, jnp.int32))
    sol = Solution(value=out.value, result=result, stats=stats)
    return apply_throw(sol, throw)


def solve(
    A: Array | lx.AbstractLinearOperator | Callable[[PyTree[Array]], PyTree[Array]],
    b: PyTree[Array],
    solver: lx.AbstractLinearSolver = CG(),
    *,
    x0: PyTree[Array] | None = None,
    throw: bool = True,
) -> Solution:
    """Solve `A x = b`, differentiably.

    Derivatives flow to `b` and to whatever parameterises `A` (the entries of a matrix, the
    arrays inside a lineax operator, or the arrays a matvec callable closes over), in forward
    and reverse mode. They come from lineax's `linear_solve` rule, which is the implicit
    function theorem for `Ax − b = 0`: `ẋ = A⁻¹(ḃ − Ȧx)`, and in reverse mode one adjoint
    solve `Aᵀλ = x̄` with the same solver (`solver.transpose`), never through the iterations.
    We use that rule rather than the core's `implicit_jvp`, because for a linear problem it is
    the same formula with the optimality function's Jacobian already known (`A` itself), it
    makes every jaxsolve linear solver a drop-in lineax solver (e.g. for
    `js.ImplicitAdjoint(linear_solver=...)`), and it applies unchanged to lineax's direct
    solvers.

    **Arguments:**

    - `A`: a square matrix, a `lineax.AbstractLinearOperator` (e.g.
      `lx.PyTreeLinearOperator`, or `lx.FunctionLinearOperator` with a pytree input
      structure), or a callable `v -> A v` (matrix-free; `v` has the shape of `b`, which may
      be a grid, or its structure when `b` is a pytree).
    - `b`: the right-hand side: an array, or a pytree of arrays of one floating dtype (then
      `A` is an operator or a matvec on such pytrees; CG, GMRES, BiCGStab, FlexibleCG, Jacobi,
      the Jacobi preconditioner and lineax's solvers accept them; SOR, SSOR and the SSOR
      preconditioner sweep a matrix and refuse them).
    - `solver`: `js.linear.CG` (default; symmetric positive definite `A`), `GMRES`,
      `BiCGStab`, `Jacobi`, `SOR`, `SSOR`, or any lineax solver (`lx.LU()`, `lx.Cholesky()`,
      `lx.QR()`, ...).
    - `x0`: a starting point for iterative solvers (no derivative flows to it).
    - `throw`: raise if the solve failed; with `throw=False` (e.g. under `vmap`) read
      `sol.result`, one per system.

    **Returns:** a `js.Solution` with `value` (the solution `x`), `result`, and `stats`
    (`num_steps`, `error` = `‖b − Ax‖/‖b‖`, and `num_matvecs` for jaxsolve's iterative solvers).
    For a pytree `b`, `value` has its structure and `‖·‖` is the norm of all leaves together.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    b = jnp.array([1.0, 2.0])
    sol = js.linear.solve(A, b, solver=js.linear.CG(tol=1e-6))
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, b), atol=1e-6)

    # derivative w.r.t. a parameter of a matrix-free A
    loss = lambda t: js.linear.solve(lambda v: A @ v + t * v, b).value.sum()
    ref = lambda t: jnp.linalg.solve(A + t * jnp.eye(2), b).sum()
    assert jnp.allclose(jax.grad(loss)(0.5), jax.grad(ref)(0.5), atol=1e-5)

    # pytree vectors: a matvec on dicts
    mv = lambda v: {"u": 2.0 * v["u"] + v["w"][:1], "w": v["w"] + jnp.pad(v["u"], (0, 1))}
    x = js.linear.solve(mv, {"u": jnp.ones(1), "w": jnp.ones(2)}, js.linear.GMRES(tol=1e-6)).value
    assert jnp.allclose(mv(x)["w"], 1.0, atol=1e-5)
    ```
    """
    if not isinstance(solver, lx.AbstractLinearSolver):
        raise TypeError(
            "`solver` must be a lineax solver, e.g. js.linear.CG(), js.linear.GMRES(), "
            f"js.linear.SOR(omega=1.5) or lx.LU(); got {type(solver).__name__}."
        )
    b = as_vector(b)
    if callable(A) and not isinstance(A, lx.AbstractLinearOperator):
        # A matvec is held as data (`function_as_data`): a new closure of the same code, over
        # new arrays, is the same compiled program, and the arrays are inputs of it. The
        # operator is built (and checked) inside the jit.
        operator = function_as_data(A)
    else:
        operator = as_operator(A, b)
    if isinstance(solver, AbstractIterativeLinearSolver):
        # Python floats (tol, omega) become arrays: new values never recompile.
        solver = floats_to_arrays(solver)
    if x0 is not None:
        x0 = _like_b(x0, b)
    return _solve(operator, b, solver, x0, throw)
