"""Flexible conjugate directions: any (even nonlinear) map of the residual gives the next
direction, A-orthogonalised against the last few directions (the iteration of DCDM)."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Scalar

from .._iterate import tree_all_finite
from .._solution import RESULTS
from .._tree import tree_dtype, tree_sub
from ._cg import descend
from ._common import (
    DEFAULT_MAX_STEPS,
    AbstractIterativeLinearSolver,
    AbstractLinearIteration,
    LinearProblem,
    check_square,
    dot,
    initial_status,
    status_of,
)
from ._preconditioners import AbstractPreconditioner, as_preconditioner


class _FCGState(eqx.Module):
    r: Any  # a vector: an array, or a pytree of arrays
    p: Any  # (k, *shape) per leaf: the last k directions (zeros where unused)
    ap: Any  # (k, *shape) per leaf: A times them
    pap: Array  # (k,): pᵀAp of each (zero where unused)
    slot: Array  # where the next direction goes
    res_norm: Scalar
    num_matvecs: Array
    status: RESULTS


class _FCGIteration(AbstractLinearIteration):
    tol: Any
    direction: Any  # r -> direction, or None (the residual itself)
    num_orth: int = eqx.field(static=True)

    def init(self, problem, y, options):
        r = tree_sub(problem.b, problem.operator.mv(y))
        k = self.num_orth
        zeros = jax.tree_util.tree_map(lambda x: jnp.zeros((k, *x.shape), x.dtype), r)
        return _FCGState(
            r,
            zeros,
            zeros,
            jnp.zeros((k,), tree_dtype(r)),
            jnp.array(0, jnp.int32),
            jnp.sqrt(dot(r, r)),
            jnp.array(1, jnp.int32),
            initial_status(jnp.array(True)),
        )

    def step(self, problem, y, state):
        r = state.r
        # The direction only matters up to scale: feed the map a unit residual, so that a
        # network sees inputs of the size it was trained on.
        scale = jnp.where(state.res_norm > 0, state.res_norm, 1)
        rn = jax.tree_util.tree_map(lambda x: x / scale, r)
        z = rn if self.direction is None else self.direction(rn)
        z = _like(z, r)
        # A-orthogonalise against the stored directions (unused slots have pAp = 0).
        used = state.pap > 0
        coef = jax.vmap(lambda ap: dot(z, ap))(state.ap) / jnp.where(used, state.pap, 1)
        coef = jnp.where(used, coef, 0)
        p = tree_sub(z, jax.tree_util.tree_map(lambda P: jnp.tensordot(coef, P, axes=1), state.p))
        ap = problem.operator.mv(p)
        # The exact line search along p: CG's own update.
        y, r, pap, ok, finite = descend(y, r, p, ap, dot(p, r))
        finite = finite & tree_all_finite(z)
        ok = ok & finite
        slot = state.slot
        put = lambda stack, v: jax.tree_util.tree_map(lambda S, x: S.at[slot].set(x), stack, v)
        new = _FCGState(
            r,
            put(state.p, p),
            put(state.ap, ap),
            state.pap.at[slot].set(jnp.where(ok, pap, 0)),
            (slot + 1) % self.num_orth,
            jnp.where(ok, jnp.sqrt(dot(r, r)), state.res_norm),
            state.num_matvecs + 1,
            status_of(finite, ok, RESULTS.not_positive_definite),
        )
        return y, new


def _like(z, r):
    """The direction map's output `z` with the structure, shapes and dtype of the residual."""
    if jax.tree_util.tree_structure(z) != jax.tree_util.tree_structure(r):
        raise TypeError(
            "FlexibleCG's `direction` must return a vector with the structure of its input; "
            f"got {jax.tree_util.tree_structure(z)} for {jax.tree_util.tree_structure(r)}."
        )
    return jax.tree_util.tree_map(lambda zi, ri: jnp.asarray(zi, ri.dtype).reshape(ri.shape), z, r)


class FlexibleCG(AbstractIterativeLinearSolver):
    """Flexible conjugate directions for symmetric positive definite `A`, with the search
    direction produced by any map of the residual — a preconditioner, or a trained network
    (the Deep Conjugate Direction Method, Kaneda et al., ICML 2023).

    Each step computes `z = direction(r/‖r‖)`, A-orthogonalises it against the last
    `num_orth` directions (`p = z − Σ_j (zᵀA p_j / p_jᵀA p_j) p_j`), and takes the exact line
    search step `α = pᵀr / pᵀAp` along it: one matvec per step. The map may be nonlinear and
    need not be symmetric (this is why the method is *flexible*); it only has to give
    directions of descent. With `direction=None` (the residual itself) and `num_orth ≥ 1` it is
    CG; with `direction = A⁻¹` it converges in one step. Stops at relative residual
    `‖b − Ax‖/‖b‖ ≤ tol`; `pᵀAp ≤ 0` stops it with
    `RESULTS.not_positive_definite`, a non-finite direction with `RESULTS.nonfinite`.

    Each step reduces the A-norm of the error (the line search is exact), but only a good
    direction map makes it fast: with an untrained network convergence can be far slower than
    CG (it then ends with `RESULTS.max_steps_reached`). Train it first (`js.linear.train_dcdm`)
    and compare with `direction=None` on your problem.

    **Arguments:**

    - `direction`: `None`, a callable `r -> d` (e.g. a trained `js.linear.GridUNet`; its
      arrays are leaves of the solver, so a new network of the same structure does not
      recompile), a lineax operator, or a preconditioner object such as
      `js.linear.JacobiPreconditioner()`.
    - `tol`, `max_steps`: relative-residual tolerance and iteration limit.
    - `num_orth`: how many previous directions to orthogonalise against (DCDM uses 2).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    A = js.linear.Stencil5.poisson((8, 8))
    b = jnp.ones((8, 8))
    inv = jnp.linalg.inv(A.as_matrix())
    exact = js.linear.FlexibleCG(direction=lambda r: (inv @ r.ravel()).reshape(r.shape))
    sol = js.linear.solve(A, b, solver=exact)
    assert sol.stats["num_steps"] == 1
    cg = js.linear.solve(A, b, solver=js.linear.FlexibleCG(tol=1e-5))
    assert jnp.allclose(cg.value, sol.value, atol=1e-5)
    ```
    """

    direction: AbstractPreconditioner | None = eqx.field(default=None, converter=as_preconditioner)
    tol: float | Array | None = None
    max_steps: int = eqx.field(static=True, default=DEFAULT_MAX_STEPS)
    num_orth: int = eqx.field(static=True, default=2)

    def __check_init__(self):
        if not isinstance(self.num_orth, int) or self.num_orth < 1:
            raise ValueError(
                "FlexibleCG needs `num_orth` ≥ 1 (the number of previous directions to "
                f"A-orthogonalise against; DCDM uses 2); got {self.num_orth!r}."
            )

    def init(self, operator, options):
        check_square(operator, "FlexibleCG")
        d = None if self.direction is None else self.direction.build(operator)
        return operator, d

    def iteration(self, state, vector):
        operator, d = state
        tol = self.resolved_tol(tree_dtype(vector))
        return _FCGIteration(tol, d, self.num_orth), LinearProblem(operator, vector)

    def transpose(self, state, options):
        # For the adjoint solve: Aᵀ = A, and the direction map needs no symmetry here.
        return state, options

    def conj(self, state, options):
        operator, d = state
        return (lx.conj(operator), d), options
