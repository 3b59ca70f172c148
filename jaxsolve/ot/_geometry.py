"""Geometries: what an OT problem's cost is. `Geometry` holds an `n × m` cost matrix;
`PointCloud` holds two point clouds and a ground cost, and can work block by block so that
the `n × m` cost is never held in memory.

Solvers only use the primitives below (`lse`, `apply_kernel`, `kernel`), each taking the
`epsilon` to use explicitly so that a solver can anneal it.
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._costs import AbstractCost, SqEuclidean

_RELATIVE = (None, "mean", "max", "median", "std")


def _scale(C, how):
    if how == "mean":
        return jnp.mean(C)
    if how == "max":
        return jnp.max(C)
    if how == "median":
        return jnp.median(C)
    return jnp.std(C)


def _check_real(x, what):
    if jnp.issubdtype(jnp.result_type(x), jnp.complexfloating):
        raise TypeError(
            f"{what} must be real; got dtype {jnp.result_type(x)}. Optimal transport needs real "
            "costs: pass e.g. the modulus or a real cost matrix."
        )


def _check_epsilon(epsilon):
    if eqx.is_array_like(epsilon):
        _check_real(epsilon, "`epsilon`")
    if isinstance(epsilon, (int, float)) and not epsilon > 0:
        raise ValueError(f"`epsilon` must be positive; got {epsilon!r}.")
    if eqx.is_array(epsilon) and jnp.ndim(epsilon) != 0:
        raise ValueError(f"`epsilon` must be a scalar; got shape {jnp.shape(epsilon)}.")


def _as_epsilon(epsilon, dtype):
    # One array type for every way of giving ε (a Python float, a weakly or strongly typed
    # array): they are then inputs of the same compiled program.
    number = isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool)
    floats = eqx.is_array(epsilon) and jnp.issubdtype(jnp.result_type(epsilon), jnp.floating)
    return jnp.asarray(epsilon, dtype) if number or floats else epsilon


class AbstractGeometry(eqx.Module):
    """A cost between `n` source and `m` target points, with an entropic regularisation.

    Subclasses provide the primitives solvers use, each with `eps` passed explicitly
    (solvers anneal it); `h`, `f`, `g` may hold `-inf` for points of zero weight:

    - `lse(h, eps, axis)`: `axis=1`: `LSE_j(h_j − C_ij/eps)` (length `n`);
      `axis=0`: `LSE_i(h_i − C_ij/eps)` (length `m`).
    - `apply_kernel(f, g, eps, v, axis)`: `Σ_j exp((f_i+g_j−C_ij)/eps) v_j` (`axis=1`) or
      `Σ_i exp((f_i+g_j−C_ij)/eps) v_i` (`axis=0`); `v` a vector or a matrix.
    - `epsilon`: the regularisation actually used (relative ones multiplied by the cost scale).
    """

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int]: ...

    @property
    @abc.abstractmethod
    def dtype(self): ...

    @property
    @abc.abstractmethod
    def epsilon(self) -> Array: ...

    @property
    @abc.abstractmethod
    def cost_matrix(self) -> Float[Array, "n m"]: ...

    @property
    def is_dense(self) -> bool:
        """Whether the cost matrix is held in memory (kernel-mode solvers need it)."""
        return True

    def all_finite(self) -> Array:
        """Whether the cost is free of NaN/inf (checked by `OTProblem.validate`)."""
        return jnp.all(jnp.isfinite(self.cost_matrix))

    def dense(self) -> "AbstractGeometry":
        """This geometry with its cost matrix computed (a no-op for dense ones)."""
        return self

    def lse(self, h, eps, axis):
        C = self.cost_matrix
        if axis == 1:
            return jax.nn.logsumexp(h[None, :] - C / eps, axis=1)
        return jax.nn.logsumexp(h[:, None] - C / eps, axis=0)

    def kernel(self, f, g, eps):
        """The matrix `exp((f_i + g_j − C_ij)/eps)` (for `f = g = 0`: the Gibbs kernel)."""
        return jnp.exp((f[:, None] + g[None, :] - self.cost_matrix) / eps)

    def apply_kernel(self, f, g, eps, v, axis):
        K = self.kernel(f, g, eps)
        return K @ v if axis == 1 else K.T @ v


class Geometry(AbstractGeometry):
    """An OT geometry given by its cost matrix.

    **Arguments:**

    - `cost_matrix`: an `(n, m)` array `C_ij`, the cost of moving mass from `i` to `j`.
    - `epsilon`: the entropic regularisation (a pytree leaf: differentiable).
    - `relative_epsilon`: `None` (default: `epsilon` is absolute) or `"mean"`, `"max"`,
      `"median"`, `"std"`: `epsilon` is multiplied by that statistic of the cost matrix.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    C = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    sol = js.ot.solve(js.ot.Geometry(C, epsilon=0.01))
    assert jnp.allclose(sol.plan, jnp.eye(2) / 2, atol=1e-6)
    ```
    """

    cost: Float[Array, "n m"]
    epsilon_: Array | float
    relative_epsilon: str | None = eqx.field(static=True, default=None)

    def __init__(self, cost_matrix, epsilon: float | Array = 0.05, relative_epsilon=None):
        cost_matrix = jnp.asarray(cost_matrix)
        _check_real(cost_matrix, "Geometry's `cost_matrix`")
        if cost_matrix.ndim != 2:
            raise ValueError(
                f"Geometry's `cost_matrix` must be 2-D (n, m); got shape {cost_matrix.shape}."
            )
        if not jnp.issubdtype(cost_matrix.dtype, jnp.floating):
            cost_matrix = cost_matrix.astype(float)
        _check_epsilon(epsilon)
        if relative_epsilon not in _RELATIVE:
            raise ValueError(
                f"`relative_epsilon` must be one of {_RELATIVE}; got {relative_epsilon!r}."
            )
        self.cost = cost_matrix
        # An array, not a Python float: a new epsilon is new data, never a recompilation.
        self.epsilon_ = _as_epsilon(epsilon, cost_matrix.dtype)
        self.relative_epsilon = relative_epsilon

    @property
    def shape(self):
        return self.cost.shape

    @property
    def dtype(self):
        return self.cost.dtype

    @property
    def cost_matrix(self):
        return self.cost

    @property
    def epsilon(self):
        eps = jnp.asarray(self.epsilon_, dtype=self.dtype)
        if self.relative_epsilon is None:
            return eps
        return eps * _scale(self.cost, self.relative_epsilon)


class PointCloud(AbstractGeometry):
    """An OT geometry between two point clouds, with a ground cost.

    **Arguments:**

    - `x`: `(n, d)` source points; `y`: `(m, d)` target points.
    - `epsilon`: the entropic regularisation (a pytree leaf: differentiable).
    - `cost_fn`: a ground cost, `js.ot.SqEuclidean()` (default), `js.ot.PNorm(p, q)`,
      `js.ot.Cosine()`, or any `js.ot.AbstractCost`.
    - `batch_size`: `None` (default) computes the `n × m` cost matrix once per solve; an int
      never holds it: every pass recomputes the cost in blocks of `batch_size` rows (or
      columns), so memory is `O((n + m) · batch_size)`. Use it for large `n`.
    - `relative_epsilon`: `None` (absolute), or `"mean"`/`"max"`/`"median"`/`"std"`: scale
      `epsilon` by that statistic of the cost (`"mean"` only when `batch_size` is set).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (30, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (20, 2)) + 1.0
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.1))
    sol_blocks = js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.1, batch_size=8))
    assert jnp.allclose(sol.transport_cost, sol_blocks.transport_cost, rtol=1e-5)
    assert sol.plan.shape == (30, 20)
    ```
    """

    x: Float[Array, "n d"]
    y: Float[Array, "m d"]
    epsilon_: Array | float
    cost_fn: AbstractCost
    batch_size: int | None = eqx.field(static=True, default=None)
    relative_epsilon: str | None = eqx.field(static=True, default=None)

    def __init__(self, x, y, epsilon=0.05, cost_fn=None, batch_size=None, relative_epsilon=None):
        x = jnp.asarray(x)
        y = jnp.asarray(y)
        _check_real(x, "PointCloud's `x`")
        _check_real(y, "PointCloud's `y`")
        if x.ndim == 1:
            x = x[:, None]
        if y.ndim == 1:
            y = y[:, None]
        if x.ndim != 2 or y.ndim != 2:
            raise ValueError(
                f"PointCloud needs x of shape (n, d) and y of shape (m, d); got {x.shape} and "
                f"{y.shape}."
            )
        if x.shape[1] != y.shape[1]:
            raise ValueError(
                f"PointCloud's x and y must have the same dimension d; got x {x.shape} and "
                f"y {y.shape}."
            )
        dtype = jnp.result_type(x.dtype, y.dtype, float)
        x, y = x.astype(dtype), y.astype(dtype)
        _check_epsilon(epsilon)
        cost_fn = SqEuclidean() if cost_fn is None else cost_fn
        if not isinstance(cost_fn, AbstractCost):
            raise TypeError(
                "`cost_fn` must be a js.ot cost (SqEuclidean(), PNorm(p), Cosine(), or a "
                f"subclass of js.ot.AbstractCost); got {type(cost_fn).__name__}."
            )
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"`batch_size` must be None or a positive int; got {batch_size!r}.")
        if relative_epsilon not in _RELATIVE:
            raise ValueError(
                f"`relative_epsilon` must be one of {_RELATIVE}; got {relative_epsilon!r}."
            )
        if batch_size is not None and relative_epsilon not in (None, "mean"):
            raise ValueError("With `batch_size`, `relative_epsilon` may only be None or 'mean'.")
        self.x, self.y = x, y
        self.epsilon_ = _as_epsilon(epsilon, x.dtype)
        self.cost_fn = cost_fn
        self.batch_size = batch_size
        self.relative_epsilon = relative_epsilon

    @property
    def shape(self):
        return (self.x.shape[0], self.y.shape[0])

    @property
    def dtype(self):
        return self.x.dtype

    @property
    def is_dense(self):
        return self.batch_size is None

    def all_finite(self):
        if self.batch_size is None:
            return super().all_finite()
        return jnp.all(jnp.isfinite(self.x)) & jnp.all(jnp.isfinite(self.y))

    @property
    def cost_matrix(self):
        return self.cost_fn.all_pairs(self.x, self.y)

    def dense(self):
        if self.batch_size is not None:
            return self
        return Geometry(self.cost_matrix, self.epsilon_, self.relative_epsilon)

    @property
    def epsilon(self):
        eps = jnp.asarray(self.epsilon_, dtype=self.dtype)
        if self.relative_epsilon is None:
            return eps
        if self.batch_size is None:
            return eps * _scale(self.cost_matrix, self.relative_epsilon)
        n, m = self.shape
        total = self._map(lambda C, _: jnp.sum(C, axis=1), 1, jnp.zeros(n, self.dtype))
        return eps * (jnp.sum(total) / n) / m  # n·m can overflow int32

    # Block machinery: `fn(C_block, side_block)` for row blocks (axis=1, C_block (bs, m)) or
    # column blocks (axis=0, C_block (n, bs)); outputs are concatenated along the block axis.
    def _map(self, fn, axis, side):
        if self.batch_size is None:
            return fn(self.cost_matrix, side)
        pts, other = (self.x, self.y) if axis == 1 else (self.y, self.x)
        k = pts.shape[0]
        bs = min(self.batch_size, k)
        nb = math.ceil(k / bs)
        pad = nb * bs - k
        pts_p = jnp.concatenate([pts, jnp.broadcast_to(pts[:1], (pad,) + pts.shape[1:])])
        side_p = jnp.concatenate([side, jnp.zeros((pad,) + side.shape[1:], side.dtype)])
        pts_b = pts_p.reshape((nb, bs) + pts.shape[1:])
        side_b = side_p.reshape((nb, bs) + side.shape[1:])

        # Checkpointed: a derivative (the implicit adjoint's linearisation, a vjp in the points)
        # keeps only each block's inputs and recomputes the block, so it stays O((n + m)·batch)
        # in memory instead of storing every block's n × m residuals.
        @jax.checkpoint
        def one(args):
            pb, sb = args
            C = (
                self.cost_fn.all_pairs(pb, other)
                if axis == 1
                else self.cost_fn.all_pairs(other, pb)
            )
            return fn(C, sb)

        out = jax.lax.map(one, (pts_b, side_b))
        return out.reshape((nb * bs,) + out.shape[2:])[:k]

    def lse(self, h, eps, axis):
        if self.batch_size is None:
            return super().lse(h, eps, axis)
        n, m = self.shape
        if axis == 1:
            return self._map(
                lambda C, _: jax.nn.logsumexp(h[None, :] - C / eps, axis=1),
                1,
                jnp.zeros(n, self.dtype),
            )
        return self._map(
            lambda C, _: jax.nn.logsumexp(h[:, None] - C / eps, axis=0), 0, jnp.zeros(m, h.dtype)
        )

    def apply_kernel(self, f, g, eps, v, axis):
        if self.batch_size is None:
            return super().apply_kernel(f, g, eps, v, axis)
        if axis == 1:
            return self._map(lambda C, fb: jnp.exp((fb[:, None] + g[None, :] - C) / eps) @ v, 1, f)
        return self._map(lambda C, gb: jnp.exp((f[:, None] + gb[None, :] - C) / eps).T @ v, 0, g)


def _plan_dot_cost_dense(geom, f, g, eps):
    C = geom.cost_matrix
    return jnp.sum(jnp.exp((f[:, None] + g[None, :] - C) / eps) * C)


def plan_dot_cost(geom: AbstractGeometry, f, g, eps):
    """`Σ_ij P_ij C_ij` for `P_ij = exp((f_i + g_j − C_ij)/eps)`, block by block if needed."""
    if geom.is_dense:
        return _plan_dot_cost_dense(geom, f, g, eps)
    return jnp.sum(
        geom._map(  # type: ignore[attr-defined]
            lambda C, fb: jnp.sum(jnp.exp((fb[:, None] + g[None, :] - C) / eps) * C, axis=1), 1, f
        )
    )


def mean_cost(geom: AbstractGeometry):
    """The mean of the cost matrix, block by block if needed."""
    if geom.is_dense:
        return jnp.mean(geom.cost_matrix)
    n, m = geom.shape
    rows = geom._map(lambda C, _: jnp.sum(C, axis=1), 1, jnp.zeros(n, geom.dtype))  # type: ignore[attr-defined]
    return (jnp.sum(rows) / n) / m  # n·m (1e10 at n = m = 1e5) overflows int32
