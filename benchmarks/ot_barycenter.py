"""Fixed-support entropic barycenters: `js.ot.barycenter` against POT's `ot.bregman.barycenter`.

Side by side in one process, float64: 1-D histograms (Gaussian bumps on 200 / 1000 points) and
2-D histograms (random images on a 20×20 / 32×32 grid), k measures, the same epsilon, both run
to a marginal error of 1e-9 (POT's `stopThr` on its own error measure, tightened until the two
answers agree). Reports the largest difference of the barycenters relative to their maximum,
the iterations, and the median time per solve (compilation excluded); POT in its log-domain
(`sinkhorn_log`, as stable as jaxsolve's) and plain (`sinkhorn`) variants.

    python benchmarks/ot_barycenter.py [--small]
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import ot as pot  # noqa: E402
from _timing import machine, markdown_table, median_time  # noqa: E402

import jaxsolve as js  # noqa: E402

SMALL = "--small" in sys.argv


def problems():
    rng = np.random.default_rng(0)
    for n in [200] if SMALL else [200, 1000]:
        t = np.linspace(0, 1, n)
        B = np.stack([np.exp(-((t - c) ** 2) / 0.002) for c in (0.2, 0.5, 0.8)])
        yield f"1-D, n={n}, k=3", (t[:, None] - t[None, :]) ** 2, B, 0.002
    for s in [20] if SMALL else [20, 32]:
        g = np.linspace(0, 1, s)
        X = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
        C = np.sum((X[:, None] - X[None, :]) ** 2, -1)
        yield f"2-D, {s}x{s} grid, k=4", C, rng.uniform(0.0, 1.0, (4, s * s)) ** 4, 0.01


def main():
    rows = []
    for name, C, B, eps in problems():
        B = B / B.sum(1, keepdims=True)
        k = B.shape[0]
        w = np.full(k, 1.0 / k)
        solver = js.ot.IterativeBregman(1e-9)
        ours = jax.jit(
            lambda C, B: js.ot.barycenter(C, B, w, epsilon=eps, solver=solver, max_steps=100_000)
        )
        jC, jB = jnp.asarray(C), jnp.asarray(B)
        sol = ours(jC, jB)
        t_ours = median_time(lambda: ours(jC, jB).barycenter, repeats=5)
        for method in ("sinkhorn_log", "sinkhorn"):
            run = lambda: pot.bregman.barycenter(
                B.T, C, eps, w, method=method, numItermax=100_000, stopThr=1e-11, log=True
            )
            ref, log = run()
            t_pot = median_time(lambda: run()[0], repeats=3)
            diff = float(np.max(np.abs(np.asarray(sol.barycenter) - ref)) / ref.max())
            rows.append(
                [
                    name,
                    eps,
                    method,
                    diff,
                    int(sol.stats["num_steps"]),
                    log["niter"],
                    t_ours * 1e3,
                    t_pot * 1e3,
                    t_pot / t_ours,
                ]
            )
    header = [
        "problem",
        "ε",
        "POT method",
        "max |Δp| / max p",
        "jaxsolve iters",
        "POT iters",
        "jaxsolve ms",
        "POT ms",
        "POT / jaxsolve",
    ]
    print(f"Machine: {machine()}\n")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
