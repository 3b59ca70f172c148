"""A 5-point stencil on a 2-D grid as a lineax operator, with fast SOR sweeps."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
from jaxtyping import Array


def _stencil_mv(coeffs, u):
    c, w, e, n, s = coeffs
    p = jnp.pad(u, 1)
    return c * u + w * p[1:-1, :-2] + e * p[1:-1, 2:] + n * p[:-2, 1:-1] + s * p[2:, 1:-1]


class Stencil5(lx.FunctionLinearOperator):
    """A 5-point stencil on an `(N, M)` grid with zero (Dirichlet) boundary values:

    `(A u)[i, j] = c u[i, j] + w u[i, j−1] + e u[i, j+1] + n u[i−1, j] + s u[i+1, j]`,

    each coefficient an `(N, M)` array (or a scalar). Vectors stay `(N, M)` grids. It is a
    `lineax.FunctionLinearOperator` (so everything in lineax accepts it) that also exposes its
    coefficients, which lets `SOR`, `SSOR` and `SSORPreconditioner` sweep it in lexicographic
    order row by row in `O(N M²)` instead of a dense triangular solve. Differentiable with
    respect to the coefficients.

    **Arguments:** `center, west, east, north, south` (arrays broadcastable to the grid),
    `shape` (the grid shape, needed when all coefficients are scalars), `tags` (lineax tags).

    Constructors: `Stencil5.poisson(shape, shift=0.0)` (the 5-point Laplacian `4u − Σ neighbours`
    plus `shift·u`) and `Stencil5.darcy(a)` (`−∇·(a∇u)` with face coefficients the harmonic
    mean of `a`, unit grid spacing). Both are symmetric positive definite.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    A = js.linear.Stencil5.poisson((6, 5), shift=0.1)
    u = jnp.ones((6, 5))
    assert jnp.allclose(A.mv(u), (A.as_matrix() @ u.ravel()).reshape(6, 5))
    x = js.linear.solve(A, u, solver=js.linear.SOR(omega=1.3, tol=1e-6)).value
    assert jnp.allclose(A.mv(x), u, atol=1e-5)
    ```
    """

    center: Array
    west: Array
    east: Array
    north: Array
    south: Array

    def __init__(self, center, west, east, north, south, shape=None, tags=()):
        coeffs = [jnp.asarray(x) for x in (center, west, east, north, south)]
        if shape is None:
            shape = jnp.broadcast_shapes(*[x.shape for x in coeffs])
        if len(shape) != 2:
            raise ValueError(f"Stencil5 works on 2-D grids; got grid shape {shape}.")
        dtype = jnp.result_type(*coeffs, float)
        coeffs = [jnp.broadcast_to(x, shape).astype(dtype) for x in coeffs]
        # Couplings across the boundary multiply zero padding: zero them so that the matrix
        # (and the SOR sweeps, which read these arrays) agree with the matvec.
        coeffs[1] = coeffs[1].at[:, 0].set(0)
        coeffs[2] = coeffs[2].at[:, -1].set(0)
        coeffs[3] = coeffs[3].at[0, :].set(0)
        coeffs[4] = coeffs[4].at[-1, :].set(0)
        self.center, self.west, self.east, self.north, self.south = coeffs
        struct = jax.ShapeDtypeStruct(tuple(shape), dtype)
        # A module-level function with the coefficients as leaves (not a fresh closure), so new
        # coefficients of the same shape never recompile.
        fn = eqx.Partial(_stencil_mv, tuple(coeffs))
        super().__init__(fn, struct, tags=frozenset(tags), closure_convert=False)

    @classmethod
    def poisson(cls, shape, shift=0.0):
        shape = tuple(shape)
        tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)
        return cls(4.0 + jnp.asarray(shift), -1.0, -1.0, -1.0, -1.0, shape=shape, tags=tags)

    @classmethod
    def darcy(cls, a):
        a = jnp.asarray(a)
        hm = lambda x, y: 2 * x * y / (x + y)
        ax = hm(a[:, 1:], a[:, :-1])  # faces between (i, j-1) and (i, j)
        ay = hm(a[1:, :], a[:-1, :])
        zc = jnp.zeros((a.shape[0], 1), a.dtype)
        zr = jnp.zeros((1, a.shape[1]), a.dtype)
        west = jnp.concatenate([a[:, :1] * 2, ax], axis=1)  # boundary face: Dirichlet, 2a
        east = jnp.concatenate([ax, a[:, -1:] * 2], axis=1)
        north = jnp.concatenate([a[:1, :] * 2, ay], axis=0)
        south = jnp.concatenate([ay, a[-1:, :] * 2], axis=0)
        center = west + east + north + south
        del zc, zr
        tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)
        return cls(center, -west, -east, -north, -south, tags=tags)

    def transpose(self):
        # Aᵀ couples (i, j) to (i, j+1) with A's west coefficient of (i, j+1), and so on.
        z = lambda x: jnp.zeros_like(x[..., :1])
        zr = lambda x: jnp.zeros_like(x[:1])
        east_t = jnp.concatenate([self.west[:, 1:], z(self.west)], axis=1)
        west_t = jnp.concatenate([z(self.east), self.east[:, :-1]], axis=1)
        south_t = jnp.concatenate([self.north[1:], zr(self.north)], axis=0)
        north_t = jnp.concatenate([zr(self.south), self.south[:-1]], axis=0)
        return Stencil5(self.center, west_t, east_t, north_t, south_t, tags=self.tags)


@lx.diagonal.register(Stencil5)
def _(operator):
    return operator.center.reshape(-1)


class StencilSweep(eqx.Module):
    """Solve `(D/ω + L) x = r` (forward) or `(D/ω + U) x = r` (backward) for a `Stencil5`,
    row by row: each grid row is a bidiagonal system whose inverse is precomputed."""

    inv: Array  # (N, M, M): inverse of each row's bidiagonal block
    couple: Array  # (N, M): coupling to the previous row (north) or next row (south)
    forward: bool = eqx.field(static=True)

    @classmethod
    def build(cls, op: Stencil5, omega, forward: bool):
        d = op.center / omega
        off = op.west[:, 1:] if forward else op.east[:, :-1]
        k = -1 if forward else 1

        def block(di, oi):
            return jnp.diag(di) + jnp.diag(oi, k=k)

        blocks = jax.vmap(block)(d, off)
        eye = jnp.eye(d.shape[1], dtype=d.dtype)
        inv = jax.vmap(lambda B: jsl.solve_triangular(B, eye, lower=forward))(blocks)
        return cls(inv, op.north if forward else op.south, forward)

    def __call__(self, r):
        shape = r.shape
        r = r.reshape(self.couple.shape)

        def body(prev, xs):
            inv, couple, ri = xs
            x = inv @ (ri - couple * prev)
            return x, x

        init = jnp.zeros_like(r[0])
        xs = (self.inv, self.couple, r)
        _, x = jax.lax.scan(body, init, xs, reverse=not self.forward, unroll=8)
        return x.reshape(shape)
