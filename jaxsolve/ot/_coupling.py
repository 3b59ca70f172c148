"""Minibatch OT couplings for flow matching (Pooladian et al., ICML 2023; Tong et al., 2024).

Pair each noise sample with a data sample by an optimal-transport plan between the two
minibatches instead of independently: the learned flow is straighter, its training target has
lower variance, and sampling needs fewer function evaluations.

`exact`: the optimal assignment (a permutation) by Bertsekas' auction algorithm with
epsilon-scaling, all in JAX, warm-started from the dual potential of a Sinkhorn solve at
ε = 0.01 × mean cost (its prices are nearly complementary-slack, so the auction only settles
the remaining conflicts). Bidding is Jacobi (every unassigned row at once, O(n²) a round)
while more than 16 rows are unassigned and only over those rows (O(16·n) a round) after; a
row keeps its object across phases while it stays ε-complementary-slack. The assignment is
optimal to within `n · ε_final = 1e-2 × mean cost` of the total cost, i.e. a relative
`1e-2 / n`. `entropic`: Sinkhorn (`js.ot.solve`) at a small relative epsilon, then one
partner per row drawn from the plan's row (or its argmax without a key).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._iterate import tree_all_finite
from .._solution import RESULTS
from ._geometry import PointCloud
from ._sinkhorn import Sinkhorn
from ._solve import solve

_MAX_ROUNDS = 1_000_000

_SPARSE_BIDDERS = 16
_WARM_EPSILON = 0.01
_AUTO_EXACT_MAX = 128


def _sq_dists(x, y):
    x2 = jnp.sum(x * x, axis=1)
    y2 = jnp.sum(y * y, axis=1)
    return jnp.maximum(x2[:, None] + y2[None, :] - 2.0 * x @ y.T, 0.0)


def _auction(benefit, prices, eps_start, eps_lo, scaling, max_rounds):
    """Jacobi auction with epsilon-scaling from `prices` (maximises Σ benefit[i, σ(i)]).

    Between phases, a person keeps its object when the pair still satisfies the new phase's
    ε-complementary slackness (Bertsekas' warm restart), so later phases only settle the few
    conflicts the smaller ε exposes. Returns `(σ, prices, rounds)`.
    """
    n = benefit.shape[0]
    dtype = benefit.dtype
    big = jnp.finfo(dtype).max
    iota = jnp.arange(n)

    def bid_round(persons, s):
        # `persons`: the rows that may bid this round (index n = padding).
        prices, assigned, owner, eps, r = s
        p = jnp.minimum(persons, n - 1)
        bidding = (persons < n) & (assigned[p] < 0)
        values = benefit[p] - prices[None, :]
        w1 = jnp.max(values, axis=1)
        j1 = jnp.argmax(values, axis=1)
        w2 = jnp.max(jnp.where(iota[None, :] == j1[:, None], -big, values), axis=1)
        bids = jnp.where(bidding, prices[j1] + (w1 - w2) + eps, -big)
        best_bid = jnp.full((n,), -big, dtype).at[j1].max(bids)
        won = bidding & (bids >= best_bid[j1])
        # Ties: the lowest-index bidder wins.
        winner = jnp.full((n,), n).at[j1].min(jnp.where(won, p, n))
        got = winner < n
        lost = (
            jnp.zeros((n,), bool).at[jnp.where(got & (owner >= 0), owner, n)].set(True, mode="drop")
        )
        assigned = jnp.where(lost, -1, assigned)
        is_winner = won & (winner[j1] == p)
        assigned = assigned.at[jnp.where(is_winner, p, n)].set(j1, mode="drop")
        owner = jnp.where(got, winner, owner)
        prices = jnp.where(got, best_bid, prices)
        return prices, assigned, owner, eps, r + 1

    k = min(n, _SPARSE_BIDDERS)

    def any_round(s):
        # All unassigned rows bid at once (O(n²)) while many are unassigned; late in a
        # phase only a few are, and a round over just those costs O(k·n).
        few = jnp.sum(s[1] < 0) <= k
        sparse = lambda s: bid_round(jnp.nonzero(s[1] < 0, size=k, fill_value=n)[0], s)
        return jax.lax.cond(few, sparse, lambda s: bid_round(iota, s), s)

    def phase_cond(c):
        _, _, eps, rounds, phase = c
        return ((eps > eps_lo * (1 + 1e-6)) | (phase == 0)) & (rounds < max_rounds)

    def phase_body(c):
        prices, assigned, eps, rounds, phase = c
        eps = jnp.where(phase == 0, eps, jnp.maximum(eps / scaling, eps_lo))
        # Keep the pairs that satisfy eps-CS at the new eps.
        values = benefit - prices[None, :]
        w1 = jnp.max(values, axis=1)
        mine = jnp.take_along_axis(values, jnp.maximum(assigned, 0)[:, None], axis=1)[:, 0]
        assigned = jnp.where((assigned >= 0) & (mine >= w1 - eps), assigned, -1)
        # Phase 0: every row takes its best object under the starting prices (0-CS) unless
        # another row with a smaller index wants it too.
        j1 = jnp.argmax(values, axis=1)
        first = jnp.full((n,), n).at[j1].min(iota)
        assigned = jnp.where((phase == 0) & (first[j1] == iota), j1, assigned)
        owner = jnp.full((n,), -1).at[jnp.where(assigned >= 0, assigned, n)].set(iota, mode="drop")

        def cond(s):
            return jnp.any(s[1] < 0) & (rounds + s[4] < max_rounds)

        prices, assigned, _, _, r = jax.lax.while_loop(
            cond, any_round, (prices, assigned, owner, eps, jnp.array(0))
        )
        return prices, assigned, eps, rounds + r, phase + 1

    eps0 = jnp.maximum(jnp.asarray(eps_start, dtype), eps_lo)
    prices, assigned, _, rounds, _ = jax.lax.while_loop(
        phase_cond, phase_body, (prices, jnp.full((n,), -1), eps0, jnp.array(0), jnp.array(0))
    )
    # Out of rounds (only with a small `max_rounds`): give the persons still unassigned the
    # free objects in order, so that the result is always a permutation.
    free_persons = jnp.argsort(assigned >= 0, stable=True)
    owned = jnp.zeros((n,), bool).at[jnp.where(assigned >= 0, assigned, n)].set(True, mode="drop")
    free_objects = jnp.argsort(owned, stable=True)
    n_free = jnp.sum(assigned < 0)
    fill = jnp.where(iota < n_free, free_objects, assigned[free_persons])
    assigned = assigned.at[free_persons].set(fill)
    return assigned, prices, rounds


def _exact_assignment(a, b, finite, eps_final=1e-2):
    """Optimal permutation for the squared-distance cost between `a` and `b` (`n × d`);
    `finite`: whether every sample is finite.

    Sinkhorn at ε = 0.01 × mean cost gives dual prices (`−g`) that are already nearly
    complementary-slack, so the auction starts at that ε and, with epsilon-scaling (÷10 per
    phase), only settles the remaining conflicts down to `eps_final × mean cost / n`: the
    total cost is within `eps_final × mean cost` (`n · ε_final`) of the optimum.
    """
    cost = _sq_dists(a, b)
    n = cost.shape[0]
    scale = jnp.maximum(jnp.mean(cost), jnp.finfo(cost.dtype).tiny)
    geom = PointCloud(a, b, epsilon=_WARM_EPSILON, relative_epsilon="mean")
    sol = solve(geom, solver=Sinkhorn(tol=1e-2, max_steps=500), throw=False)
    prices = jnp.where(jnp.isfinite(sol.g), -sol.g, 0.0)
    # NaN/inf samples: no auction (its bids would never settle and it would spin through all
    # `_MAX_ROUNDS` rounds, the whole batch with it under vmap); the caller reports `nonfinite`.
    max_rounds = jnp.where(finite, _MAX_ROUNDS, 0)
    sigma, _, rounds = _auction(
        -cost, prices, _WARM_EPSILON * scale, eps_final * scale / n, 10.0, max_rounds
    )
    result = RESULTS.where(rounds < _MAX_ROUNDS, RESULTS.successful, RESULTS.max_steps_reached)
    return sigma, result


def coupling(
    x0: Array,
    x1: Array,
    *,
    method: str = "auto",
    epsilon: float = 0.01,
    key: Array | None = None,
    return_indices: bool = False,
    throw: bool = True,
    return_result: bool = False,
):
    """Pair two minibatches (e.g. noise `x0` and data `x1`) by optimal transport.

    For OT-conditional flow matching: train on the pairs `(x0[i], x1[σ(i)])` instead of
    independent pairs. Jittable and vmappable (batches of minibatches); no derivatives flow
    through the pairing (it is a discrete choice).

    **Arguments:**

    - `x0`: `(n, ...)` samples; `x1`: `(m, ...)` samples (flattened to vectors; squared
      Euclidean cost).
    - `method`: `"auto"` (default: `"exact"` for equal batches of at most 128, else
      `"entropic"`), `"exact"` (the optimal permutation by the auction algorithm, to within a
      relative `1e-2/n` of the optimal cost; needs `n == m`) or `"entropic"` (Sinkhorn at
      `epsilon` × the mean cost, then one partner per row of the plan: sampled with `key`,
      or the row's argmax without one; not a permutation: a target may be used twice).
    - `epsilon`: the relative entropic regularisation for `"entropic"`.
    - `key`: a PRNG key for `"entropic"` sampling (optional).
    - `return_indices`: also return the index array `σ` (`x1[σ]` is paired with `x0`).
    - `throw`: raise if the pairing failed (NaN/inf samples: `nonfinite`; the entropic
      Sinkhorn solve or the auction out of steps: `max_steps_reached`); with `False` (e.g.
      under `vmap`) the pairing is returned anyway: ask for `return_result=True` to read why.
    - `return_result`: also return the `js.RESULTS` of the pairing (last element).

    **Returns:** `(x0, x1[σ])`, or `(x0, x1[σ], σ)` with `return_indices=True`, followed by
    the result with `return_result=True`.

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

    bad = x1.at[0, 0].set(jnp.nan)             # a failure is a result with throw=False
    *_, result = js.ot.coupling(x0, bad, throw=False, return_result=True)
    assert result == js.RESULTS.nonfinite
    ```
    """
    x0 = jnp.asarray(x0)
    x1 = jnp.asarray(x1)
    if x0.ndim < 2 or x1.ndim < 2:
        raise ValueError(
            "coupling expects batches of shape (n, ...) and (m, ...); got shapes "
            f"{x0.shape} and {x1.shape}."
        )
    for x, name in ((x0, "x0"), (x1, "x1")):
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            raise TypeError(f"coupling needs real samples; `{name}` has dtype {x.dtype}.")
    if x0.shape[0] == 0 or x1.shape[0] == 0:
        raise ValueError(
            f"coupling needs non-empty batches; got {x0.shape[0]} and {x1.shape[0]} samples."
        )
    if x0.shape[1:] != x1.shape[1:]:
        raise ValueError(
            f"The samples of x0 and x1 must have the same shape; got {x0.shape[1:]} and "
            f"{x1.shape[1:]}."
        )
    if method not in ("auto", "exact", "entropic"):
        raise ValueError(f"`method` must be 'auto', 'exact' or 'entropic'; got {method!r}.")
    if method == "auto":
        exact = x0.shape[0] == x1.shape[0] and x0.shape[0] <= _AUTO_EXACT_MAX
        method = "exact" if exact else "entropic"
    if method == "exact" and x0.shape[0] != x1.shape[0]:
        raise ValueError(
            "method='exact' pairs batches of equal size (a permutation); got "
            f"{x0.shape[0]} and {x1.shape[0]}. Use method='entropic' for unequal sizes."
        )
    if isinstance(epsilon, (int, float)) and not epsilon > 0:
        raise ValueError(f"`epsilon` must be positive; got {epsilon!r}.")
    # One compilation serves every `throw`/`return_*` choice and every epsilon value.
    paired, sigma, result = _coupling(x0, x1, method, jnp.asarray(epsilon), key)
    if throw:
        paired = result.error_if(paired, result != RESULTS.successful)
    out = (x0, paired, sigma) if return_indices else (x0, paired)
    return (*out, result) if return_result else out


@eqx.filter_jit
def _coupling(x0, x1, method, epsilon, key):
    dtype = jnp.result_type(x0.dtype, x1.dtype, jnp.float32)
    a = jax.lax.stop_gradient(x0.reshape(x0.shape[0], -1).astype(dtype))
    b = jax.lax.stop_gradient(x1.reshape(x1.shape[0], -1).astype(dtype))
    finite = tree_all_finite((a, b))
    if method == "exact":
        sigma, result = _exact_assignment(a, b, finite)
    else:
        geom = PointCloud(a, b, epsilon=epsilon, relative_epsilon="mean")
        sol = solve(geom, solver=Sinkhorn(tol=1e-3, max_steps=2000), throw=False)
        result = sol.result
        logits = jnp.log(jnp.maximum(sol.plan, jnp.finfo(dtype).tiny))
        if key is None:
            sigma = jnp.argmax(logits, axis=1)
        else:
            sigma = jax.random.categorical(key, logits, axis=1)
    result = RESULTS.where(finite, result, RESULTS.nonfinite)
    return x1[sigma], sigma, result
