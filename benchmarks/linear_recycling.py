"""Krylov subspace recycling over sequences of 100 related systems on 64×64 grids. Counts
matrix–vector products — all of them, including those that refresh the recycled space for a
new A — at the same relative tolerance, checks the true residual ‖b − Ax‖/‖b‖ of every
solution, and times each method's whole sequence (one jitted `lax.scan`, after compilation).

Five sequences:

1. Poisson + cI, c ~ U[0, 0.05] ordered by `order_by_similarity`, a new random (white-noise)
   right-hand side per system;
2. the same operators, one fixed source b = 1 (SKR's data-generation setting: only the
   operator changes, and the previous solution is a natural starting point);
3. Darcy −∇·(a∇u) = f, a = exp(g/std(g)) with g a new smooth random field per system
   (`low_frequency_rhs(key, (64, 64), decay=1)`, the field of `linear_learned.py`; contrast
   max/min a ≈ 60–800), systems ordered by `order_by_similarity` of log a, fixed source f = 1;
4. the same Darcy operators with a new white-noise right-hand side per system;
5. Darcy along a preconditioned Crank–Nicolson (pCN) chain, the proposal sequence of MCMC for
   Bayesian inversion of a Darcy coefficient: log a_{t+1} = ρ log a_t + √(1 − ρ²) ξ_t with ξ_t a
   fresh field of the same law (ρ = 0.98), fixed source f = 1 — related systems in a stronger
   sense than independent draws sorted by similarity.

Methods: CG from scratch (the issue's baseline); CG / Jacobi-PCG from the previous solution
(fixed sources); Jacobi-PCG (Darcy: the like-with-like baseline for recycling on top of
Jacobi); GCRO-DR(m, k) (Poisson only, for run time); RecycledCG, cold and from the previous
solution, and on Darcy `RecycledCG(jacobi=True)`.

Then an idealised bound for Darcy: Jacobi-PCG with the spectral update built from the exact k
smallest eigenpairs of D^{-1/2} A D^{-1/2} — of the current system (unreachable without paying
for them) and of the previous system in the sequence (what perfect recycling could carry).

`--sweep` instead runs RecycledCG(jacobi=True) over a grid of (k, refresh, harvest) on the
Darcy sequence with random right-hand sides, and over (k, refresh) on the pCN chain (how much
a larger k or a more frequent refresh buys), against Jacobi-PCG.

Usage: python benchmarks/linear_recycling.py [--small] [--sweep]
"""

import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402

import jaxsolve as js  # noqa: E402

SMALL = "--small" in sys.argv
N = 24 if SMALL else 64
T = 20 if SMALL else 100
TOL = 1e-6
M, K = 30, 20  # GCRO-DR
KR, REFRESH, HARVEST = (10, 5, 100) if SMALL else (40, 10, 300)  # RecycledCG
MAX_STEPS = 5000

gcrodr = js.linear.GCRODR(tol=TOL, restart=M, recycle=K)
rcg = js.linear.RecycledCG(tol=TOL, recycle=KR, refresh=REFRESH, harvest=HARVEST)
rcg_j = js.linear.RecycledCG(
    tol=TOL, recycle=KR, refresh=REFRESH, harvest=HARVEST, jacobi=True, max_steps=MAX_STEPS
)
cg = js.linear.CG(tol=TOL, max_steps=MAX_STEPS)
pcg = js.linear.CG(tol=TOL, max_steps=MAX_STEPS, preconditioner=js.linear.JacobiPreconditioner())


# Each method: (name, init(b0) -> carry, step(carry, A, b) -> (carry, Solution)).
def _plain(solver, warm):
    def step(x_prev, A, b):
        s = js.linear.solve(A, b, solver, x0=x_prev if warm else None, throw=False)
        return s.value, s

    return lambda b0: jnp.zeros_like(b0), step


def _recycled(method, warm):
    def init(b0):
        return method.init(b0), jnp.zeros_like(b0)

    def step(carry, A, b):
        space, x_prev = carry
        s, space = method.solve(A, b, space, x0=x_prev if warm else None)
        return (space, s.value), s

    return init, step


CG_ = ("CG from scratch", *_plain(cg, False))
CGW = ("CG from the previous solution", *_plain(cg, True))
PCG = ("Jacobi-PCG from scratch", *_plain(pcg, False))
PCGW = ("Jacobi-PCG from the previous solution", *_plain(pcg, True))
GCRO = (f"GCRO-DR(m={M}, k={K})", *_recycled(gcrodr, False))
RCG = (f"RecycledCG(k={KR}, refresh={REFRESH}, harvest={HARVEST})", *_recycled(rcg, False))
RCGW = ("RecycledCG, from the previous solution", *_recycled(rcg, True))
RCGJ = ("RecycledCG(jacobi=True), same k", *_recycled(rcg_j, False))
RCGJW = ("RecycledCG(jacobi=True), from the previous solution", *_recycled(rcg_j, True))

POISSON_METHODS = [CG_, CGW, GCRO, RCG, RCGW]
DARCY_FIXED_METHODS = [CG_, PCG, PCGW, RCG, RCGJ, RCGJW]
DARCY_RANDOM_METHODS = [CG_, PCG, RCG, RCGJ]  # no warm starts: the new b is unrelated
PCN_METHODS = [CG_, PCG, PCGW, RCGJ, RCGJW]


def make_sequence(make_op, init, step):
    @jax.jit
    def run(params, bs):
        def body(carry, inp):
            p, b = inp
            A = make_op(p)
            carry, s = step(carry, A, b)
            res = jnp.linalg.norm(b - A.mv(s.value)) / jnp.linalg.norm(b)
            ok = s.result == js.RESULTS.successful
            return carry, (s.stats["num_matvecs"], res, ok)

        return jax.lax.scan(body, init(bs[0]), (params, bs))[1]

    return run


def run_all(methods, make_op, params, bs):
    """Per method: matvecs and true residual of every system, wall time of the sequence."""
    out = {}
    for name, init, step in methods:
        run = make_sequence(make_op, init, step).lower(params, bs).compile()
        t = time.perf_counter()
        mvs, res, ok = jax.block_until_ready(run(params, bs))
        out[name] = (np.asarray(mvs), np.asarray(res), np.asarray(ok), time.perf_counter() - t)
    return out


def table(title, out, baselines):
    print(f"\n{title}\n")
    ratio_heads = " | ".join(f"{b} / method" for b in baselines)
    print(
        "| method | total matvecs | matvecs per system (last 50 %) | "
        f"{ratio_heads} | max rel. residual | time (s) |"
    )
    print("|---" * (5 + len(baselines)) + "|")
    tot = {k: int(v[0].sum()) for k, v in out.items()}
    for name, (mvs, res, ok, secs) in out.items():
        ratios = " | ".join(f"{tot[b] / tot[name]:.2f}" for b in baselines)
        print(
            f"| {name} | {tot[name]} | {mvs[len(mvs) // 2 :].mean():.1f} | {ratios} | "
            f"{res.max():.1e} | {secs:.2f} |"
        )
        assert bool(np.all(ok)), f"{name}: a solve did not converge"
        assert float(res.max()) <= 1.01 * TOL, f"{name}: a solution misses the tolerance"


def darcy_fields(key):
    keys = jax.random.split(key, T)
    g = jax.vmap(lambda k: js.linear.low_frequency_rhs(k, (N, N), 1.0, jnp.float64))(keys)
    loga = g / jnp.std(g, axis=(1, 2), keepdims=True)
    return loga[js.linear.order_by_similarity(loga)]


def pcn_fields(key, rho=0.98):
    keys = jax.random.split(key, T)
    xi = jax.vmap(lambda k: js.linear.low_frequency_rhs(k, (N, N), 1.0, jnp.float64))(keys)
    xi = xi / jnp.std(xi, axis=(1, 2), keepdims=True)

    def step(g, x):
        g = rho * g + jnp.sqrt(1 - rho**2) * x
        return g, g

    return jnp.concatenate([xi[:1], jax.lax.scan(step, xi[0], xi[1:])[1]])


def scaled_csr(A):
    """D^{-1/2} A D^{-1/2} of a Stencil5, as a SciPy CSR matrix, and D^{-1/2}."""
    c, w, e, nn, s = (np.asarray(x).ravel() for x in (A.center, A.west, A.east, A.north, A.south))
    mat = sp.diags(c) + sp.diags(w[1:], -1) + sp.diags(e[:-1], 1)
    mat = mat + sp.diags(nn[N:], -N) + sp.diags(s[:-N], N)
    d = 1 / np.sqrt(c)
    return sp.csr_matrix(sp.diags(d) @ mat @ sp.diags(d)), d


def ideal_bound(loga, bs, ts):
    """Jacobi-PCG iterations with the spectral update from exact eigenpairs (k = KR and 2 KR)
    of the current and of the previous system, on systems `ts`."""
    rows = []
    for t in ts:
        A = js.linear.Stencil5.darcy(jnp.exp(loga[t]))
        base = int(js.linear.solve(A, bs[t], pcg).stats["num_matvecs"])
        row = [base]
        for src in (t, t - 1):
            Ahat, _ = scaled_csr(js.linear.Stencil5.darcy(jnp.exp(loga[src])))
            lam, V = spla.eigsh(Ahat, k=2 * KR + 1, sigma=0, which="LM")
            idx = np.argsort(lam)
            lam, V = lam[idx], V[:, idx]
            for k in (KR, 2 * KR):
                W = jnp.asarray(V[:, :k].T)
                gam = jnp.asarray(lam[k] / lam[:k] - 1)
                d = 1 / jnp.sqrt(A.center.ravel())

                def prec(r, W=W, gam=gam, d=d):
                    q = d * r.ravel()
                    return (d * (q + W.T @ (gam * (W @ q)))).reshape(r.shape)

                s = js.linear.solve(A, bs[t], js.linear.CG(tol=TOL, preconditioner=prec))
                row.append(int(s.stats["num_matvecs"]))
        rows.append(row)
    return np.array(rows)


def sweep():
    loga = darcy_fields(jax.random.split(jax.random.PRNGKey(0), 4)[2])
    bs = jax.random.normal(jax.random.split(jax.random.PRNGKey(0), 4)[1], (T, N, N))
    darcy = lambda la: js.linear.Stencil5.darcy(jnp.exp(la))
    grid = [(20, 10, 300), (40, 10, 100), (40, 1, 300), (40, 5, 300), (40, 10, 300)]
    grid += [(40, 20, 300), (80, 10, 300), (80, 20, 300), (120, 20, 300)]
    methods = [PCG]
    for k, r, h in grid:
        m = js.linear.RecycledCG(
            tol=TOL, recycle=k, refresh=r, harvest=h, jacobi=True, max_steps=MAX_STEPS
        )
        methods.append(
            (f"RecycledCG(jacobi=True, k={k}, refresh={r}, harvest={h})", *_recycled(m, False))
        )
    out = run_all(methods, darcy, loga, bs)
    table(
        f"Sweep: {T} systems Darcy {N}x{N}, random right-hand sides, rel. tol {TOL:g}, float64",
        out,
        ["Jacobi-PCG from scratch"],
    )
    # The pCN chain, fixed source, warm-started: how often to refresh.
    loga = pcn_fields(jax.random.split(jax.random.PRNGKey(0), 4)[3])
    methods = [PCG]
    for k, r in [(40, 3), (40, 5), (40, 10), (80, 5)]:
        m = js.linear.RecycledCG(
            tol=TOL, recycle=k, refresh=r, harvest=300, jacobi=True, max_steps=MAX_STEPS
        )
        methods.append((f"RecycledCG(jacobi=True, k={k}, refresh={r}), warm", *_recycled(m, True)))
    out = run_all(methods, darcy, loga, jnp.ones((T, N, N)))
    table(
        f"Sweep: {T} systems Darcy {N}x{N} along the pCN chain, f = 1, rel. tol {TOL:g}",
        out,
        ["Jacobi-PCG from scratch"],
    )


def main():
    if "--sweep" in sys.argv:
        return sweep()
    t0 = time.perf_counter()
    kc, kb, ka, kf = jax.random.split(jax.random.PRNGKey(0), 4)
    cs = 0.05 * jax.random.uniform(kc, (T,))
    cs = cs[js.linear.order_by_similarity(cs)]
    random_b = jax.random.normal(kb, (T, N, N))
    fixed_b = jnp.ones((T, N, N))
    poisson = lambda c: js.linear.Stencil5.poisson((N, N), shift=c)
    darcy = lambda la: js.linear.Stencil5.darcy(jnp.exp(la))
    loga = darcy_fields(ka)
    contrast = jnp.exp(loga.max(axis=(1, 2)) - loga.min(axis=(1, 2)))
    results = {}
    grid = f"{N}x{N}"
    for label, bs in [("random right-hand sides", random_b), ("fixed source b = 1", fixed_b)]:
        out = run_all(POISSON_METHODS, poisson, cs, bs)
        results[f"Poisson + cI, {label}"] = out
        table(
            f"{T} systems 2-D Poisson {grid} + cI, c ~ U[0, 0.05] sorted, {label}, "
            f"rel. tol {TOL:g}, float64",
            out,
            ["CG from scratch"],
        )
    for label, bs, methods in [
        ("fixed source f = 1", fixed_b, DARCY_FIXED_METHODS),
        ("random right-hand sides", random_b, DARCY_RANDOM_METHODS),
    ]:
        out = run_all(methods, darcy, loga, bs)
        results[f"Darcy, {label}"] = out
        table(
            f"{T} systems Darcy {grid}, a = exp(smooth random field), a new field per system "
            f"(contrast {float(contrast.min()):.0f}-{float(contrast.max()):.0f}), sorted, "
            f"{label}, rel. tol {TOL:g}, float64",
            out,
            ["CG from scratch", "Jacobi-PCG from scratch"],
        )
    loga_pcn = pcn_fields(kf)
    c_pcn = jnp.exp(loga_pcn.max(axis=(1, 2)) - loga_pcn.min(axis=(1, 2)))
    out = run_all(PCN_METHODS, darcy, loga_pcn, fixed_b)
    results["Darcy along a pCN chain (rho = 0.98), fixed source f = 1"] = out
    table(
        f"{T} systems Darcy {grid} along a pCN chain, log a_(t+1) = 0.98 log a_t + 0.2 xi_t "
        f"(contrast {float(c_pcn.min()):.0f}-{float(c_pcn.max()):.0f}), fixed source f = 1, "
        f"rel. tol {TOL:g}, float64",
        out,
        ["CG from scratch", "Jacobi-PCG from scratch", "Jacobi-PCG from the previous solution"],
    )
    ts = [T // 2, 3 * T // 4, T - 1]
    print(
        f"\nIdealised (systems {ts}, mean): matvecs of Jacobi-PCG from scratch, and of "
        "Jacobi-PCG with the spectral update from exact eigenpairs of D^{-1/2} A D^{-1/2} "
        "(no cost counted for them)\n"
    )
    print(
        f"| sequence | Jacobi-PCG | current A, k={KR} | current A, k={2 * KR} | "
        f"previous A, k={KR} | previous A, k={2 * KR} |"
    )
    print("|---|---|---|---|---|---|")
    for label, la, bs in [
        ("Darcy, independent fields, random b", loga, random_b),
        ("Darcy, pCN chain, f = 1", loga_pcn, fixed_b),
    ]:
        mean = ideal_bound(la, bs, ts).mean(0)
        cells = " | ".join(f"{m:.0f} ({mean[0] / m:.2f}×)" for m in mean)
        print(f"| {label} | {cells} |")
    print(f"\n(total script time {time.perf_counter() - t0:.0f} s)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 7.5))
    for ax, (label, out) in zip(axes.ravel(), results.items()):
        for name, (mvs, *_) in out.items():
            ax.plot(mvs, label=name, lw=1)
        ax.set_title(label, fontsize=9)
        ax.set_yscale("log")
        ax.set_xlabel("system (sorted)")
        ax.set_ylabel("matrix-vector products")
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(results) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(pathlib.Path(__file__).with_name("linear_recycling.png"), dpi=120)


if __name__ == "__main__":
    main()
