"""Minibatch OT couplings for flow matching (Pooladian et al., ICML 2023; Tong et al., 2024).

Pair each noise sample with a data sample by an optimal-transport plan between the two
minibatches instead of independently: the learned flow is straighter, its training target has
lower variance, and sampling needs fewer function evaluations.

`exact`: the optimal assignment (a permutation) by Bertsekas' auction algorithm with
epsilon-scaling, all in JAX (Jacobi bidding: every unassigned row bids at once, O(n²) per
round). The assignment is optimal to within `n · ε_final` of the cost, with `ε_final` far below
the cost scale. `entropic`: Sinkhorn (`js.ot.solve`) at a small relative epsilon, then one
partner per row drawn from the plan's row (or its argmax without a key).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._geometry import PointCloud
from ._sinkhorn import Sinkhorn
from ._solve import solve


def _sq_dists(x, y):
    x2 = jnp.sum(x * x, axis=1)
    y2 = jnp.sum(y * y, axis=1)
    return jnp.maximum(x2[:, None] + y2[None, :] - 2.0 * x @ y.T, 0.0)


def auction_assignment(
    cost: Array, *, eps_final: float = 1e-2, scaling: float = 10.0, max_rounds: int = 100_000
) -> Array:
    """The assignment `σ` minimising `Σ_i C[i, σ(i)]` (square `C`), by the auction algorithm.

    Jacobi auction with epsilon-scaling: prices are kept across phases, the assignment is
    reset; the final phase uses `eps_final × mean|C| / n`, so the cost is within
    `eps_final × mean|C|` of the optimum (exact when the optimum is unique by more than that).
    Returns `σ` as an int array (row `i` is matched to column `σ[i]`).
    """
    n = cost.shape[0]
    dtype = cost.dtype
    benefit = -jax.lax.stop_gradient(cost)
    scale = jnp.maximum(jnp.mean(jnp.abs(benefit)), jnp.finfo(dtype).tiny)
    eps_lo = eps_final * scale / n
    eps_hi = jnp.maximum(scale / 4.0, eps_lo)
    iota_j = jnp.arange(n)
    big = jnp.finfo(dtype).max

    def phase_cond(c):
        _, eps, _, rounds = c
        return (eps > eps_lo * (1 + 1e-9)) | (rounds == 0)

    def phase_body(c):
        prices, eps, _, rounds = c
        eps = jnp.maximum(eps / scaling, eps_lo)
        eps = jnp.where(rounds == 0, eps_hi, eps)
        owner = jnp.full((n,), -1)  # object j -> person
        assigned = jnp.full((n,), -1)  # person i -> object

        def cond(s):
            _, assigned, _, r = s
            return jnp.any(assigned < 0) & (r < max_rounds)

        def body(s):
            prices, assigned, owner, r = s
            values = benefit - prices[None, :]
            w1 = jnp.max(values, axis=1)
            j1 = jnp.max(jnp.where(values >= w1[:, None], iota_j[None, :], -1), axis=1)
            w2 = jnp.max(jnp.where(iota_j[None, :] == j1[:, None], -big, values), axis=1)
            bids = prices[j1] + (w1 - w2) + eps
            bidding = assigned < 0
            bids = jnp.where(bidding, bids, -big)
            best_bid = jnp.full((n,), -big, dtype).at[j1].max(bids)
            won = bidding & (bids >= best_bid[j1]) & (best_bid[j1] > -big)
            # Ties: the lowest-index bidder wins.
            persons = jnp.arange(n)
            winner = jnp.full((n,), n).at[j1].min(jnp.where(won, persons, n))
            got = winner < n  # objects that received a winning bid this round
            new_owner = jnp.where(got, winner, owner)
            # Previous owners of re-assigned objects become unassigned.
            lost = (
                jnp.zeros((n,), bool)
                .at[jnp.where(got & (owner >= 0), owner, n)]
                .set(True, mode="drop")
            )
            assigned = jnp.where(lost, -1, assigned)
            is_winner = won & (winner[j1] == persons)
            assigned = jnp.where(is_winner, j1, assigned)
            prices = jnp.where(got, best_bid, prices)
            return prices, assigned, new_owner, r + 1

        prices, assigned, owner, r = jax.lax.while_loop(
            cond, body, (prices, assigned, owner, jnp.array(0))
        )
        return prices, eps, assigned, rounds + r

    prices0 = jnp.zeros((n,), dtype)
    _, _, assigned, _ = jax.lax.while_loop(
        phase_cond, phase_body, (prices0, eps_hi, jnp.full((n,), -1), jnp.array(0))
    )
    return assigned


def coupling(
    x0: Array,
    x1: Array,
    *,
    method: str = "auto",
    epsilon: float = 0.01,
    key: Array | None = None,
    return_indices: bool = False,
):
    """Pair two minibatches (e.g. noise `x0` and data `x1`) by optimal transport.

    For OT-conditional flow matching: train on the pairs `(x0[i], x1[σ(i)])` instead of
    independent pairs. Jittable and vmappable (batches of minibatches); no derivatives flow
    through the pairing (it is a discrete choice).

    **Arguments:**

    - `x0`: `(n, ...)` samples; `x1`: `(m, ...)` samples (flattened to vectors; squared
      Euclidean cost).
    - `method`: `"auto"` (default: `"exact"` for equal batches of at most 64, else
      `"entropic"`), `"exact"` (the optimal permutation by the auction algorithm, to within a
      relative `1e-2/n` of the optimal cost; needs `n == m`) or `"entropic"` (Sinkhorn at
      `epsilon` × the mean cost, then one partner per row of the plan: sampled with `key`,
      or the row's argmax without one).
    - `epsilon`: the relative entropic regularisation for `"entropic"`.
    - `key`: a PRNG key for `"entropic"` sampling (optional).
    - `return_indices`: also return the index array `σ` (`x1[σ]` is paired with `x0`).

    **Returns:** `(x0, x1[σ])`, or `(x0, x1[σ], σ)` with `return_indices=True`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import jaxsolve as js

    x0 = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    perm = jax.random.permutation(jax.random.PRNGKey(1), 64)
    x1 = x0[perm] + 0.01                     # a shuffled, slightly shifted copy
    a, b, sigma = js.ot.coupling(x0, x1, return_indices=True)
    assert jnp.allclose(b, x0 + 0.01)         # the shuffle is undone exactly
    assert sorted(sigma.tolist()) == list(range(64))
    ```
    """
    x0 = jnp.asarray(x0)
    x1 = jnp.asarray(x1)
    if x0.ndim < 2 or x1.ndim < 2:
        raise ValueError(
            "coupling expects batches of shape (n, ...) and (m, ...); got shapes "
            f"{x0.shape} and {x1.shape}."
        )
    if x0.shape[1:] != x1.shape[1:]:
        raise ValueError(
            f"The samples of x0 and x1 must have the same shape; got {x0.shape[1:]} and "
            f"{x1.shape[1:]}."
        )
    if method not in ("auto", "exact", "entropic"):
        raise ValueError(f"`method` must be 'auto', 'exact' or 'entropic'; got {method!r}.")
    if method == "auto":
        method = "exact" if x0.shape[0] == x1.shape[0] and x0.shape[0] <= 64 else "entropic"
    if method == "exact" and x0.shape[0] != x1.shape[0]:
        raise ValueError(
            "method='exact' pairs batches of equal size (a permutation); got "
            f"{x0.shape[0]} and {x1.shape[0]}. Use method='entropic' for unequal sizes."
        )
    if isinstance(epsilon, (int, float)) and not epsilon > 0:
        raise ValueError(f"`epsilon` must be positive; got {epsilon!r}.")
    return _coupling(x0, x1, method, epsilon, key, return_indices)


@eqx.filter_jit
def _coupling(x0, x1, method, epsilon, key, return_indices):
    dtype = jnp.result_type(x0.dtype, x1.dtype, jnp.float32)
    a = jax.lax.stop_gradient(x0.reshape(x0.shape[0], -1).astype(dtype))
    b = jax.lax.stop_gradient(x1.reshape(x1.shape[0], -1).astype(dtype))
    if method == "exact":
        sigma = auction_assignment(_sq_dists(a, b))
    else:
        geom = PointCloud(a, b, epsilon=epsilon, relative_epsilon="mean")
        sol = solve(geom, solver=Sinkhorn(tol=1e-3, max_steps=2000), throw=False)
        logits = jnp.log(jnp.maximum(sol.plan, jnp.finfo(dtype).tiny))
        if key is None:
            sigma = jnp.argmax(logits, axis=1)
        else:
            sigma = jax.random.categorical(key, logits, axis=1)
    paired = x1[sigma]
    return (x0, paired, sigma) if return_indices else (x0, paired)
