"""Minibatch OT couplings: the exact assignment against SciPy's, entropic pairing, vmap,
straighter pairs than independent ones, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import jaxsolve as js


def _batches(n, d, seed=0):
    k0, k1 = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(k0, (n, d)), jax.random.normal(k1, (n, d)) * 0.5 + 1.0


def _cost(x0, x1):
    return np.asarray(jnp.sum((x0[:, None] - x1[None]) ** 2, -1))


def _check_exact(x0, x1):
    n = x0.shape[0]
    _, paired, sigma = js.ot.coupling(x0, x1, method="exact", return_indices=True)
    C = _cost(x0, x1)
    r, c = linear_sum_assignment(C)
    sigma = np.asarray(sigma)
    assert sorted(sigma.tolist()) == list(range(n))
    # Optimal to within the documented n·ε_final = 1e-2 × mean cost.
    assert C[np.arange(n), sigma].sum() <= C[r, c].sum() + 1e-2 * C.mean()
    np.testing.assert_allclose(paired, x1[sigma])


def test_exact_matches_scipy_assignment():
    # One shape (one compilation): random problems, then clustered targets with exact
    # duplicates (ties in the cost).
    for seed in range(3):
        _check_exact(*_batches(32, 4, seed=seed))
    x0, _ = _batches(32, 4, seed=7)
    _check_exact(x0, jnp.concatenate([x0[:16] + 0.3, x0[:16] + 0.3]))


def test_entropic_pairs_and_straightness():
    x0, x1 = _batches(64, 2, seed=3)
    _, paired = js.ot.coupling(x0, x1, method="entropic", epsilon=1e-3)
    _, paired_s = js.ot.coupling(x0, x1, method="entropic", key=jax.random.PRNGKey(0))
    indep = float(jnp.mean(jnp.sum((x1 - x0) ** 2, -1)))
    ot_cost = float(jnp.mean(jnp.sum((paired - x0) ** 2, -1)))
    exact = _cost(x0, x1)
    r, c = linear_sum_assignment(exact)
    assert ot_cost < 0.6 * indep
    assert ot_cost <= exact[r, c].mean() * 1.15
    assert float(jnp.mean(jnp.sum((paired_s - x0) ** 2, -1))) < 0.8 * indep


def test_vmap_over_minibatches():
    xs0 = jnp.stack([_batches(16, 3, s)[0] for s in range(3)])
    xs1 = jnp.stack([_batches(16, 3, s)[1] for s in range(3)])
    f = jax.jit(jax.vmap(lambda a, b: js.ot.coupling(a, b, method="exact", return_indices=True)))
    _, _, sig = f(xs0, xs1)
    for i in range(3):
        C = _cost(xs0[i], xs1[i])
        r, c = linear_sum_assignment(C)
        assert C[np.arange(16), np.asarray(sig[i])].sum() <= C[r, c].sum() * (1 + 1e-3)


def test_bad_inputs():
    x0, x1 = _batches(8, 2)
    with pytest.raises(ValueError, match="equal size"):
        js.ot.coupling(x0, x1[:5], method="exact")
    with pytest.raises(ValueError, match="same shape"):
        js.ot.coupling(x0, x1[:, :1])
    with pytest.raises(ValueError, match="method"):
        js.ot.coupling(x0, x1, method="hungarian")
    with pytest.raises(ValueError, match="epsilon"):
        js.ot.coupling(x0, x1, method="entropic", epsilon=0.0)
    with pytest.raises(ValueError, match="batches"):
        js.ot.coupling(jnp.ones(3), jnp.ones(3))


def test_auction_out_of_rounds_is_still_a_permutation():
    from jaxsolve.ot._coupling import _auction

    C = jnp.asarray(_cost(*_batches(24, 2, seed=5)))
    # Jitted: one program (eagerly, the auction's loop and each of its ops compile alone).
    sigma, _, rounds = jax.jit(_auction)(-C, jnp.zeros(24), C.mean() / 4, 1e-4, 10.0, 3)
    assert int(rounds) <= 3 + 24
    assert sorted(np.asarray(sigma).tolist()) == list(range(24))
