"""Training a search-direction network without solutions: the DCDM loss and a small trainer."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optax
from jaxtyping import Array, PRNGKeyArray, Scalar

from ._common import dot


def _as_mv(A) -> Callable[[Array], Array]:
    if isinstance(A, lx.AbstractLinearOperator):
        return A.mv
    if callable(A):
        return A  # pyright: ignore[reportReturnType]
    A = jnp.asarray(A)
    return lambda v: (A @ v.reshape(-1)).reshape(v.shape)


def dcdm_loss(net: Callable[[Array], Array], A, r: Array) -> Scalar:
    """The DCDM training loss (Kaneda et al., ICML 2023), which needs no solutions:

    `min_c ‖r − c·A·y‖² / ‖r‖² = 1 − (rᵀAy)² / (‖r‖² ‖Ay‖²)`, with `y = net(r/‖r‖)`.

    It is zero exactly when `net(r)` is a multiple of `A⁻¹r`, the ideal search direction of
    `js.linear.FlexibleCG`; the optimal scale `c = rᵀAy/‖Ay‖²` is taken in closed form, so
    the network only has to get the direction right. `r` may carry a leading batch axis (the
    mean over it is returned).

    **Arguments:**

    - `net`: a callable `r -> y` on arrays of `r`'s (unbatched) shape, e.g. a
      `js.linear.GridUNet`.
    - `A`: a lineax operator (e.g. `js.linear.Stencil5`), a matvec callable, or a matrix.
    - `r`: a residual, or a batch of them `(B, *shape)`.

    **Returns:** a scalar in `[0, 1]`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jaxsolve as js

    A = js.linear.Stencil5.poisson((4, 4))
    r = jnp.arange(16.0).reshape(4, 4)
    inv = jnp.linalg.inv(A.as_matrix())
    assert js.linear.dcdm_loss(lambda v: 3 * (inv @ v.ravel()).reshape(4, 4), A, r) < 1e-6
    assert js.linear.dcdm_loss(lambda v: v, A, r) > 0.1
    ```
    """
    mv = _as_mv(A)
    r = jnp.asarray(r)
    shape = jax.eval_shape(lambda: r).shape
    if isinstance(A, lx.AbstractLinearOperator):
        unbatched = A.in_structure().shape
        batched = shape != unbatched
        if batched and shape[1:] != unbatched:
            raise ValueError(
                f"`r` must have the operator's shape {unbatched} or a batch of it; got {shape}."
            )
    else:
        batched = False

    def one(r):
        nr = jnp.sqrt(dot(r, r))
        r = r / jnp.where(nr > 0, nr, 1)
        ay = mv(net(r))
        ray = dot(r, ay)
        ayay = dot(ay, ay)
        return 1 - ray**2 / jnp.where(ayay > 0, ayay, 1)

    return jnp.mean(jax.vmap(one)(r)) if batched else one(r)


def low_frequency_rhs(key: PRNGKeyArray, shape: tuple[int, int], decay: float = 1.0, dtype=None):
    """A random right-hand side on an `(N, M)` grid whose components along the Poisson
    eigenvectors `sin(πik/(N+1)) sin(πjl/(M+1))` are Gaussian with standard deviation
    `λ_kl^(−decay)` — biased to the smooth, slowly converging part of the spectrum, as the
    training right-hand sides of DCDM are. `decay=0` is white noise.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    b = js.linear.low_frequency_rhs(jax.random.PRNGKey(0), (16, 16), decay=1.0)
    assert b.shape == (16, 16) and jnp.isclose(jnp.linalg.norm(b), 1.0)
    ```
    """
    n, m = shape
    dtype = dtype or jnp.result_type(float)
    sn = jnp.sin(jnp.pi * jnp.outer(jnp.arange(1, n + 1), jnp.arange(1, n + 1)) / (n + 1))
    sm = jnp.sin(jnp.pi * jnp.outer(jnp.arange(1, m + 1), jnp.arange(1, m + 1)) / (m + 1))
    lam_n = 2 - 2 * jnp.cos(jnp.pi * jnp.arange(1, n + 1) / (n + 1))
    lam_m = 2 - 2 * jnp.cos(jnp.pi * jnp.arange(1, m + 1) / (m + 1))
    lam = lam_n[:, None] + lam_m[None, :]
    c = jax.random.normal(key, shape, dtype) * lam.astype(dtype) ** (-decay)
    b = (sn.astype(dtype) @ c @ sm.astype(dtype)).astype(dtype)
    return b / jnp.linalg.norm(b)


def train_dcdm(
    net,
    sample: Callable[[PRNGKeyArray], tuple],
    optimiser: optax.GradientTransformation,
    steps: int,
    key: PRNGKeyArray,
):
    """Train a direction network with `dcdm_loss` and an optax optimiser, in one `lax.scan`.

    **Arguments:**

    - `net`: an equinox module (its inexact arrays are trained), e.g. `js.linear.GridUNet`.
    - `sample`: `key -> (A, r)`, an operator and a batch of residuals `(B, *shape)` for one
      training step (fresh right-hand sides, e.g. from `low_frequency_rhs`; A may vary too).
    - `optimiser`: an optax optimiser, e.g. `optax.adam(1e-3)`.
    - `steps`: the number of optimiser steps.
    - `key`: a PRNG key.

    **Returns:** `(net, losses)`: the trained network and the loss of every step.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, optax
    import jaxsolve as js

    A = js.linear.Stencil5.poisson((8, 8))

    def sample(key):
        keys = jax.random.split(key, 4)
        return A, jax.vmap(lambda k: js.linear.low_frequency_rhs(k, (8, 8)))(keys)

    net = js.linear.GridUNet(jax.random.PRNGKey(0), width=4, levels=1)
    net, losses = js.linear.train_dcdm(net, sample, optax.adam(1e-2), 30, jax.random.PRNGKey(1))
    assert losses[-5:].mean() < losses[:5].mean()
    ```
    """
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def loss_fn(params, key):
        A, r = sample(key)
        return dcdm_loss(eqx.combine(params, static), A, r)

    def body(carry, key):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, key)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), loss

    @jax.jit
    def run(params, key):
        opt_state = optimiser.init(params)
        (params, _), losses = jax.lax.scan(body, (params, opt_state), jax.random.split(key, steps))
        return params, losses

    params, losses = run(params, key)
    return eqx.combine(params, static), losses
