"""`QPProblem`: min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≤ h, lower ≤ x ≤ upper, written once in the
stacked form l ≤ Cx ≤ u (C = [A; G; I]) that the solver and the implicit derivative share."""

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._iterate import tree_all_finite
from .._problem import AbstractProblem, default_tol, krylov_adjoint
from .._solution import RESULTS


def _inf_norm(v):
    return jnp.max(jnp.abs(v), initial=0.0)


class QPProblem(AbstractProblem):
    """The convex quadratic program `min ½xᵀQx + cᵀx` s.t. `Ax = b`, `Gx ≤ h`,
    `lower ≤ x ≤ upper`, as the stacked constraint `l ≤ Cx ≤ u` with `C = [A; G; I]`
    (`l = [b; −∞; lower]`, `u = [b; h; upper]`; the identity block only when bounds are given).

    The unknown is `(x, y)`, `y` the stacked multipliers (positive where an upper side is
    active, negative where a lower side is). The optimality function is the KKT system on the
    active set at the solution (OptNet): `Qx + c + Cᵀy = 0`, and per constraint row
    `C_i x = bound_i` when active (equalities always), `y_i = 0` otherwise. Its Jacobian is
    what the implicit derivative solves with.

    `Q` is a symmetric matrix (only its symmetric part is used) or a matvec `v -> Qv`.
    Error measure (`stats["error"]`): the largest of the relative primal residual, the
    relative dual residual `‖Qx + c + Cᵀy‖∞` and the complementarity/sign error.

    **Example:**

    ```python
    import jax.numpy as jnp
    from jaxsolve.qp import QPProblem

    p = QPProblem(jnp.eye(2), -jnp.ones(2), upper=jnp.array([0.5, 2.0]))
    x, y = jnp.array([0.5, 1.0]), jnp.array([0.5, 0.0])   # the solution and its multipliers
    dx, dy = p.optimality((x, y))
    assert jnp.allclose(dx, 0) and jnp.allclose(dy, 0) and p.kkt_error(x, y) < 1e-12
    ```
    """

    Q: Any  # a symmetric (n, n) matrix, or a closure-converted matvec
    c: Float[Array, " n"]
    A: Float[Array, "p n"]
    b: Float[Array, " p"]
    G: Float[Array, "q n"]
    h: Float[Array, " q"]
    lower: Float[Array, " nb"]
    upper: Float[Array, " nb"]
    error_name: ClassVar[str] = "error"

    def __init__(self, Q, c, A=None, b=None, G=None, h=None, lower=None, upper=None):
        c = jnp.asarray(c)
        n = c.shape[0]
        dtype = c.dtype
        self.Q = 0.5 * (Q + Q.T) if not callable(Q) else Q
        self.c = c
        self.A = jnp.zeros((0, n), dtype) if A is None else A
        self.b = jnp.zeros((0,), dtype) if b is None else b
        self.G = jnp.zeros((0, n), dtype) if G is None else G
        self.h = jnp.zeros((0,), dtype) if h is None else h
        if lower is None and upper is None:
            self.lower = self.upper = jnp.zeros((0,), dtype)
        else:
            self.lower = jnp.full((n,), -jnp.inf, dtype) if lower is None else lower
            self.upper = jnp.full((n,), jnp.inf, dtype) if upper is None else upper

    # --- the data -----------------------------------------------------------------------------

    @property
    def n(self) -> int:
        return self.c.shape[0]

    @property
    def has_bounds(self) -> bool:
        return self.lower.shape[0] > 0

    @property
    def dense(self) -> bool:
        return not callable(self.Q)

    def qmv(self, x):
        return self.Q @ x if self.dense else self.Q(x)

    def cmv(self, x):
        parts = [self.A @ x, self.G @ x] + ([x] if self.has_bounds else [])
        return jnp.concatenate(parts)

    def ctmv(self, y):
        p, q = self.b.shape[0], self.h.shape[0]
        out = self.A.T @ y[:p] + self.G.T @ y[p : p + q]
        return out + y[p + q :] if self.has_bounds else out

    def gram(self, w):
        """`Cᵀ diag(w) C` as a dense matrix."""
        p, q = self.b.shape[0], self.h.shape[0]
        out = (self.A.T * w[:p]) @ self.A + (self.G.T * w[p : p + q]) @ self.G
        return out + jnp.diag(w[p + q :]) if self.has_bounds else out

    def bounds(self):
        """`(l, u)` of the stacked constraint `l ≤ Cx ≤ u`."""
        q = self.h.shape[0]
        lo = jnp.concatenate([self.b, jnp.full((q,), -jnp.inf, self.h.dtype), self.lower])
        up = jnp.concatenate([self.b, self.h, self.upper])
        return lo, up

    def objective(self, x):
        return 0.5 * jnp.dot(x, self.qmv(x)) + jnp.dot(self.c, x)

    # --- optimality and errors ----------------------------------------------------------------

    def active_sides(self, cx, y):
        """`(upper_active, lower_active)` masks: where `Cx + y` leaves `[l, u]` (the projection
        form of complementarity); equalities (`l = u`) count on both sides."""
        lo, up = self.bounds()
        v = jax.lax.stop_gradient(cx + y)
        eq = jax.lax.stop_gradient(lo == up)
        return (v > up) | eq, (v < lo) | eq

    def optimality(self, xy):
        x, y = xy
        cx = self.cmv(x)
        lo, up = self.bounds()
        upper_active, lower_active = self.active_sides(cx, y)
        active = upper_active | lower_active
        bound = jnp.where(upper_active, up, jnp.where(lower_active, lo, 0.0))
        dual = self.qmv(x) + self.c + self.ctmv(y)
        primal = jnp.where(active, cx - bound, -y)
        return dual, primal

    def adjoint_solver(self, y):
        return krylov_adjoint(y, symmetric=False)

    @staticmethod
    def default_tol(dtype) -> float:
        return default_tol(dtype, 1e-8, 1e-4)

    def residuals(self, x, y, cx=None):
        """`(primal, dual, complementarity)` relative residuals of `(x, y)` (∞-norms): the
        distance of `Cx` to `[l, u]`, `Qx + c + Cᵀy`, and `min(|y_i|, slack on y_i's side)`
        (zero iff the signs of `y` and complementary slackness hold)."""
        cx = self.cmv(x) if cx is None else cx
        lo, up = self.bounds()
        qx, cty = self.qmv(x), self.ctmv(y)
        r_prim = _inf_norm(cx - jnp.clip(cx, lo, up)) / (1 + _inf_norm(cx))
        scale_d = 1 + jnp.maximum(jnp.maximum(_inf_norm(qx), _inf_norm(cty)), _inf_norm(self.c))
        r_dual = _inf_norm(qx + self.c + cty) / scale_d
        slack = jnp.where(y > 0, up - cx, jnp.where(y < 0, cx - lo, 0.0))
        comp = jnp.minimum(jnp.abs(y), jnp.maximum(slack, 0.0))
        r_comp = _inf_norm(comp) / (1 + jnp.maximum(_inf_norm(cx), _inf_norm(y)))
        return r_prim, r_dual, r_comp

    def kkt_error(self, x, y):
        """The error measure: the largest of the three relative residuals."""
        return jnp.max(jnp.stack(self.residuals(x, y)))

    def validate(self):
        """NaN data → `nonfinite`; crossed or impossible bounds → `primal_infeasible`; a dense
        `Q` that is not positive semidefinite → `nonconvex` (a Cholesky test of `Q + εI`)."""
        data = jax.lax.stop_gradient((self.c, self.A, self.b, self.G, self.h))
        finite = tree_all_finite(data)
        lo, up = jax.lax.stop_gradient(self.bounds())
        finite = finite & ~jnp.any(jnp.isnan(lo)) & ~jnp.any(jnp.isnan(up))
        crossed = jnp.any(lo > up) | jnp.any(up == -jnp.inf) | jnp.any(lo == jnp.inf)
        convex = jnp.array(True)
        if self.dense:
            Q = jax.lax.stop_gradient(self.Q)
            finite = finite & jnp.all(jnp.isfinite(Q))
            eps = 1e-9 if jnp.finfo(Q.dtype).bits > 32 else 1e-5
            scale = jnp.maximum(jnp.max(jnp.abs(jnp.diag(Q)), initial=0.0), 1.0)
            shifted = jnp.where(jnp.isfinite(Q), Q, 0.0) + eps * scale * jnp.eye(
                self.n, dtype=Q.dtype
            )
            convex = jnp.all(jnp.isfinite(jnp.linalg.cholesky(shifted)))
        result = RESULTS.where(convex, RESULTS.successful, RESULTS.nonconvex)
        result = RESULTS.where(crossed, RESULTS.primal_infeasible, result)
        return RESULTS.where(finite, result, RESULTS.nonfinite)


def check_shapes(Q, c, A, b, G, h, lower, upper) -> None:
    """Trace-time shape checks of `js.qp.solve`'s data, with messages saying what was expected."""
    if c.ndim != 1:
        raise ValueError(f"`c` must be a vector of shape (n,); got shape {c.shape}.")
    n = c.shape[0]
    if n == 0:
        raise ValueError("`c` is empty: the QP has no variables.")
    if not callable(Q):
        if Q.shape != (n, n):
            raise ValueError(
                f"`Q` must be an (n, n) matrix with n = len(c) = {n}; got shape {Q.shape}. "
                "Pass a matvec `v -> Q @ v` for a matrix-free Q."
            )
    else:
        out = jax.eval_shape(Q, jax.ShapeDtypeStruct((n,), c.dtype))
        if getattr(out, "shape", None) != (n,):
            raise ValueError(
                f"A matvec `Q` must map vectors of shape ({n},) to shape ({n},); got "
                f"{getattr(out, 'shape', type(out))}."
            )
    for M, v, mname, vname in ((A, b, "A", "b"), (G, h, "G", "h")):
        if (M is None) != (v is None):
            raise ValueError(f"`{mname}` and `{vname}` go together: give both or neither.")
        if M is None:
            continue
        if M.ndim != 2 or M.shape[1] != n:
            raise ValueError(f"`{mname}` must have shape (m, {n}); got shape {M.shape}.")
        if v.shape != (M.shape[0],):
            raise ValueError(
                f"`{vname}` must have shape ({M.shape[0]},) to match `{mname}` {M.shape}; got "
                f"shape {v.shape}."
            )
    for v, name in ((lower, "lower"), (upper, "upper")):
        if v is not None and v.shape != (n,):
            raise ValueError(f"`{name}` must be a scalar or have shape ({n},); got {v.shape}.")
