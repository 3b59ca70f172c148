"""Krylov iterations vs their peers: jaxsolve's CG, GMRES and BiCGStab per iteration next to
jax.scipy.sparse.linalg's and lineax's, on the same systems, in one process.

    python benchmarks/linear_krylov_floor.py [--small] [--problems poisson,dense] [--rounds 5]

Problems: the 2-D Poisson problem on a 256² grid (matrix-free 5-point stencil, the same
function for every library) and a dense SPD system of size 2 000 (`A = G Gᵀ/n + 10⁻³ I`),
float32 and float64. Every solver runs a fixed number of iterations (tolerance unreachable;
GMRES with restart 20, counted in Arnoldi iterations: jax.scipy's `maxiter` and lineax's
`max_steps` count restart cycles). Per iteration = (time of N2 iterations − time of N1) /
(N2 − N1): setup and the final residual cancel. Each candidate is compiled ahead of time and
all are timed in interleaved rounds, order reversed every round; medians over rounds.
"""

import argparse
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.scipy.sparse.linalg as jsp  # noqa: E402
import lineax as lx  # noqa: E402

import jaxsolve as js  # noqa: E402

RESTART = 20


def laplacian(u):
    p = jnp.pad(u, 1)
    return 4 * u - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]


def problem(kind, size, dtype):
    if kind == "poisson":
        b = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
        return laplacian, b, None
    G = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
    A = G @ G.T / size + 1e-3 * jnp.eye(size, dtype=dtype)
    b = jax.random.normal(jax.random.PRNGKey(0), (size,), dtype)
    return (lambda x: A @ x), b, A


def candidates(method, mv, A, iters):
    """{library: fn(b) -> (x, iterations done)} for `iters` iterations of `method`."""
    tiny = 1e-30  # unreachable in float32 and float64
    op_in = A if A is not None else mv
    cycles = iters // RESTART

    def ours(b):
        solver = {
            "CG": js.linear.CG(tol=tiny, max_steps=iters),
            "GMRES": js.linear.GMRES(tol=tiny, max_steps=iters, restart=RESTART),
            "BiCGStab": js.linear.BiCGStab(tol=tiny, max_steps=iters),
        }[method]
        sol = js.linear.solve(op_in, b, solver, throw=False)
        return sol.value, sol.stats["num_steps"]

    def scipy(b):
        if method == "CG":
            x = jsp.cg(mv, b, tol=0.0, atol=0.0, maxiter=iters)[0]
        elif method == "GMRES":
            x = jsp.gmres(mv, b, tol=0.0, atol=0.0, restart=RESTART, maxiter=cycles)[0]
        else:
            x = jsp.bicgstab(mv, b, tol=0.0, atol=0.0, maxiter=iters)[0]
        return x, jnp.asarray(iters)

    def lineax(b):
        struct = jax.eval_shape(lambda: b)
        if A is not None:
            op = lx.MatrixLinearOperator(A, lx.positive_semidefinite_tag)
        else:
            op = lx.FunctionLinearOperator(mv, struct, lx.positive_semidefinite_tag)
        if method == "CG":
            solver = lx.CG(rtol=0.0, atol=0.0, max_steps=iters)
        elif method == "GMRES":
            solver = lx.GMRES(rtol=0.0, atol=0.0, max_steps=cycles, restart=RESTART)
        else:
            solver = lx.BiCGStab(rtol=0.0, atol=0.0, max_steps=iters)
        sol = lx.linear_solve(op, b, solver, throw=False)
        steps = sol.stats["num_steps"] * (RESTART if method == "GMRES" else 1)
        return sol.value, steps

    return {"jaxsolve": ours, "jax.scipy": scipy, "lineax": lineax}


def per_iteration(kind, size, dtype, method, n1, n2, rounds):
    mv, b, A = problem(kind, size, dtype)
    fns = {}
    for n in (n1, n2):
        for lib, fn in candidates(method, mv, A, n).items():
            fns[(lib, n)] = jax.jit(fn).lower(b).compile()
    done = {}
    for k, f in fns.items():
        done[k] = int(jax.block_until_ready(f(b))[1])
    for (lib, n), d in done.items():
        if d != n:
            print(f"warning: {lib} {method} did {d} iterations, not {n}", file=sys.stderr)
    keys = list(fns)
    times = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys if r % 2 == 0 else keys[::-1]:
            t = time.perf_counter()
            jax.block_until_ready(fns[k](b))
            times[k].append(time.perf_counter() - t)
    libs = ["jaxsolve", "jax.scipy", "lineax"]
    per = {
        lib: [
            (t2 - t1) / (done[(lib, n2)] - done[(lib, n1)])
            for t1, t2 in zip(times[(lib, n1)], times[(lib, n2)], strict=True)
        ]
        for lib in libs
    }
    med = {lib: statistics.median(v) for lib, v in per.items()}
    ratios = {
        lib: statistics.median([a / c for a, c in zip(per["jaxsolve"], per[lib], strict=True)])
        for lib in libs[1:]
    }
    return med, ratios


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--problems", default="poisson,dense")
    parser.add_argument("--methods", default="CG,GMRES,BiCGStab")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = {"poisson": 64 if args.small else 256, "dense": 400 if args.small else 2000}
    counts = {"poisson": (40, 240), "dense": (20, 100)}
    print(f"jax {jax.__version__}, lineax {lx.__version__}", file=sys.stderr)
    print(
        "| problem | dtype | method | jaxsolve / it | jax.scipy / it | lineax / it "
        "| ratio vs jax.scipy | ratio vs lineax |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in args.problems.split(","):
        size = sizes[kind]
        name = f"Poisson {size}² (stencil)" if kind == "poisson" else f"dense SPD {size}"
        for dt in args.dtypes.split(","):
            dtype = jnp.dtype(dt)
            for method in args.methods.split(","):
                n1, n2 = counts[kind]
                med, ratio = per_iteration(kind, size, dtype, method, n1, n2, args.rounds)
                us = lambda t: f"{t * 1e6:.1f} µs"
                print(
                    f"| {name} | {dt} | {method} | {us(med['jaxsolve'])} | "
                    f"{us(med['jax.scipy'])} | {us(med['lineax'])} | "
                    f"{ratio['jax.scipy']:.2f} | {ratio['lineax']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
