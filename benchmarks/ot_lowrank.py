"""Low-rank Sinkhorn (`js.ot.LowRankSinkhorn`) vs OTT-JAX's `sinkhorn_lr.LRSinkhorn`, same
process, float32, on point clouds (a mixture of 10 Gaussians in 2-D against a shifted copy),
n = m = 10 000 and 100 000, rank 10.

Same conventions on both sides: ε = 0 (no entropic term), rescaled step `γ / max|∇|²`, the same
random initial factors (jaxsolve's `key=0` draws OTT-JAX's `RandomInitializer` factors), Dykstra
tolerance 1e-3 (OTT-JAX's default). Rows:

- `OTT γ=10, LRCGeometry`: OTT-JAX's defaults (γ = 10, its convergence test every 10
  iterations) on the factored cost `PointCloud(x, y).to_LRCGeometry()` (the ratios' base).
- `OTT γ=10, PointCloud`: the same on OTT-JAX's `PointCloud`, whose `apply_cost` recomputes the
  cost row by row (n = 10 000 only: hours at 100 000).
- `jaxsolve γ=10`: the same step, jaxsolve's loop (monotone safeguard, stop on the factor change
  ≤ 1e-9, ten net rejected steps, or 300 steps).
- `jaxsolve γ=100`: jaxsolve's default step.

Cost is `⟨C, P⟩` of the returned plan (never formed: `C R` through the factorisation); time is
the best of interleaved runs, compilation excluded; memory is XLA's compiled temporary bytes
(`memory_analysis()`). At n = 10 000 a dense entropic Sinkhorn (jaxsolve, ε = 0.01 · mean cost,
blockwise) gives a reference cost (an upper bound on the exact OT cost within ε terms).

Run: `python benchmarks/ot_lowrank.py [--quick] [--sizes 10000,100000] [--no-slow]`; writes
benchmarks/RESULTS-lowrank.md (`--no-slow`: RESULTS-lowrank-fast.md, without the slow rows).
"""

import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from _timing import interleaved_times, markdown_table
from ott.geometry import pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn_lr

import jaxsolve as js

RANK = 10
K = 10


def clouds(n, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    centers = 3.0 * jax.random.normal(k1, (K, 2))
    x = centers[jnp.arange(n) % K] + 0.3 * jax.random.normal(k2, (n, 2))
    y = centers[(jnp.arange(n) * 7) % K] + 0.3 * jax.random.normal(k3, (n, 2)) + 0.5
    return x, y


def ott_fn(x, y):
    out = sinkhorn_lr.LRSinkhorn(rank=RANK, gamma=10.0)(
        linear_problem.LinearProblem(pointcloud.PointCloud(x, y))
    )
    return out.primal_cost, out.n_iters


def ott_lrc_fn(x, y):
    # The factored cost (rank d + 2), as an OTT-JAX user does for large clouds: its
    # PointCloud's apply_cost recomputes C row by row (O(n m d) per product).
    geom = pointcloud.PointCloud(x, y).to_LRCGeometry()
    out = sinkhorn_lr.LRSinkhorn(rank=RANK, gamma=10.0)(linear_problem.LinearProblem(geom))
    return out.primal_cost, out.n_iters


def ours(gamma):
    solver = js.ot.LowRankSinkhorn(
        rank=RANK, gamma=gamma, key=0, inner_tol=1e-3, tol=1e-9, max_steps=300
    )

    def fn(x, y):
        sol = js.ot.solve(js.ot.PointCloud(x, y), solver=solver, throw=False)
        return sol.cost, sol.stats["num_steps"]

    return fn


def dense_sinkhorn(x, y):
    geom = js.ot.PointCloud(x, y, epsilon=0.01, relative_epsilon="mean", batch_size=2048)
    sol = js.ot.solve(geom, throw=False)
    return sol.transport_cost, sol.stats["num_steps"]


def temp_mb(fn, x, y):
    mem = jax.jit(fn).lower(x, y).compile().memory_analysis()
    return mem.temp_size_in_bytes / 2**20


def main():
    quick = "--quick" in sys.argv
    sizes = [2_000] if quick else [10_000, 100_000]
    if "--sizes" in sys.argv:
        sizes = [int(v) for v in sys.argv[sys.argv.index("--sizes") + 1].split(",")]
    slow_rows = "--no-slow" not in sys.argv
    machine = "2-core x86-64 CPU container (shared with other jobs), jax " + jax.__version__
    rows = []
    for n in sizes:
        x, y = clouds(n)
        fns = {
            "OTT γ=10, LRCGeometry": ott_lrc_fn,
            "jaxsolve γ=10": ours(10.0),
            "jaxsolve γ=100": ours(100.0),
        }
        if n <= 10_000 and slow_rows:
            fns["OTT γ=10, PointCloud"] = ott_fn
            fns["dense Sinkhorn (reference)"] = dense_sinkhorn
        mems = {k: temp_mb(f, x, y) for k, f in fns.items()}
        outs = {k: jax.jit(f)(x, y) for k, f in fns.items()}
        t0 = time.perf_counter()
        times = interleaved_times(fns, x, y, repeats=3, slow=60.0)
        print(f"n={n}: timed in {time.perf_counter() - t0:.0f} s", flush=True)
        base = times["OTT γ=10, LRCGeometry"]
        for k in fns:
            cost, steps = outs[k]
            rows.append([n, k, float(cost), int(steps), times[k], times[k] / base, mems[k]])
            print(rows[-1], flush=True)
    table = markdown_table(
        ["n = m", "solver", "cost ⟨C,P⟩", "iterations", "time (s)", "time / OTT", "temp MB"],
        rows,
    )
    text = (
        "# Low-rank Sinkhorn vs OTT-JAX\n\n"
        f"Machine: {machine}. float32, rank {RANK}, d = 2, ε = 0, Dykstra tolerance 1e-3, "
        "same random initial factors. Script: `benchmarks/ot_lowrank.py` (see its docstring "
        "for the settings).\n\n" + table + "\n"
    )
    print(text)
    if not quick:
        name = "RESULTS-lowrank.md" if slow_rows else "RESULTS-lowrank-fast.md"
        (pathlib.Path(__file__).parent / name).write_text(text)


if __name__ == "__main__":
    main()
