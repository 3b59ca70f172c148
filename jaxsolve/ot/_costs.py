"""Ground costs `c(x, y)` for `PointCloud`: squared Euclidean (default), p-norms, cosine."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float


class AbstractCost(eqx.Module):
    """A ground cost. Subclasses implement `all_pairs(x, y) -> (n, m)` cost block."""

    @abc.abstractmethod
    def all_pairs(self, x: Float[Array, "n d"], y: Float[Array, "m d"]) -> Float[Array, "n m"]: ...


class SqEuclidean(AbstractCost):
    """Squared Euclidean cost `‖x − y‖²` (the default of `PointCloud`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    C = js.ot.SqEuclidean().all_pairs(jnp.zeros((2, 2)), jnp.ones((3, 2)))
    assert jnp.allclose(C, 2.0)
    ```
    """

    def all_pairs(self, x, y):
        # One matrix product (the fast path on every backend), clipped at 0 against rounding.
        xx = jnp.sum(x * x, axis=-1)
        yy = jnp.sum(y * y, axis=-1)
        return jnp.maximum(xx[:, None] + yy[None, :] - 2.0 * (x @ y.T), 0.0)


class PNorm(AbstractCost):
    """The cost `‖x − y‖_p^q` (default `q = 1`: the p-norm distance).

    **Arguments:**

    - `p`: the norm's exponent, `p >= 1`.
    - `q`: the power the norm is raised to (`p = 2, q = 2` is `SqEuclidean`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    C = js.ot.PNorm(1.0).all_pairs(jnp.zeros((1, 2)), jnp.array([[1.0, -2.0]]))
    assert jnp.allclose(C, 3.0)
    ```
    """

    p: float = 2.0
    q: float = 1.0

    def __check_init__(self):
        if isinstance(self.p, (int, float)) and self.p < 1:
            raise ValueError(f"PNorm needs p >= 1; got p={self.p}.")

    def all_pairs(self, x, y):
        diff = jnp.abs(x[:, None, :] - y[None, :, :])
        # Safe at x = y (the p-th root has an infinite derivative at 0).
        s = jnp.sum(diff**self.p, axis=-1)
        pos = s > 0
        s_safe = jnp.where(pos, s, 1.0)
        return jnp.where(pos, s_safe ** (self.q / self.p), 0.0)


class Cosine(AbstractCost):
    """The cosine distance `1 − ⟨x, y⟩ / (‖x‖ ‖y‖)`, in `[0, 2]`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    C = js.ot.Cosine().all_pairs(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 2.0], [3.0, 0.0]]))
    assert jnp.allclose(C, jnp.array([[1.0, 0.0]]))
    ```
    """

    def all_pairs(self, x, y):
        xn = x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-30))
        yn = y / jnp.sqrt(jnp.maximum(jnp.sum(y * y, axis=-1, keepdims=True), 1e-30))
        return 1.0 - xn @ yn.T
