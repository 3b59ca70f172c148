"""Minibatch OT couplings: time per call of `js.ot.coupling` and the straightness it buys.

Batches of noise x0 ~ N(0, I) and "data" x1 (a shifted, anisotropic Gaussian mixture), batch
128 / 256 / 1024, dimension 2 / 784. For each: time per call (median after compile, float32) of the
exact pairing (auction warm-started by Sinkhorn's duals) and the entropic one (Sinkhorn +
argmax), SciPy's Hungarian `linear_sum_assignment` for reference, and the mean squared
pair length E‖x1 − x0‖² of the pairs (independent vs OT): the straight-line paths flow
matching regresses on are that much shorter and cross less.

    python benchmarks/ot_coupling.py [--small]
"""

import sys
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

import jaxsolve as js  # noqa: E402

SMALL = "--small" in sys.argv
CASES = (
    [(256, 2), (256, 784)]
    if SMALL
    else [(128, 2), (128, 784), (256, 2), (256, 784), (1024, 2), (1024, 784)]
)


def median_time(fn, repeats=3):
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def data(n, d, key):
    k1, k2 = jax.random.split(key)
    centres = jnp.where(jax.random.bernoulli(k1, 0.5, (n, 1)), 2.0, -2.0)
    return centres + 0.5 * jax.random.normal(k2, (n, d))


def main():
    rows = []
    for n, d in CASES:
        x0 = jax.random.normal(jax.random.PRNGKey(0), (n, d))
        x1 = data(n, d, jax.random.PRNGKey(1))
        indep = float(jnp.mean(jnp.sum((x1 - x0) ** 2, -1)))
        row = dict(n=n, d=d, indep=indep)
        for method in ("exact", "entropic"):
            f = jax.jit(lambda a, b, m=method: js.ot.coupling(a, b, method=m))
            row[f"t_{method}"] = median_time(lambda: f(x0, x1))
            _, paired = f(x0, x1)
            row[method] = float(jnp.mean(jnp.sum((paired - x0) ** 2, -1)))
        C = np.asarray(jnp.sum(x0**2, 1)[:, None] + jnp.sum(x1**2, 1)[None] - 2 * x0 @ x1.T)
        t0 = time.perf_counter()
        r, c = linear_sum_assignment(C)
        row["t_scipy"] = time.perf_counter() - t0
        row["opt"] = float(C[r, c].mean())
        rows.append(row)
        print(row, flush=True)
    print("\nMinibatch OT coupling, float32; straightness = E‖x1 − x0‖² of the pairs\n")
    print(
        "| batch | d | exact (auction) s/call | entropic s/call | SciPy Hungarian s/call | "
        "exact / SciPy time | E‖x1−x0‖² independent | exact | entropic | optimum | "
        "gain (indep / exact) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']} | {r['d']} | {r['t_exact']:.3f} | {r['t_entropic']:.3f} | "
            f"{r['t_scipy']:.3f} | {r['t_exact'] / r['t_scipy']:.1f}x | {r['indep']:.2f} | "
            f"{r['exact']:.2f} | {r['entropic']:.2f} | {r['opt']:.2f} | "
            f"{r['indep'] / r['exact']:.2f}x |"
        )
    fig, ax = plt.subplots(figsize=(6, 3))
    labels = [f"{r['n']}x{r['d']}" for r in rows]
    xs = np.arange(len(rows))
    ax.bar(xs - 0.27, [r["t_exact"] for r in rows], 0.27, label="exact (auction)")
    ax.bar(xs, [r["t_entropic"] for r in rows], 0.27, label="entropic")
    ax.bar(xs + 0.27, [r["t_scipy"] for r in rows], 0.27, label="SciPy Hungarian")
    ax.set_xticks(xs, labels)
    ax.legend(fontsize=7)
    ax.set_ylabel("seconds per call")
    ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig("benchmarks/ot_coupling.png", dpi=120)


if __name__ == "__main__":
    main()
