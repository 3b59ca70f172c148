"""Quadratically regularised and sparsity-constrained OT: jaxsolve vs POT's `ot.smooth`.

Same problems (random point clouds, squared Euclidean cost normalised to mean 1, uniform
weights), same dual; we report the dual objective's relative difference, the wall-time ratio,
nonzeros of the plans and the L1 marginal error. float64, medians after compilation.

    python benchmarks/ot_sparse.py [--small]
"""

import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import ot  # noqa: E402
from ot.smooth import SparsityConstrained, SquaredL2, dual_obj_grad  # noqa: E402

import jaxsolve as js  # noqa: E402

SMALL = "--small" in sys.argv
SIZES = [100] if SMALL else [100, 300]
GAMMA = 0.1


def median_time(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    rows = []
    for n in SIZES:
        x = jax.random.normal(jax.random.PRNGKey(n), (n, 2))
        y = jax.random.normal(jax.random.PRNGKey(n + 1), (n, 2)) + 1.0
        C = jnp.sum((x[:, None] - y[None]) ** 2, -1)
        C = C / C.mean()
        a = jnp.full(n, 1.0 / n)
        Cn, an = np.asarray(C), np.asarray(a)
        for k in (None, 5):
            solver = (
                js.ot.QuadraticOT(gamma=GAMMA, tol=1e-9)
                if k is None
                else js.ot.SparsityConstrainedOT(gamma=GAMMA, k=k)
            )
            run = jax.jit(lambda C, s=solver: js.ot.solve_smooth(C, solver=s, throw=False))
            t_ours = median_time(lambda: jax.block_until_ready(run(C)))
            sol = run(C)
            reg_type = "l2" if k is None else "sparsity_constrained"

            def pot():
                return ot.smooth.smooth_ot_dual(
                    an,
                    an,
                    Cn,
                    GAMMA,
                    reg_type=reg_type,
                    max_nz=k,
                    log=True,
                    stopThr=1e-9,
                    numItermax=5000,
                )

            t_pot = median_time(pot)
            G, log = pot()
            regul = SquaredL2(gamma=GAMMA) if k is None else SparsityConstrained(k, gamma=GAMMA)
            obj_pot = dual_obj_grad(log["alpha"], log["beta"], an, an, Cn, regul)[0]
            obj = float(sol.dual_cost)
            rows.append(
                dict(
                    n=n,
                    kind="quadratic" if k is None else f"sparsity k={k}",
                    rel=(obj - obj_pot) / abs(obj_pot),
                    t_ours=t_ours,
                    t_pot=t_pot,
                    nnz=int(jnp.sum(sol.plan > 0)),
                    nnz_pot=int(np.sum(G > 1e-14)),
                    maxcol=int(jnp.max(jnp.sum(sol.plan > 0, 0))),
                    err=float(sol.stats["marginal_error"]),
                )
            )
            print(rows[-1], flush=True)
    print(f"\nQuadratic / sparsity-constrained OT, gamma = {GAMMA}, float64\n")
    print(
        "| n | problem | dual objective: (ours − POT)/POT | nonzeros ours / POT | max nonzeros "
        "per column | marginal error (L1) | time ours (s) | time POT (s) | ratio ours/POT |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']} | {r['kind']} | {r['rel']:+.1e} | {r['nnz']} / {r['nnz_pot']} | "
            f"{r['maxcol']} | {r['err']:.1e} | {r['t_ours']:.3f} | {r['t_pot']:.3f} | "
            f"{r['t_ours'] / r['t_pot']:.2f} |"
        )
    fig, ax = plt.subplots(figsize=(6, 3))
    labels = [f"{r['kind']} n={r['n']}" for r in rows]
    ax.bar(labels, [r["t_ours"] / r["t_pot"] for r in rows])
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set_ylabel("time ratio jaxsolve / POT")
    plt.xticks(rotation=15)
    fig.tight_layout()
    fig.savefig("benchmarks/ot_sparse.png", dpi=120)


if __name__ == "__main__":
    main()
