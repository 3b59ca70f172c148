"""Sinkhorn sweep vs the hardware floor: jaxsolve's kernel-mode sweep next to a bare JAX loop.

    python benchmarks/ot_sweep_floor.py [--small] [--cases dense32,dense64,block32] [--rounds 5]

The floor is written here and does only the essential arithmetic of a sweep:
`u = a / (K @ v); v = b / (Kᵀ @ u)` in a `fori_loop` (`Kᵀ u` written `u @ K`: XLA's CPU
backend runs the literal `K.T @ u` about 50× slower) with the Gibbs kernel `K = exp(−C/ε)`
(dense), or, blockwise (`PointCloud(batch_size=...)`), the same loop recomputing each block
`exp(−C_block/ε)` from the points in every product (the cost never held in memory).

jaxsolve runs `Sinkhorn(acceleration=None, epsilon_scaling=None)` (kernel mode on dense
geometries, the log domain block by block otherwise) for a fixed number of sweeps (`tol`
unreachable), checking its error every `check_every = 10` sweeps as by default.

Per sweep = (time of N2 sweeps − time of N1 sweeps) / (N2 − N1): the one-time work (cost
matrix, kernel, the stored transpose, the final potentials) cancels. Each candidate is
compiled ahead of time and the four calls (jaxsolve and floor at N1 and N2) are timed in
interleaved rounds, order reversed every round; medians over the rounds.
"""

import argparse
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import jaxsolve as js  # noqa: E402

EPS = 0.1


def clouds(n, dtype, d=2):
    x = jax.random.normal(jax.random.PRNGKey(0), (n, d), dtype)
    y = jax.random.normal(jax.random.PRNGKey(1), (n, d), dtype) + 1.0
    return x, y


def sq_cost(x, y):
    xx, yy = jnp.sum(x * x, -1), jnp.sum(y * y, -1)
    return jnp.maximum(xx[:, None] + yy[None, :] - 2.0 * (x @ y.T), 0.0)


def floor_dense(sweeps):
    def run(x, y):
        n, m = x.shape[0], y.shape[0]
        K = jnp.exp(-sq_cost(x, y) / EPS)
        a = jnp.full(n, 1.0 / n, x.dtype)
        b = jnp.full(m, 1.0 / m, x.dtype)

        def body(_, uv):
            u, v = uv
            u = a / (K @ v)
            v = b / (u @ K)  # Kᵀu; XLA:CPU runs `K.T @ u` ~50× slower (a transpose per call)
            return u, v

        return jax.lax.fori_loop(0, sweeps, body, (a, b))

    return run


def floor_blocks(sweeps, bs):
    def run(x, y):
        n, m = x.shape[0], y.shape[0]
        a = jnp.full(n, 1.0 / n, x.dtype)
        b = jnp.full(m, 1.0 / m, x.dtype)
        xb = x.reshape(n // bs, bs, -1)
        yb = y.reshape(m // bs, bs, -1)

        def body(_, uv):
            u, v = uv
            Kv = jax.lax.map(lambda p: jnp.exp(-sq_cost(p, y) / EPS) @ v, xb).reshape(n)
            u = a / Kv
            Ku = jax.lax.map(lambda q: u @ jnp.exp(-sq_cost(x, q) / EPS), yb).reshape(m)
            v = b / Ku
            return u, v

        return jax.lax.fori_loop(0, sweeps, body, (a, b))

    return run


def ours(sweeps, bs):
    solver = js.ot.Sinkhorn(
        tol=1e-30, max_steps=sweeps, acceleration=None, epsilon_scaling=None, check_every=10
    )

    def run(x, y):
        geom = js.ot.PointCloud(x, y, epsilon=EPS, batch_size=bs)
        sol = js.ot.solve(geom, solver=solver, throw=False)
        return sol.f, sol.g, sol.stats["num_steps"]

    return run


def per_sweep(n, dtype, bs, n1, n2, rounds):
    x, y = clouds(n, dtype)
    floor = (lambda s: floor_dense(s)) if bs is None else (lambda s: floor_blocks(s, bs))
    fns = {
        ("jaxsolve", n1): ours(n1, bs),
        ("jaxsolve", n2): ours(n2, bs),
        ("floor", n1): floor(n1),
        ("floor", n2): floor(n2),
    }
    compiled = {k: jax.jit(f).lower(x, y).compile() for k, f in fns.items()}
    for f in compiled.values():
        jax.block_until_ready(f(x, y))
    assert int(compiled[("jaxsolve", n2)](x, y)[2]) == n2
    times = {k: [] for k in fns}
    names = list(fns)
    diffs = {"jaxsolve": [], "floor": []}
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            jax.block_until_ready(compiled[k](x, y))
            times[k].append(time.perf_counter() - t)
        for who in diffs:
            diffs[who].append((times[(who, n2)][-1] - times[(who, n1)][-1]) / (n2 - n1))
    ratios = [j / f for j, f in zip(diffs["jaxsolve"], diffs["floor"], strict=True)]
    return (
        statistics.median(diffs["jaxsolve"]),
        statistics.median(diffs["floor"]),
        statistics.median(ratios),
        (min(ratios), max(ratios)),
    )


CASES = {
    # name: (n, dtype, batch_size, N1, N2)
    "dense32-2000": (2000, jnp.float32, None, 20, 220),
    "dense64-2000": (2000, jnp.float64, None, 20, 220),
    "dense32-10000": (10_000, jnp.float32, None, 10, 50),
    "dense64-10000": (10_000, jnp.float64, None, 10, 30),
    "block32-10000": (10_000, jnp.float32, 1000, 2, 6),
    "block64-10000": (10_000, jnp.float64, 1000, 2, 6),
}
SMALL = {
    "dense32-2000": (500, jnp.float32, None, 20, 120),
    "dense64-2000": (500, jnp.float64, None, 20, 120),
    "block32-10000": (2000, jnp.float32, 500, 2, 6),
}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--cases", default=None, help="comma-separated subset of the case names")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    cases = SMALL if args.small else CASES
    names = args.cases.split(",") if args.cases else list(cases)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}", file=sys.stderr)
    print("| case | n | dtype | jaxsolve / sweep | floor / sweep | ratio (median, range) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        n, dtype, bs, n1, n2 = cases[name]
        tj, tf, ratio, (lo, hi) = per_sweep(n, dtype, bs, n1, n2, args.rounds)
        kind = "dense" if bs is None else f"blockwise (batch {bs})"
        print(
            f"| {kind} | {n} | {jnp.dtype(dtype).name} | {tj * 1e3:.3g} ms | {tf * 1e3:.3g} ms | "
            f"{ratio:.2f} ({lo:.2f}–{hi:.2f}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
