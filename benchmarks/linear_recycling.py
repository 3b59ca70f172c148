"""Krylov subspace recycling over a sequence of related systems: GCRO-DR(m, k) carrying k
vectors between solves vs CG from scratch, 2-D Poisson + cI with random c (64×64), systems
ordered by similarity of c (SKR). Counts matrix–vector products at the same relative tolerance.

Usage: python benchmarks/linear_recycling.py [--small]
"""

import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import jaxsolve as js  # noqa: E402

SMALL = "--small" in sys.argv
N = 24 if SMALL else 64
T = 20 if SMALL else 100
TOL = 1e-6
M, K = 30, 20


def main():
    t0 = time.perf_counter()
    kc, kb = jax.random.split(jax.random.PRNGKey(0))
    cs = 0.05 * jax.random.uniform(kc, (T,))
    order = js.linear.order_by_similarity(cs)
    cs = cs[order]
    b = jax.random.normal(kb, (T, N, N))
    gcrodr = js.linear.GCRODR(tol=TOL, restart=M, recycle=K)

    @jax.jit
    def run(cs, b):
        def body(space, inp):
            c, bi = inp
            A = js.linear.Stencil5.poisson((N, N), shift=c)
            sol, space = gcrodr.solve(A, bi, space)
            cg = js.linear.solve(A, bi, js.linear.CG(tol=TOL, max_steps=5000), throw=False)
            ok = sol.result == js.RESULTS.successful
            return space, (sol.stats["num_matvecs"], cg.stats["num_matvecs"], ok)

        return jax.lax.scan(body, gcrodr.init(b[0]), (cs, b))[1]

    rec, cg, ok = run(cs, b)
    rec, cg = np.asarray(rec), np.asarray(cg)
    assert bool(np.all(ok))
    print(
        f"\n{T} systems 2-D Poisson {N}x{N} + cI, c ~ U[0, 0.05] sorted, rel. tol {TOL:g}, "
        f"float64; GCRO-DR(m={M}, k={K})\n"
    )
    print("| method | total matvecs | matvecs per system (after the first) | CG / method |")
    print("|---|---|---|---|")
    print(f"| CG from scratch | {cg.sum()} | {cg[1:].mean():.1f} | 1.00 |")
    print(
        f"| GCRO-DR recycling | {rec.sum()} | {rec[1:].mean():.1f} | {cg.sum() / rec.sum():.2f} |"
    )
    print(f"\n(total script time {time.perf_counter() - t0:.0f} s)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(cg, label="CG from scratch")
    ax.plot(rec, label=f"GCRO-DR({M}, {K}) recycling")
    ax.set_xlabel("system (sorted by c)")
    ax.set_ylabel("matrix-vector products")
    ax.legend()
    fig.tight_layout()
    fig.savefig(pathlib.Path(__file__).with_name("linear_recycling.png"), dpi=120)


if __name__ == "__main__":
    main()
