"""The headline benchmarks on whatever device JAX sees (CPU, GPU or TPU), in float32, each next
to its yardstick in the same process, written to benchmarks/RESULTS-<device>.md.

    python benchmarks/accelerator.py [--small]

Yardsticks: the hardware floor (a bare JAX loop doing only the essential arithmetic) for the
Sinkhorn sweep and the CG iteration; the inner solve itself for the hypergradient (a
hypergradient should cost a small multiple of the solve it differentiates). Nothing here needs
a peer library, so it runs on a bare accelerator machine with only jaxsolve installed.
"""

import argparse
import os
import pathlib
import platform
import re

import jax
import jax.numpy as jnp

import jaxsolve as js

try:
    from _timing import compare_times, markdown_table
except ImportError:  # run from the repository root
    from benchmarks._timing import compare_times, markdown_table


def device_name() -> str:
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    return f"{dev.platform}-{kind}" if kind != dev.platform else dev.platform


def describe() -> str:
    dev = jax.devices()[0]
    return (
        f"{len(jax.devices())} × {getattr(dev, 'device_kind', dev.platform)} "
        f"({dev.platform}), host {platform.machine()} with {os.cpu_count()} cores, "
        f"jax {jax.__version__}, float32"
    )


def sinkhorn_sweep(n: int, sweeps: int):
    """Seconds per Sinkhorn sweep, kernel mode, no acceleration: jaxsolve vs a bare loop of the
    two kernel matrix–vector products (the floor)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (n, 2)) + 1.0
    eps = 0.1
    solver = js.ot.Sinkhorn(
        tol=1e-30, max_steps=sweeps, epsilon_scaling=None, acceleration=None, check_every=10
    )

    @jax.jit
    def ours(x, y):
        sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=eps), solver=solver, throw=False)
        return sol.f

    @jax.jit
    def floor(x, y):
        C = jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)
        K = jnp.exp(-C / eps)
        a = jnp.full(n, 1.0 / n)

        def body(_, uv):
            u, v = uv
            u = a / (K @ v)
            v = a / (u @ K)
            return u, v

        return jax.lax.fori_loop(0, sweeps, body, (a, a))[0]

    t = compare_times({"jaxsolve": ours, "floor": floor}, x, y, repeats=5)
    return t["jaxsolve"] / sweeps, t["floor"] / sweeps


def cg_iteration(side: int, iters: int):
    """Seconds per CG iteration on the matrix-free 5-point Poisson problem: jaxsolve vs a bare
    CG loop (one matvec, two dots, three axpys per iteration)."""
    A = js.linear.Stencil5.poisson((side, side))
    b = jnp.ones((side, side))
    solver = js.linear.CG(tol=1e-30, max_steps=iters)

    @jax.jit
    def ours(b):
        return js.linear.solve(A, b, solver=solver, throw=False).value

    @jax.jit
    def floor(b):
        def body(_, c):
            x, r, p, rr = c
            ap = A.mv(p)
            alpha = rr / jnp.sum(p * ap)
            x, r = x + alpha * p, r - alpha * ap
            rr_new = jnp.sum(r * r)
            return x, r, r + (rr_new / rr) * p, rr_new

        z = jnp.zeros_like(b)
        return jax.lax.fori_loop(0, iters, body, (z, b, b, jnp.sum(b * b)))[0]

    t = compare_times({"jaxsolve": ours, "floor": floor}, b, repeats=5)
    return t["jaxsolve"] / iters, t["floor"] / iters


def ridge_hypergradient(n: int, p: int):
    """Seconds for the per-feature ridge hypergradient (default settings) and for the inner
    solve alone."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    X = jax.random.normal(k1, (n, p))
    t = X @ jax.random.normal(k2, (p,)) + 0.1 * jax.random.normal(k3, (n,))
    inner = lambda th, w, d: (
        0.5 * jnp.mean((d[0] @ w - d[1]) ** 2) + 0.5 * jnp.sum(jnp.exp(th) * w**2)
    )
    outer = lambda th, w, d: 0.5 * jnp.mean((d[0] @ w - d[1]) ** 2)
    data, val = (X, t), (X[: n // 5], t[: n // 5])
    theta = jnp.full(p, -2.0)

    @jax.jit
    def hypergradient(theta):
        return js.bilevel.hypergradient(outer, inner, theta, jnp.zeros(p), val, data).grad

    @jax.jit
    def solve(theta):
        fn = lambda w, a: inner(a[0], w, a[1])
        return js.minimise(fn, jnp.zeros(p), (theta, data)).value

    t = compare_times({"hypergradient": hypergradient, "solve": solve}, theta, repeats=5)
    return t["hypergradient"], t["solve"]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="tiny sizes (a smoke run)")
    args = parser.parse_args(argv)
    gpu = jax.default_backend() != "cpu"
    rows = []
    sizes = [500] if args.small else ([2000, 10_000] if gpu else [2000])
    for n in sizes:
        ours, floor = sinkhorn_sweep(n, 100 if args.small else 200)
        rows.append(
            [
                f"Sinkhorn sweep, n = m = {n}",
                f"{ours * 1e3:.3f} ms",
                f"{floor * 1e3:.3f} ms",
                f"{ours / floor:.2f}×",
                "bare two-product loop",
            ]
        )
    side = 64 if args.small else (1024 if gpu else 256)
    ours, floor = cg_iteration(side, 100 if args.small else 300)
    rows.append(
        [
            f"CG iteration, Poisson {side}²",
            f"{ours * 1e6:.1f} µs",
            f"{floor * 1e6:.1f} µs",
            f"{ours / floor:.2f}×",
            "bare CG loop",
        ]
    )
    n, p = (300, 60) if args.small else (1500, 300)
    hyper, solve = ridge_hypergradient(n, p)
    rows.append(
        [
            f"ridge hypergradient, n = {n}, p = {p}",
            f"{hyper * 1e3:.2f} ms",
            f"{solve * 1e3:.2f} ms",
            f"{hyper / solve:.2f}×",
            "the inner solve alone",
        ]
    )
    table = markdown_table(["benchmark", "jaxsolve", "yardstick", "ratio", "yardstick is"], rows)
    text = f"# Headline benchmarks on {device_name()}\n\nMachine: {describe()}.\n\n{table}\n"
    print(text)
    if not args.small:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", device_name())
        out = pathlib.Path(__file__).parent / f"RESULTS-{safe}.md"
        out.write_text(text)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
