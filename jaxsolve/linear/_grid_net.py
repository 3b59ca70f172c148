"""A small convolutional U-Net on 2-D grids, for learned search directions."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray


def _conv(cin, cout, key):
    return eqx.nn.Conv2d(cin, cout, 3, padding=1, use_bias=False, key=key)


def _down(x):
    c, n, m = x.shape
    return x.reshape(c, n // 2, 2, m // 2, 2).mean(axis=(2, 4))


def _up(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class GridUNet(eqx.Module):
    """A small convolutional U-Net mapping a grid `(N, M)` to a grid `(N, M)`: the network of
    learned solvers on 2-D PDE grids (the DCDM direction `≈ A⁻¹ r` up to scale).

    Being convolutional (3×3 convolutions, zero padding = Dirichlet boundary, no biases) it
    applies to any grid whose sides are divisible by `2**levels`, so a network trained on
    small grids runs unchanged on larger ones. Each level applies a convolution, recurses on
    the 2×-averaged grid, adds the nearest-neighbour upsampled result back, and applies another
    convolution; the coarsest level applies `coarse_depth` convolutions. Without biases and
    with `activation=None` the network is a linear operator (a learned multigrid-like cycle),
    so its output scales with its input.

    **Arguments:**

    - `key`: a PRNG key for the initial weights.
    - `width`: channels per level.
    - `levels`: the number of 2× coarsenings.
    - `coarse_depth`: convolutions on the coarsest grid.
    - `activation`: `None` (linear) or an elementwise function such as `jax.nn.gelu`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    net = js.linear.GridUNet(jax.random.PRNGKey(0), width=4, levels=2)
    r = jnp.ones((16, 16))
    assert net(r).shape == (16, 16) and net(jnp.ones((32, 32))).shape == (32, 32)
    assert jnp.allclose(net(2 * r), 2 * net(r), rtol=1e-5)  # linear by default
    ```
    """

    lift: eqx.nn.Conv2d
    pre: list
    post: list
    coarse: list
    project: eqx.nn.Conv2d
    levels: int = eqx.field(static=True)
    activation: Callable | None = eqx.field(static=True)

    def __init__(
        self,
        key: PRNGKeyArray,
        width: int = 8,
        levels: int = 3,
        coarse_depth: int = 2,
        activation: Callable | None = None,
    ):
        if levels < 0 or width < 1 or coarse_depth < 0:
            raise ValueError(
                "GridUNet needs `width` ≥ 1, `levels` ≥ 0 and `coarse_depth` ≥ 0; got "
                f"width={width}, levels={levels}, coarse_depth={coarse_depth}."
            )
        keys = iter(jax.random.split(key, 2 * levels + coarse_depth + 2))
        self.lift = _conv(1, width, next(keys))
        self.pre = [_conv(width, width, next(keys)) for _ in range(levels)]
        self.post = [_conv(width, width, next(keys)) for _ in range(levels)]
        self.coarse = [_conv(width, width, next(keys)) for _ in range(coarse_depth)]
        self.project = _conv(width, 1, next(keys))
        self.levels = levels
        self.activation = activation

    def _act(self, x):
        return x if self.activation is None else self.activation(x)

    def _level(self, h, i):
        if i == self.levels:
            for conv in self.coarse:
                h = h + self._act(conv(h))
            return h
        h = self._act(self.pre[i](h))
        h = h + _up(self._level(_down(h), i + 1))
        return self._act(self.post[i](h))

    def __call__(self, r: Array) -> Array:
        if r.ndim != 2:
            raise ValueError(f"GridUNet maps 2-D grids; got an array of shape {r.shape}.")
        f = 2**self.levels
        if r.shape[0] % f or r.shape[1] % f:
            raise ValueError(
                f"GridUNet with levels={self.levels} needs grid sides divisible by {f}; got "
                f"{r.shape}. Use fewer levels or pad the grid."
            )
        h = self._act(self.lift(r[None]))
        return self.project(self._level(h, 0))[0]
