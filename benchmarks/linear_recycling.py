"""Krylov subspace recycling over a sequence of related systems, 2-D Poisson + cI with random
c (64×64), systems ordered by similarity of c (SKR). Counts matrix–vector products (all of
them, including those that refresh the recycled space for each new A) at the same relative
tolerance, and checks the true residual ‖b − Ax‖/‖b‖ of every solution.

Two sequences: (1) a new random right-hand side for every system; (2) one fixed source
(b = 1, the neural-operator data-generation setting of SKR, where only the operator changes),
where the previous solution is also a natural starting point.

Methods: CG from scratch; CG started from the previous solution; GCRO-DR(m, k) carrying k
harmonic Ritz vectors; RecycledCG (CG with a spectral preconditioner from k carried Ritz
vectors, refreshed by Rayleigh–Ritz every few systems), cold and warm-started.

Usage: python benchmarks/linear_recycling.py [--small]
"""

import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxsolve as js  # noqa: E402

SMALL = "--small" in sys.argv
N = 24 if SMALL else 64
T = 20 if SMALL else 100
TOL = 1e-6
M, K = 30, 20  # GCRO-DR
KR, REFRESH, HARVEST = (10, 5, 30) if SMALL else (40, 10, 100)  # RecycledCG

gcrodr = js.linear.GCRODR(tol=TOL, restart=M, recycle=K)
rcg = js.linear.RecycledCG(tol=TOL, recycle=KR, refresh=REFRESH, harvest=HARVEST)
cg = js.linear.CG(tol=TOL, max_steps=5000)


def rel_res(A, x, b):
    return jnp.linalg.norm(b - A.mv(x)) / jnp.linalg.norm(b)


@jax.jit
def run(cs, bs):
    """Every method over the sequence; per system: matvecs and true relative residuals."""

    def body(carry, inp):
        g_space, r_space, rw_space, x_cg, x_rw = carry
        c, b = inp
        A = js.linear.Stencil5.poisson((N, N), shift=c)
        s_cg = js.linear.solve(A, b, cg, throw=False)
        s_cgw = js.linear.solve(A, b, cg, x0=x_cg, throw=False)
        s_g, g_space = gcrodr.solve(A, b, g_space)
        s_r, r_space = rcg.solve(A, b, r_space)
        s_rw, rw_space = rcg.solve(A, b, rw_space, x0=x_rw)
        sols = (s_cg, s_cgw, s_g, s_r, s_rw)
        mvs = jnp.stack([s.stats["num_matvecs"] for s in sols])
        res = jnp.stack([rel_res(A, s.value, b) for s in sols])
        ok = jnp.stack([s.result == js.RESULTS.successful for s in sols])
        return (g_space, r_space, rw_space, s_cgw.value, s_rw.value), (mvs, res, ok)

    b0 = bs[0]
    z = jnp.zeros_like(b0)
    init = (gcrodr.init(b0), rcg.init(b0), rcg.init(b0), z, z)
    return jax.lax.scan(body, init, (cs, bs))[1]


NAMES = [
    "CG from scratch",
    "CG from the previous solution",
    f"GCRO-DR(m={M}, k={K})",
    f"RecycledCG(k={KR}, refresh={REFRESH}, harvest={HARVEST})",
    f"RecycledCG(k={KR}, ...) from the previous solution",
]


def table(title, mvs, res, ok):
    print(f"\n{title}\n")
    print(
        "| method | total matvecs | matvecs per system (last 50 %) | CG / method "
        "| max rel. residual |"
    )
    print("|---|---|---|---|---|")
    tot = mvs.sum(0)
    half = mvs.shape[0] // 2
    for i, name in enumerate(NAMES):
        print(
            f"| {name} | {tot[i]} | {mvs[half:, i].mean():.1f} | {tot[0] / tot[i]:.2f} | "
            f"{res[:, i].max():.1e} |"
        )
    assert bool(np.all(ok)), "a solve did not converge"
    assert float(res.max()) <= 1.01 * TOL, "a solution misses the tolerance"


def main():
    t0 = time.perf_counter()
    kc, kb = jax.random.split(jax.random.PRNGKey(0))
    cs = 0.05 * jax.random.uniform(kc, (T,))
    cs = cs[js.linear.order_by_similarity(cs)]
    random_b = jax.random.normal(kb, (T, N, N))
    fixed_b = jnp.ones((T, N, N))
    results = {}
    for label, bs in [("random right-hand sides", random_b), ("fixed source b = 1", fixed_b)]:
        mvs, res, ok = (np.asarray(a) for a in run(cs, bs))
        results[label] = mvs
        table(
            f"{T} systems 2-D Poisson {N}x{N} + cI, c ~ U[0, 0.05] sorted, {label}, "
            f"rel. tol {TOL:g}, float64",
            mvs,
            res,
            ok,
        )
    print(f"\n(total script time {time.perf_counter() - t0:.0f} s)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, (label, mvs) in zip(axes, results.items()):
        for i, name in enumerate(NAMES):
            ax.plot(mvs[:, i], label=name, lw=1)
        ax.set_title(label)
        ax.set_xlabel("system (sorted by c)")
    axes[0].set_ylabel("matrix-vector products")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(pathlib.Path(__file__).with_name("linear_recycling.png"), dpi=120)


if __name__ == "__main__":
    main()
