"""Exact 1-D and sliced OT: `js.ot.wasserstein_1d` / `js.ot.sliced_wasserstein` against POT.

Side by side in one process, float64, the same data and (for the sliced cost) the same
projections: POT's `ot.wasserstein_1d` and `ot.sliced_wasserstein_distance` (squared, to compare
the same quantity) on NumPy arrays, and on JAX arrays through POT's JAX backend, jitted. Weighted
measures (random weights), p = 2. Reports the relative difference of the values and the median
time per call (compilation excluded).

    python benchmarks/ot_univariate.py [--small]
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
SIZES_1D = [1_000, 10_000] if SMALL else [1_000, 10_000, 100_000]
SIZES_SW = [(1_000, 10, 50)] if SMALL else [(1_000, 10, 50), (10_000, 10, 200), (10_000, 100, 200)]


def weights(rng, n):
    w = rng.uniform(0.1, 1.0, n)
    return w / w.sum()


def main():
    rng = np.random.default_rng(0)
    rows = []
    ours_1d = jax.jit(lambda u, v, a, b: js.ot.wasserstein_1d(u, v, a, b, p=2))
    pot_jax_1d = jax.jit(lambda u, v, a, b: pot.wasserstein_1d(u, v, a, b, p=2))
    for n in SIZES_1D:
        u, v = rng.normal(size=n), rng.normal(size=n // 2) * 2 + 1
        a, b = weights(rng, n), weights(rng, n // 2)
        ref = pot.wasserstein_1d(u, v, a, b, p=2)
        ja = [jnp.asarray(x) for x in (u, v, a, b)]
        ours = float(ours_1d(*ja))
        t_ours = median_time(ours_1d, *ja)
        t_np = median_time(lambda: pot.wasserstein_1d(u, v, a, b, p=2))
        t_pj = median_time(pot_jax_1d, *ja)
        rows.append(
            [
                f"1-D, n={n}, m={n // 2}",
                abs(ours - ref) / ref,
                t_ours * 1e3,
                t_np * 1e3,
                t_pj * 1e3,
                t_np / t_ours,
                t_pj / t_ours,
            ]
        )
    for n, d, k in SIZES_SW:
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.5
        a, b = weights(rng, n), weights(rng, n)
        theta = rng.normal(size=(d, k))
        theta /= np.linalg.norm(theta, axis=0)
        ref = pot.sliced_wasserstein_distance(x, y, a, b, projections=theta) ** 2
        ja = [jnp.asarray(z) for z in (x, y, a, b, theta)]
        ours_fn = jax.jit(lambda x, y, a, b, t: js.ot.sliced_wasserstein(x, y, a, b, projections=t))
        pot_fn = jax.jit(
            lambda x, y, a, b, t: pot.sliced_wasserstein_distance(x, y, a, b, projections=t)
        )
        ours = float(ours_fn(*ja))
        t_ours = median_time(ours_fn, *ja)
        t_np = median_time(
            lambda: pot.sliced_wasserstein_distance(x, y, a, b, projections=theta), repeats=5
        )
        t_pj = median_time(pot_fn, *ja)
        rows.append(
            [
                f"sliced, n=m={n}, d={d}, {k} dirs",
                abs(ours - ref) / ref,
                t_ours * 1e3,
                t_np * 1e3,
                t_pj * 1e3,
                t_np / t_ours,
                t_pj / t_ours,
            ]
        )
    header = [
        "problem",
        "rel. diff vs POT",
        "jaxsolve ms",
        "POT numpy ms",
        "POT jax-jit ms",
        "POT numpy / jaxsolve",
        "POT jax / jaxsolve",
    ]
    print(f"Machine: {machine()}\n")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
