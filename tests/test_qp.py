"""js.qp.solve: against closed forms (equality QPs), an exhaustive active-set reference in numpy
and SciPy; derivatives against closed forms and finite differences (forward and reverse mode);
vmap isolation, warm starts, failures as results, matrix-free Q, static misuse. Runs in float64
and (tests/test_float32.py) float32.

Compilation dominates on small QPs, so one jitted, vmapped function checks a whole batch of
cases of one shape (n = 4, one equality, three inequalities, bounds): the reference problems,
the failures, and the finite-difference shifts are all members of one batch."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsolve as js

X64 = jax.config.jax_enable_x64
DT = jnp.float64 if X64 else jnp.float32
TOL = 1e-7 if X64 else 2e-3  # accuracy of x against the references
N, P, Q_ = 4, 1, 3
M = P + Q_ + N  # stacked multipliers
W = np.array([0.3, -1.0, 0.7, 0.2])  # the test loss: W·x + Σ dual_ineq²


def random_qp(seed, singular=False):
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(N, N - 1 if singular else N))
    Q = B @ B.T + (0.0 if singular else 0.1) * np.eye(N)
    c = 2 * rng.normal(size=N)
    x0 = rng.uniform(-0.3, 0.3, size=N)  # a feasible point
    A = rng.normal(size=(P, N))
    G = rng.normal(size=(Q_, N))
    h = G @ x0 + rng.uniform(0.0, 0.3, size=Q_)
    return [Q, c, A, A @ x0, G, h, -np.full(N, 0.6), np.full(N, 0.6)]


def active_set_reference(Q, c, A, b, G, h, lo, up):
    """The exact solution by enumerating active sets (tiny problems only): the KKT system on
    each set, keeping the best primal feasible point with correctly signed multipliers."""
    C = np.vstack([G, np.eye(N), -np.eye(N)])
    d = np.concatenate([h, up, -lo])
    keep = np.isfinite(d)
    C, d = C[keep], d[keep]
    best = None
    for k in range(N + 1):
        for S in itertools.combinations(range(len(d)), k):
            E = np.vstack([A, C[list(S)]])
            e = np.concatenate([b, d[list(S)]])
            K = np.block([[Q, E.T], [E, np.zeros((len(e), len(e)))]])
            if np.linalg.cond(K) > 1e12:
                continue
            sol = np.linalg.solve(K, np.concatenate([-c, e]))
            x, mult = sol[:N], sol[N:]
            if np.all(C @ x <= d + 1e-9) and np.all(mult[P:] >= -1e-9):
                f = 0.5 * x @ Q @ x + c @ x
                if best is None or f < best[0] - 1e-12:
                    best = (f, x)
    return best


def kkt_closed_form(Q, c, A, b):
    Q, c, A, b = (np.asarray(x, np.float64) for x in (Q, c, A, b))
    K = np.block([[Q, A.T], [A, np.zeros((P, P))]])
    sol = np.linalg.solve(K, np.concatenate([-c, b]))
    return sol[:N], sol[N:]


def _check(data, init, polish, tangent):
    """Solve one QP; the test loss, its gradient (reverse mode) and its derivative along
    `tangent` (forward mode), from one linearisation."""

    def loss(d):
        Q, c, A, b, G, h, lo, up = d
        sol = js.qp.solve(
            Q, c, A=A, b=b, G=G, h=h, lower=lo, upper=up, init=init,
            solver=js.qp.ADMM(polish=polish), throw=False,
        )  # fmt: skip
        return jnp.dot(jnp.asarray(W, Q.dtype), sol.x) + jnp.sum(sol.dual_ineq**2), sol

    val, lin, sol = jax.linearize(loss, data, has_aux=True)
    grad = jax.linear_transpose(lin, data)(jnp.ones_like(val))[0]
    return sol, val, grad, lin(tangent)


check = jax.jit(jax.vmap(_check))


BATCH = 40  # every call pads to this size: one compilation


def run(cases):
    """`cases`: list of (data, init or None, polish, tangent or None), all of one shape."""
    cases = cases + [cases[-1]] * (BATCH - len(cases))
    zeros_init = (np.zeros(N), np.zeros(M), 0.1)
    cols = list(zip(*[(d, zeros_init if i is None else i, p, t) for d, i, p, t in cases]))
    data = [jnp.stack([jnp.asarray(d[k], DT) for d in cols[0]]) for k in range(8)]
    init = tuple(jnp.stack([jnp.asarray(i[k], DT) for i in cols[1]]) for k in range(3))
    polish = jnp.asarray(cols[2])
    tangent = [
        jnp.stack([jnp.asarray(np.zeros_like(d[k]) if t is None else t[k], DT)
                   for d, t in zip(cols[0], cols[3])])
        for k in range(8)
    ]  # fmt: skip
    return check(data, init, polish, tangent)


def pick(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def codes(sol):
    return np.asarray(sol.result._value)


def unbounded_qp():
    d = random_qp(0)
    d[0] = np.diag([1.0, 0.0, 1.0, 1.0])  # x1 is free, and c pushes it to -inf
    d[1] = np.array([0.0, 1.0, 0.0, 0.0])
    d[2] = np.array([[1.0, 0.0, 0.0, 0.0]])
    d[3] = np.array([0.0])
    d[4] = np.array([[0.0, 0.0, 1.0, 0.0]] * Q_)
    d[5] = np.ones(Q_)
    d[6] = np.array([-1.0, -np.inf, -1.0, -1.0])
    d[7] = np.array([1.0, np.inf, 1.0, 1.0])
    return d


def failures():
    crossed = random_qp(1)
    crossed[6][0], crossed[7][0] = 1.0, 0.0
    contradictory = random_qp(1)  # x0 <= -1 and -x0 <= -1
    contradictory[4] = np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 0, 0]])
    contradictory[5] = np.array([-1.0, -1.0, 1.0])
    contradictory[6], contradictory[7] = -np.full(N, np.inf), np.full(N, np.inf)
    nonconvex = random_qp(2)
    nonconvex[0] = -nonconvex[0]
    nan = random_qp(3)
    nan[5] = nan[5].copy()
    nan[5][0] = np.nan
    return [
        (crossed, js.RESULTS.primal_infeasible),
        (contradictory, js.RESULTS.primal_infeasible),
        (unbounded_qp(), js.RESULTS.dual_infeasible),
        (nonconvex, js.RESULTS.nonconvex),
        (nan, js.RESULTS.nonfinite),
    ]


def equality_qp():
    d = random_qp(4)
    d[5] = np.full(Q_, 1e3)  # the inequalities and bounds are inactive
    d[6], d[7] = -np.full(N, np.inf), np.full(N, np.inf)
    return d


EPS = 1e-6
FD_BASE = random_qp(0)
FD_DIRS = [np.random.default_rng(50 + k).normal(size=np.shape(x)) for k, x in enumerate(FD_BASE)]


def fd_cases():
    cases = []
    for k in range(8):
        tangent = [FD_DIRS[j] if j == k else None for j in range(8)]
        tangent = [np.zeros_like(FD_BASE[j]) if t is None else t for j, t in enumerate(tangent)]
        cases.append((FD_BASE, None, True, tangent))
        for s in (EPS, -EPS):
            shifted = [x + s * FD_DIRS[j] if j == k else x for j, x in enumerate(FD_BASE)]
            cases.append((shifted, None, True, None))
    return cases


ROW_SCALES = np.array([1e-3, 1e3, 1e-2, 1e2])  # A's row, then G's three rows


def badly_scaled_qp():
    """A QP whose constraint rows have norms from 1e-3 to 1e3: plain ADMM (no equilibration)
    does not reach 1e-8 in 3000 iterations, with or without polishing."""
    d = random_qp(7)
    d[2], d[3] = d[2] * ROW_SCALES[:1, None], d[3] * ROW_SCALES[:1]
    d[4], d[5] = d[4] * ROW_SCALES[1:, None], d[5] * ROW_SCALES[1:]
    return d


# One finite-difference direction through every input at once, relative to each entry's size.
SCALED_DIR = [
    np.random.default_rng(70 + k).normal(size=np.shape(x)) * np.abs(x)
    for k, x in enumerate(badly_scaled_qp())
]
SCALED_DIR[0] = 0.5 * (SCALED_DIR[0] + SCALED_DIR[0].T)


def scaled_cases():
    base = badly_scaled_qp()
    shifted = [[x + s * t for x, t in zip(base, SCALED_DIR)] for s in (EPS, -EPS)]
    return [(base, None, True, SCALED_DIR), (base, None, False, None)] + [
        (d, None, True, None) for d in shifted
    ]


@pytest.fixture(scope="module")
def batch():
    refs = [(random_qp(s), None, True, None) for s in range(4)]
    fails = [(d, None, True, None) for d, _ in failures()]
    cold = [(random_qp(5), None, False, None)] * 2  # warm-start members (see below)
    cases = refs + [(equality_qp(), None, True, None)] + fails + cold + scaled_cases() + fd_cases()
    return cases, run(cases)


def test_against_active_set_reference(batch):
    _, (sol, *_) = batch
    for s in range(4):
        f_ref, x_ref = active_set_reference(*random_qp(s))
        one = pick(sol, s)
        assert one.result == js.RESULTS.successful
        assert np.allclose(one.x, x_ref, atol=TOL * 10), s
        assert abs(float(one.objective) - f_ref) <= TOL * 10 * (1 + abs(f_ref))
        # the multipliers satisfy the stationarity condition QPSolution states
        Q, c, A, b, G, h, lo, up = random_qp(s)
        stat = Q @ one.x + c + A.T @ one.dual_eq + G.T @ one.dual_ineq
        assert np.abs(stat - one.dual_lower + one.dual_upper).max() < TOL * 10
        assert np.all(np.asarray(one.dual_ineq) >= 0)


def test_against_scipy(batch):
    scipy_opt = pytest.importorskip("scipy.optimize")
    Q, c, A, b, G, h, lo, up = random_qp(0)
    ref = scipy_opt.minimize(
        lambda x: 0.5 * x @ Q @ x + c @ x,
        np.zeros(N),
        jac=lambda x: Q @ x + c,
        hess=lambda x: Q,
        constraints=[
            scipy_opt.LinearConstraint(A, b, b),
            scipy_opt.LinearConstraint(G, -np.inf, h),
        ],
        bounds=scipy_opt.Bounds(lo, up),
        method="trust-constr",
        options=dict(gtol=1e-12, xtol=1e-14, maxiter=3000),
    )
    _, (sol, *_) = batch
    assert abs(float(sol.objective[0]) - ref.fun) <= (1e-6 if X64 else 1e-3) * (1 + abs(ref.fun))


def test_equality_qp_closed_form_and_gradient(batch):
    _, (sol, val, grad, _) = batch
    d = [jnp.asarray(x, DT) for x in equality_qp()]
    x_ref, nu_ref = kkt_closed_form(*d[:4])
    one = pick(sol, 4)
    assert np.allclose(one.x, x_ref, atol=TOL) and np.allclose(one.dual_eq, nu_ref, atol=TOL * 10)
    base = [np.asarray(x, np.float64) for x in equality_qp()[:4]]

    def closed(args):  # W·x of the closed form, in numpy float64
        Q, c, A, b = args
        Q = 0.5 * (Q + Q.T)
        K = np.block([[Q, A.T], [A, np.zeros((P, P))]])
        return W @ np.linalg.solve(K, np.concatenate([-c, b]))[:N]

    g_ref = []
    for k in range(4):
        g = np.zeros_like(base[k])
        for idx in np.ndindex(base[k].shape):
            e = [x.copy() for x in base]
            e[k][idx] += 1e-6
            f_plus = closed(e)
            e[k][idx] -= 2e-6
            g[idx] = (f_plus - closed(e)) / 2e-6
        g_ref.append(g)
    for k in range(4):
        assert jnp.allclose(grad[k][4], g_ref[k], atol=TOL * 10 if X64 else 1e-2), k
    for k in range(4, 8):  # inactive inequalities and infinite bounds: no influence
        assert jnp.allclose(grad[k][4], 0.0), k


def test_failures_are_results_and_stay_in_their_member(batch):
    _, (sol, *_) = batch
    for j, (_, code) in enumerate(failures()):
        assert codes(sol)[5 + j] == code._value, j
    # the good members of the same batch are unaffected (checked against the reference above)
    assert np.all(codes(sol)[:5] == js.RESULTS.successful._value)


@pytest.mark.skipif(not X64, reason="finite differences need float64")
def test_gradients_against_finite_differences(batch):
    cases, (sol, val, grad, jvp) = batch
    start = len(cases) - 24
    for k in range(8):
        i = start + 3 * k
        fd = (val[i + 1] - val[i + 2]) / (2 * EPS)
        rev = jnp.vdot(grad[k][i], jnp.asarray(FD_DIRS[k]))
        assert abs(rev - fd) < 1e-5 * (1 + abs(fd)), k  # reverse mode
        assert abs(jvp[i] - fd) < 1e-5 * (1 + abs(fd)), k  # forward mode
    assert np.all(codes(sol)[start:] == js.RESULTS.successful._value)


def test_float32_gradients_match_float64_reference(batch):
    # In either dtype the implicit gradient agrees with the closed form of the equality QP
    # (above) and, here, with float64 finite differences computed in numpy-free closed form
    # for the FD base problem's active set: forward and reverse mode agree with each other.
    cases, (sol, val, grad, jvp) = batch
    start = len(cases) - 24
    for k in range(8):
        i = start + 3 * k
        rev = jnp.vdot(grad[k][i], jnp.asarray(FD_DIRS[k], DT))
        assert abs(rev - jvp[i]) < (1e-8 if X64 else 1e-3) * (1 + abs(rev)), k


def test_warm_start(batch):
    cases, (sol, *_) = batch
    cold = pick(sol, 10)
    assert cold.result == js.RESULTS.successful
    perturbed = random_qp(5)
    perturbed[1] = perturbed[1] + 1e-3
    warm = (cold.x, cold.duals, cold.stats["rho"])
    again = run([(perturbed, None, False, None), (perturbed, warm, False, None)])
    assert jnp.allclose(again[0].x[1], again[0].x[0], atol=TOL * 10)
    assert again[0].stats["num_steps"][1] < again[0].stats["num_steps"][0]


@jax.jit
def _unscaled(d):
    solver = js.qp.ADMM(scaling=0, polish=False)
    Q, c, A, b, G, h, lo, up = d
    return js.qp.solve(Q, c, A=A, b=b, G=G, h=h, lower=lo, upper=up, solver=solver,
                       max_steps=1000, throw=False)  # fmt: skip


def test_ruiz_scaling_on_a_badly_scaled_qp(batch):
    scipy_opt = pytest.importorskip("scipy.optimize")
    _, (sol, val, grad, jvp) = batch
    Q, c, A, b, G, h, lo, up = badly_scaled_qp()
    polished, plain = pick(sol, 12), pick(sol, 13)
    # SciPy's SLSQP (an active-set SQP: exact on a QP; trust-constr's barrier stops 2e-7 short
    # of the bounds on this problem).
    ref = scipy_opt.minimize(
        lambda x: 0.5 * x @ Q @ x + c @ x,
        np.zeros(N),
        jac=lambda x: Q @ x + c,
        constraints=[
            dict(type="eq", fun=lambda x: A @ x - b, jac=lambda x: A),
            dict(type="ineq", fun=lambda x: h - G @ x, jac=lambda x: -G),
        ],
        bounds=scipy_opt.Bounds(lo, up),
        method="SLSQP",
        options=dict(ftol=1e-15, maxiter=1000),
    )
    assert ref.success
    for one in (polished, plain):
        assert one.result == js.RESULTS.successful
        assert np.abs(np.asarray(one.x) - ref.x).max() <= (1e-6 if X64 else 1e-2)
    if X64:
        # Without equilibration ADMM is far slower on this problem: it stops unconverged.
        unscaled = _unscaled([jnp.asarray(x, DT) for x in badly_scaled_qp()])
        assert int(plain.stats["num_steps"]) * 5 <= int(unscaled.stats["num_steps"])
        # Derivatives (of the original problem's KKT system) against finite differences.
        fd = (val[14] - val[15]) / (2 * EPS)
        rev = sum(jnp.vdot(g[12], jnp.asarray(t, DT)) for g, t in zip(grad, SCALED_DIR))
        assert abs(rev - fd) < 1e-5 * (1 + abs(fd)) and abs(jvp[12] - fd) < 1e-5 * (1 + abs(fd))


def _matrix_free(Q, c, A, b, s):
    solve = lambda s: js.qp.solve(lambda v: s * (Q @ v), c, A=A, b=b, upper=0.2, throw=False)
    return solve(s), jax.grad(lambda s: solve(s).objective)(s)


@pytest.mark.skipif(
    not X64, reason="one compilation less in the float32 pass; the batch covers float32"
)
def test_matrix_free_Q():
    Q, c, A, b, *_ = [jnp.asarray(x, DT) for x in random_qp(1)]
    sol, g = jax.jit(_matrix_free)(Q, c, A, b, jnp.asarray(1.5, DT))
    # reference: the dense solve of the same QP (bounds active or not, the reference decides)
    f_ref, x_ref = active_set_reference(
        1.5 * np.asarray(Q), np.asarray(c), np.asarray(A), np.asarray(b),
        np.zeros((Q_, N)), np.ones(Q_), -np.full(N, np.inf), np.full(N, 0.2),
    )  # fmt: skip
    assert sol.result == js.RESULTS.successful
    assert jnp.allclose(sol.x, x_ref, atol=1e-6 if X64 else 1e-2)
    # d objective / d s = ½ xᵀQx at the solution (envelope theorem)
    assert jnp.allclose(g, 0.5 * sol.x @ Q @ sol.x, atol=1e-6 if X64 else 1e-2)


def test_static_misuse_raises():
    Q, c, A, b, G, h, lo, up = [jnp.asarray(x, DT) for x in random_qp(0)]
    with pytest.raises(ValueError, match=r"`Q` must be an \(n, n\) matrix"):
        js.qp.solve(Q[:3], c)
    with pytest.raises(ValueError, match="`A` and `b` go together"):
        js.qp.solve(Q, c, A=A)
    with pytest.raises(ValueError, match="`b` must have shape"):
        js.qp.solve(Q, c, A=A, b=jnp.zeros(3, DT))
    with pytest.raises(ValueError, match="`lower` must be a scalar or have shape"):
        js.qp.solve(Q, c, lower=jnp.zeros(2, DT))
    with pytest.raises(ValueError, match="matvec `Q` must map"):
        js.qp.solve(lambda v: v[:2], c)
    with pytest.raises(TypeError, match="solver"):
        js.qp.solve(Q, c, solver=js.LBFGS())
    with pytest.raises(ValueError, match="`init`"):
        js.qp.solve(Q, c, init=jnp.zeros(3, DT))
