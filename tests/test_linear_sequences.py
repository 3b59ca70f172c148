"""Stencil5 operators and the relaxation bandit: structure against dense matrices, iteration
counts (never times) for the sequence methods."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsolve as js
from jaxsolve.linear._bandit import _kl_lower_bound, _tsallis_weights


# Jitted helpers (one compiled program per shape, shared by the tests): eagerly, each op of
# building a stencil or materialising its matrix was a compilation of its own.
@eqx.filter_jit
def _random_stencil(key, shape=(5, 4)):
    ks = jax.random.split(key, 5)
    c = 5.0 + jax.random.uniform(ks[0], shape)
    off = [-jax.random.uniform(k, shape) for k in ks[1:]]
    return js.linear.Stencil5(c, *off)


_matrix = eqx.filter_jit(lambda A: A.as_matrix())
_darcy = eqx.filter_jit(js.linear.Stencil5.darcy)
_darcy_matrix = jax.jit(lambda a: js.linear.Stencil5.darcy(a).as_matrix())
_poisson_matrix = jax.jit(
    lambda c, shape: js.linear.Stencil5.poisson(shape, shift=c).as_matrix(), static_argnums=1
)


def test_stencil_matches_its_matrix_and_transpose(key):
    A = _random_stencil(key)
    M = np.asarray(_matrix(A))
    u = jax.random.normal(key, (5, 4))
    Au, MT = eqx.filter_jit(lambda A, u: (A.mv(u), A.transpose().as_matrix()))(A, u)
    np.testing.assert_allclose(Au.ravel(), M @ np.asarray(u).ravel(), atol=1e-12)
    np.testing.assert_allclose(MT, M.T, atol=1e-12)
    # Poisson: the textbook 5-point matrix
    P = np.asarray(_poisson_matrix(0.0, (3, 3)))
    T = 4 * np.eye(3) - np.eye(3, k=1) - np.eye(3, k=-1)
    np.testing.assert_allclose(
        P, np.kron(np.eye(3), T) - np.kron(np.eye(3, k=1) + np.eye(3, k=-1), np.eye(3))
    )


def test_darcy_is_spd(key):
    a = jnp.exp(jax.random.normal(key, (6, 5)))
    M = np.asarray(_darcy_matrix(a))
    np.testing.assert_allclose(M, M.T, atol=1e-12)
    assert np.linalg.eigvalsh(M).min() > 0


@pytest.mark.parametrize("cls", [js.linear.SOR, js.linear.SSOR])
def test_stencil_sweeps_equal_dense_sweeps(key, cls):
    # The row-by-row sweep of a stencil and the dense triangular sweep of its matrix take the
    # same iterates: same counts, same solution, also for a non-symmetric stencil.
    A = _random_stencil(key)
    M = _matrix(A)
    b = np.ones((5, 4))
    s1 = js.linear.solve(A, b, cls(omega=1.3, tol=1e-10))
    s2 = js.linear.solve(M, b.ravel(), cls(omega=1.3, tol=1e-10))
    assert int(s1.stats["num_steps"]) == int(s2.stats["num_steps"])
    np.testing.assert_allclose(s1.value.ravel(), s2.value, atol=1e-10)
    np.testing.assert_allclose(
        s1.value.ravel(), np.linalg.solve(np.asarray(M), b.ravel()), atol=1e-8
    )


def test_stencil_ssor_preconditioner_matches_dense(key):
    A = _darcy(jnp.exp(jax.random.normal(key, (6, 5))))
    b = np.ones((6, 5))
    pcg = js.linear.CG(tol=1e-10, preconditioner=js.linear.SSORPreconditioner(1.4))
    s1 = js.linear.solve(A, b, pcg)
    s2 = js.linear.solve(_matrix(A), b.ravel(), pcg)
    assert int(s1.stats["num_steps"]) == int(s2.stats["num_steps"])
    plain = js.linear.solve(A, b, js.linear.CG(tol=1e-10))
    assert int(s1.stats["num_steps"]) < int(plain.stats["num_steps"])


def test_gradient_wrt_darcy_coefficients(key):
    a = jnp.exp(0.3 * jax.random.normal(key, (4, 4)))
    b = jnp.ones((4, 4))
    f = lambda a: jnp.sum(
        js.linear.solve(js.linear.Stencil5.darcy(a), b, js.linear.CG(tol=1e-12)).value ** 2
    )
    g = lambda a: jnp.sum(jnp.linalg.solve(js.linear.Stencil5.darcy(a).as_matrix(), b.ravel()) ** 2)
    # jitted: one compilation each (eagerly, each op of the gradients was compiled on its own)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(a), jax.jit(jax.grad(g))(a), rtol=1e-6)


# --- bandit -----------------------------------------------------------------------------------


def test_tsallis_weights_closed_form():
    loss = jnp.array([0.0, 1.0, 3.0, 7.0])
    eta = 0.7
    w = np.asarray(jax.jit(_tsallis_weights)(loss, eta))  # one compilation, not one per op
    # The optimality condition of min <w, L> − (4/η) Σ √w_i over the simplex: 1/√w_i = η(L_i − x).
    x = np.asarray(loss) - 2.0 / (eta * np.sqrt(w))
    np.testing.assert_allclose(x, x[0], atol=1e-9)
    np.testing.assert_allclose(w.sum(), 1.0, atol=1e-12)


def test_kl_lower_bound_solves_its_equation():
    mean = jnp.array([0.3, 0.05, 0.9, 0.0])
    n = jnp.array([4.0, 20.0, 2.0, 5.0])
    q = np.asarray(jax.jit(_kl_lower_bound)(mean, n, np.log(7.0)))  # one compilation
    mean, n = np.asarray(mean), np.asarray(n)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 · log(0/0): replaced below
        kl = mean * np.log(mean / q) + (1 - mean) * np.log((1 - mean) / (1 - q))
    kl = np.where(mean == 0, -np.log(1 - q), kl)
    np.testing.assert_allclose(n[:3] * kl[:3], np.log(7.0), rtol=1e-6)
    assert np.all(q <= mean) and float(q[3]) == 0.0


@eqx.filter_jit  # one compiled program per bandit configuration and shape, not per call
def _simulate(bandit, costs, features, seed=0):
    def body(state, inp):
        cost_row, f = inp
        arm, _, state = bandit.choose(state, f)
        return bandit.update(state, arm, cost_row[arm], f), cost_row[arm]

    state, paid = jax.lax.scan(body, bandit.init(jax.random.PRNGKey(seed)), (costs, features))
    return state, paid


def test_bandit_approaches_best_fixed_arm():
    # Synthetic iteration counts: arm 6 of 10 is best by a margin, counts are noisy.
    T, K = 400, 10
    key = jax.random.PRNGKey(3)
    base = 100 + 40 * jnp.abs(jnp.arange(K) - 6.0)
    costs = base + 20 * jax.random.uniform(key, (T, K))
    bandit = js.linear.RelaxationBandit(
        jnp.linspace(1.0, 1.9, K), loss_scale=400, learning_rate=8.0
    )
    state, paid = _simulate(bandit, costs, jnp.zeros(T))
    best = costs.sum(0).min()
    assert float(paid.sum()) <= 1.3 * float(best)
    assert float(bandit.greedy(state)) == pytest.approx(float(bandit.omegas[6]))


def test_contextual_bandit_uses_the_feature():
    # The best arm depends on the feature: low feature -> arm 0, high feature -> arm 4.
    T, K = 600, 5
    f = jax.random.uniform(jax.random.PRNGKey(4), (T,))
    best_arm = jnp.where(f < 0.5, 0, 4)
    costs = 100 + 200 * (jnp.arange(K)[None, :] != best_arm[:, None])
    ctx = js.linear.RelaxationBandit(jnp.linspace(1.0, 1.8, K), loss_scale=400, num_contexts=2)
    plain = js.linear.RelaxationBandit(jnp.linspace(1.0, 1.8, K), loss_scale=400)
    state, paid_ctx = _simulate(ctx, costs, f)
    _, paid = _simulate(plain, costs, f)
    assert float(paid_ctx.sum()) < 0.8 * float(paid.sum())
    assert float(ctx.greedy(state, 0.1)) == pytest.approx(1.0)
    assert float(ctx.greedy(state, 0.9)) == pytest.approx(1.8)


@jax.jit
def _live_sequence(cs):
    bandit = js.linear.RelaxationBandit(jnp.linspace(1.0, 1.9, 10), loss_scale=300)
    b = jnp.ones((10, 10))

    def body(state, c):
        arm, omega, state = bandit.choose(state)
        A = js.linear.Stencil5.poisson((10, 10), shift=c)
        n = js.linear.solve(A, b, js.linear.SOR(omega, 1e-6, max_steps=600), throw=False).stats
        gs = js.linear.solve(A, b, js.linear.SOR(1.0, 1e-6, max_steps=600), throw=False).stats
        return bandit.update(state, arm, n["num_steps"]), (n["num_steps"], gs["num_steps"])

    return jax.lax.scan(body, bandit.init(jax.random.PRNGKey(0)), cs)[1]


def test_live_bandit_beats_gauss_seidel_in_iterations():
    cs = 0.02 * jax.random.uniform(jax.random.PRNGKey(5), (60,))
    ours, gs = _live_sequence(cs)
    assert int(ours.sum()) < int(gs.sum()) / 1.5


def test_unimodal_bandit_follows_osub_by_hand():
    # Deterministic counts 100 + 30 |k - 6| (loss = count / 500). OSUB from the largest ω: each
    # new leader's untried neighbour is played at once, so it walks down 9, 8, 7, 6, tries 6's
    # lower neighbour 5, and then stays near 6 (the leader itself every third round it leads).
    K = 10
    counts = 100.0 + 30.0 * jnp.abs(jnp.arange(K) - 6.0)
    bandit = js.linear.RelaxationBandit(jnp.linspace(1.0, 1.9, K), 500, policy="unimodal")
    table = jnp.tile(counts, (60, 1)).at[:, :6].add(1.0)  # cost -> arm is one-to-one
    state, paid = _simulate(bandit, table, jnp.zeros(60))
    arms = [int(np.flatnonzero(table[0] == c)[0]) for c in paid[:5]]
    assert arms == [9, 8, 7, 6, 5]
    plays = np.asarray(state.plays[0])
    assert plays[:5].sum() == 0 and plays[8] == plays[9] == 1  # never below 5; passed 8, 9 once
    assert plays.argmax() == 6
    assert float(bandit.greedy(state)) == pytest.approx(float(bandit.omegas[6]))


def _sor_like_costs(key, T=100):
    # Mean counts shaped like SOR's (steep below the optimum, flat above; ω = 1 costs 5.6x the
    # best), times a per-system difficulty that matters most for small ω (above the optimum
    # SOR's rate is ω − 1 whatever the system), and per-arm noise.
    mean = jnp.array([760.0, 425, 261, 179, 141, 135, 142, 160, 217, 288])
    k1, k2 = jax.random.split(key)
    difficulty = jnp.exp(0.7 * jax.random.normal(k1, (T, 1)) * jnp.linspace(1.0, 0.0, 10))
    noise = jnp.exp(0.1 * jax.random.normal(k2, (T, 10)))
    return jnp.round(mean * difficulty * noise)


@jax.jit
def _bandit_totals(costs, seed):
    omegas = 2 - jnp.geomspace(1.0, 0.05, 10)
    uni = js.linear.RelaxationBandit(omegas, loss_scale=1000, policy="unimodal")
    tsallis = js.linear.RelaxationBandit(omegas, loss_scale=500, learning_rate=8.0)
    f = jnp.zeros(costs.shape[0])
    s_uni, paid_uni = _simulate(uni, costs, f, seed)
    _, paid_ts = _simulate(tsallis, costs, f, seed)
    return paid_uni.sum(), paid_ts.sum(), s_uni.plays[0]


def test_unimodal_bandit_short_horizon_regret():
    # 100 systems: the unimodal policy explores only the leader's neighbours, so its total stays
    # within 20 % of the best fixed arm's (the target is 30 %), and below the Tsallis-INF
    # policy's, which must sample the slow arms to learn they are slow.
    for seed in range(3):
        costs = _sor_like_costs(jax.random.PRNGKey(10 + seed))
        best = float(costs.sum(0).min())
        uni, ts, plays = _bandit_totals(costs, seed)
        assert float(uni) <= 1.2 * best
        assert float(uni) < float(ts)
        # never the two slowest ω; mostly the three within 5-8 % of the best
        assert int(plays[:2].sum()) == 0 and int(plays[4:7].sum()) >= 60


_OMEGAS = jnp.linspace(1.0, 1.9, 10)
_UNIMODAL = [
    (js.linear.RelaxationBandit(_OMEGAS, loss_scale=300, policy="unimodal"), False),
    (
        js.linear.RelaxationBandit(
            _OMEGAS, 300, policy="unimodal", num_contexts=2, feature_min=0.0, feature_max=0.05
        ),
        True,
    ),
]


def _sor_steps(c, omega):
    A = js.linear.Stencil5.poisson((10, 10), shift=c)
    sol = js.linear.solve(
        A, jnp.ones((10, 10)), js.linear.SOR(omega, 1e-6, max_steps=600), throw=False
    )
    return sol.stats["num_steps"]


# Separate jitted pieces: one program holding both live scans, the vmapped table and the
# replays hung XLA's CPU runtime now and then (all threads idle in block_until_ready).
_sor_table = jax.jit(jax.vmap(jax.vmap(_sor_steps, (None, 0)), (0, None)))


@eqx.filter_jit
def _live(cs, bandit, contextual):
    def live(state, c):
        f = c if contextual else None
        arm, omega, state = bandit.choose(state, f)
        n = _sor_steps(c, omega)
        return bandit.update(state, arm, n, f), n

    return jax.lax.scan(live, bandit.init(jax.random.PRNGKey(0)), cs)[1]


def _live_and_replay(cs):
    table = _sor_table(cs, _OMEGAS)
    out = []
    for bandit, contextual in _UNIMODAL:
        f = cs if contextual else jnp.zeros_like(cs)
        out.append((_live(cs, bandit, contextual), _simulate(bandit, table, f)[1], table))
    return out


def test_unimodal_bandit_live_equals_table_replay():
    cs = 0.05 * jax.random.uniform(jax.random.PRNGKey(6), (40,)) ** 2
    for paid_live, paid_replay, table in _live_and_replay(cs):
        np.testing.assert_array_equal(paid_live, paid_replay)
        assert int(paid_live.sum()) < int(table[:, 0].sum()) / 1.5  # vs Gauss-Seidel


def test_bandit_bad_input():
    with pytest.raises(ValueError, match="between 0 and 2"):
        js.linear.RelaxationBandit(jnp.array([1.0, 2.5]))
    with pytest.raises(ValueError, match="feature"):
        js.linear.RelaxationBandit(num_contexts=3).choose(
            js.linear.RelaxationBandit(num_contexts=3).init(jax.random.PRNGKey(0))
        )
    with pytest.raises(ValueError, match="policy"):
        js.linear.RelaxationBandit(policy="ucb")
    with pytest.raises(ValueError, match="increasing"):
        js.linear.RelaxationBandit(jnp.array([1.5, 1.0, 1.8]), policy="unimodal")


# --- recycling --------------------------------------------------------------------------------


def test_gcrodr_solutions_and_fewer_matvecs_on_a_sequence():
    n = 12
    gcrodr = js.linear.GCRODR(tol=1e-8, restart=10, recycle=8)
    space = gcrodr.init(jnp.ones((n, n)))
    counts, gmres_counts = [], []
    for i, c in enumerate(jnp.linspace(0.0, 0.01, 6)):
        A = js.linear.Stencil5.poisson((n, n), shift=c)
        b = jax.random.normal(jax.random.PRNGKey(i), (n, n))
        sol, space = gcrodr.solve(A, b, space)
        x_ref = np.linalg.solve(np.asarray(_poisson_matrix(c, (n, n))), np.asarray(b).ravel())
        np.testing.assert_allclose(np.asarray(sol.value).ravel(), x_ref, atol=1e-6)
        assert sol.result == js.RESULTS.successful
        counts.append(int(sol.stats["num_matvecs"]))
        gmres = js.linear.solve(A, b, js.linear.GMRES(tol=1e-8, restart=10))
        gmres_counts.append(int(gmres.stats["num_matvecs"]))
    # The recycled space pays off against the same restarted Krylov method without it.
    assert sum(counts[1:]) < 0.5 * sum(gmres_counts[1:])


def test_gcrodr_bad_input():
    with pytest.raises(ValueError, match="recycle < restart"):
        js.linear.GCRODR(restart=5, recycle=5)
    g = js.linear.GCRODR(restart=10, recycle=3)
    with pytest.raises(ValueError, match="space"):
        g.solve(jnp.eye(4), jnp.ones(4), g.init(jnp.ones(5)))


def test_order_by_similarity_is_greedy_nearest_neighbour():
    f = jnp.array([[0.0, 0.0], [5.0, 5.0], [1.0, 0.0], [4.0, 5.0], [2.0, 1.0]])
    assert js.linear.order_by_similarity(f).tolist() == [0, 2, 4, 3, 1]


_RCG = js.linear.RecycledCG(tol=1e-6, recycle=10, refresh=5, harvest=30)
_CG = js.linear.CG(tol=1e-6, max_steps=2000)


@jax.jit
def _recycled_sequence(cs, bs):
    n = bs.shape[-1]

    def body(carry, inp):
        space, space_w, x_prev = carry
        c, b = inp
        A = js.linear.Stencil5.poisson((n, n), shift=c)
        s, space = _RCG.solve(A, b, space)
        sw, space_w = _RCG.solve(A, b, space_w, x0=x_prev)
        cg = js.linear.solve(A, b, _CG, throw=False)
        mvs = jnp.stack([s.stats["num_matvecs"], sw.stats["num_matvecs"], cg.stats["num_matvecs"]])
        ok = (s.result == js.RESULTS.successful) & (sw.result == js.RESULTS.successful)
        return (space, space_w, sw.value), (mvs, s.value, sw.value, ok)

    b0 = bs[0]
    init = (_RCG.init(b0), _RCG.init(b0), jnp.zeros_like(b0))
    return jax.lax.scan(body, init, (cs, bs))[1]


def test_recycled_cg_solutions_and_matvecs_on_a_sequence():
    n, T = 16, 20
    cs = 0.05 * jax.random.uniform(jax.random.PRNGKey(7), (T,))
    cs = cs[js.linear.order_by_similarity(cs)]
    # Fixed source (only the operator changes): all matvecs counted, including the k per
    # refresh of the recycled space.
    mvs, x, xw, ok = _recycled_sequence(cs, jnp.ones((T, n, n)))
    assert bool(ok.all())
    for t in [0, T // 2, T - 1]:
        M = np.asarray(_poisson_matrix(cs[t], (n, n)))
        x_ref = np.linalg.solve(M, np.ones(n * n))
        for sol in (x[t], xw[t]):
            err = np.linalg.norm(M @ np.asarray(sol).ravel() - 1) / n  # ‖b‖ = n
            assert err <= 1e-6
            np.testing.assert_allclose(np.asarray(sol).ravel(), x_ref, rtol=1e-4, atol=1e-4)
    tot = np.asarray(mvs).sum(0)
    assert tot[0] <= tot[2] / 1.8  # recycled, cold start
    assert tot[1] <= tot[2] / 3  # recycled, from the previous solution
    # A new random right-hand side per system: still fewer matvecs than CG.
    mvs, _, _, ok = _recycled_sequence(cs, jax.random.normal(jax.random.PRNGKey(8), (T, n, n)))
    tot = np.asarray(mvs).sum(0)
    assert bool(ok.all()) and tot[0] < tot[2] / 1.2


def test_recycled_cg_bad_input():
    with pytest.raises(ValueError, match="recycle"):
        js.linear.RecycledCG(recycle=0)
    r = js.linear.RecycledCG(recycle=3)
    with pytest.raises(ValueError, match="space"):
        r.solve(jnp.eye(4), jnp.ones(4), r.init(jnp.ones(5)))


_RCGJ = js.linear.RecycledCG(tol=1e-8, recycle=8, refresh=2, harvest=40, jacobi=True)
_PCG = js.linear.CG(tol=1e-8, max_steps=2000, preconditioner=js.linear.JacobiPreconditioner())


@jax.jit
def _darcy_sequence(logas, bs):
    def body(space, inp):
        loga, b = inp
        A = js.linear.Stencil5.darcy(jnp.exp(loga))
        s, space = _RCGJ.solve(A, b, space)
        ref = js.linear.solve(A, b, _PCG, throw=False)
        mvs = jnp.stack([s.stats["num_matvecs"], ref.stats["num_matvecs"]])
        return space, (mvs, s.value, s.result == js.RESULTS.successful)

    return jax.lax.scan(body, _RCGJ.init(bs[0]), (logas, bs))


def test_recycled_cg_jacobi_on_a_darcy_sequence():
    # A drifting log-normal coefficient (contrast ~ e^4), fixed source: every matvec counted
    # (the k per refresh included), every solution checked against a dense solve.
    n, T = 12, 10
    g, h = jax.random.normal(jax.random.PRNGKey(11), (2, n, n))
    logas = jnp.stack([1.5 * g + 0.05 * t * h for t in range(T)])
    bs = jnp.ones((T, n, n))
    space, (mvs, x, ok) = _darcy_sequence(logas, bs)
    assert bool(ok.all())
    mvs = np.asarray(mvs)
    # The first solve has nothing to recycle: it is Jacobi-PCG, iterate for iterate.
    assert mvs[0, 0] == mvs[0, 1]
    assert mvs[:, 0].sum() < mvs[:, 1].sum() / 1.3
    for t in [0, T - 1]:
        M = np.asarray(_darcy_matrix(jnp.exp(logas[t])))
        x_ref = np.linalg.solve(M, np.asarray(bs[t]).ravel())
        assert np.linalg.norm(M @ np.asarray(x[t]).ravel() - 1) <= 1e-8 * n
        np.testing.assert_allclose(np.asarray(x[t]).ravel(), x_ref, rtol=1e-6)
    # The carried vectors are Ritz pairs of D^{-1/2} A D^{-1/2} of the last refreshed system
    # (system T-2 with refresh=2): orthonormal, Rayleigh quotients equal to the Ritz values,
    # and not below the smallest eigenvalue.
    M = np.asarray(_darcy_matrix(jnp.exp(logas[T - 2])))
    s = 1 / np.sqrt(np.diag(M))
    Ahat = s[:, None] * M * s[None, :]
    W, th = np.asarray(space.W), np.asarray(space.theta)
    assert bool(space.valid.all())
    np.testing.assert_allclose(W @ W.T, np.eye(8), atol=1e-8)
    np.testing.assert_allclose(np.einsum("ij,jk,ik->i", W, Ahat, W), th, rtol=1e-8)
    assert th.min() >= np.linalg.eigvalsh(Ahat).min() * (1 - 1e-8)


def test_recycled_cg_jacobi_bad_input():
    with pytest.raises(TypeError, match="jacobi"):
        js.linear.RecycledCG(jacobi=1)
    rcg = js.linear.RecycledCG(recycle=2, jacobi=True)
    # A non-positive diagonal (A not SPD) is a value problem: a result, not an exception.
    sol, space = rcg.solve(-jnp.eye(4), jnp.ones(4), rcg.init(jnp.ones(4)))
    assert sol.result == js.RESULTS.invalid_input
    assert not bool(space.valid.any())
