"""Old vs new jaxsolve OT, side by side in one run: Sinkhorn's time per sweep and time to
tolerance at n = 2000 (float32 and float64), and SparseNewton on the `ot_newton` benchmark's
random n = 500 problem (ε = 1e-3 × mean cost, tol 1e-8, float64).

Two checkouts of jaxsolve cannot share a process, so this driver runs one long-lived worker
per (checkout, dtype); every worker compiles its cases first, then the driver times the cases
in interleaved rounds (old, new, new, old, ...), each time the best of `REPS` calls, and keeps
each side's best round: load from other processes falls on both alike.

    OLD=/path/to/old NEW=/path/to/new python benchmarks/ot_old_vs_new.py [--rounds 5]
"""

import json
import os
import subprocess
import sys
import time

REPS = 3
N = 2000


def _cases(js, jnp, jax, dtype):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(k1, (N, 2), dtype)
    y = jax.random.normal(k2, (N, 2), dtype) + 1.0
    tol = 1e-6 if dtype == jnp.float64 else 1e-4
    geom = lambda x, y: js.ot.PointCloud(x, y, epsilon=0.01, relative_epsilon="mean")
    plain = dict(epsilon_scaling=None, acceleration=None)

    def case(solver, *args):
        def run(*args):
            g = geom(*args) if len(args) == 2 else js.ot.Geometry(args[0], epsilon=args[1])
            sol = js.ot.solve(g, *args[2:], solver=solver, throw=False)
            return sol.f, sol.stats["num_steps"], sol.stats["marginal_error"]

        return jax.jit(run), args

    cases = {
        "sweep default (1000 sweeps)": case(js.ot.Sinkhorn(tol=1e-30, max_steps=1000), x, y),
        "sweep plain (1000 sweeps)": case(js.ot.Sinkhorn(tol=1e-30, max_steps=1000, **plain), x, y),
        f"to tol {tol:g}, default": case(js.ot.Sinkhorn(tol=tol, max_steps=10_000), x, y),
        f"to tol {tol:g}, plain": case(js.ot.Sinkhorn(tol=tol, max_steps=20_000, **plain), x, y),
    }
    if dtype == jnp.float64:
        xs = jax.random.uniform(jax.random.PRNGKey(500), (500, 2), dtype)
        ys = jax.random.uniform(jax.random.PRNGKey(501), (500, 2), dtype)
        C = jnp.sum((xs[:, None] - ys[None]) ** 2, -1)
        u = jnp.full(500, 1.0 / 500, dtype)
        eps = 1e-3 * jnp.mean(C)
        cases["SNS random n=500, tol 1e-8"] = case(js.ot.SparseNewton(tol=1e-8), C, eps, u, u)
    return cases


def worker(dtype_name):
    import jax

    jax.config.update("jax_enable_x64", dtype_name == "float64")
    import jax.numpy as jnp

    import jaxsolve as js

    dtype = jnp.float64 if dtype_name == "float64" else jnp.float32
    cases = _cases(js, jnp, jax, dtype)
    info = {}
    for name, (fn, args) in cases.items():
        _, steps, err = jax.block_until_ready(fn(*args))
        info[name] = {"num_steps": int(steps), "marginal_error": float(err)}
    print(json.dumps({"ready": info, "file": js.__file__}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        fn, args = cases[name]
        best = float("inf")
        for _ in range(REPS):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best = min(best, time.perf_counter() - t0)
        print(json.dumps({"time": best}), flush=True)


def main():
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 5
    paths = {"old": os.environ["OLD"], "new": os.environ["NEW"]}
    workers = {}
    for dtype in ("float32", "float64"):
        for side, path in paths.items():
            env = dict(os.environ, PYTHONPATH=path)
            p = subprocess.Popen(
                [sys.executable, __file__, "--worker", dtype],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd="/",
            )
            workers[side, dtype] = p
    ready = {}
    for key, p in workers.items():
        msg = json.loads(p.stdout.readline())  # pyright: ignore[reportOptionalMemberAccess]
        ready[key] = msg["ready"]
        print(f"{key}: {msg['file']}", file=sys.stderr)
    best = {}
    for r in range(rounds):
        for dtype in ("float32", "float64"):
            for name in ready["old", dtype]:
                order = ("old", "new") if (r % 2 == 0) else ("new", "old")
                for side in order:
                    p = workers[side, dtype]
                    p.stdin.write(name + "\n")  # pyright: ignore[reportOptionalMemberAccess]
                    p.stdin.flush()  # pyright: ignore[reportOptionalMemberAccess]
                    t = json.loads(p.stdout.readline())["time"]  # pyright: ignore
                    key = (side, dtype, name)
                    best[key] = min(best.get(key, float("inf")), t)
    for p in workers.values():
        p.stdin.close()  # pyright: ignore[reportOptionalMemberAccess]
        p.wait()
    print(
        "| dtype | case | old: steps, error | new: steps, error | old (ms) | new (ms) | new/old |"
    )
    print("|---|---|---|---|---|---|---|")
    for dtype in ("float32", "float64"):
        for name in ready["old", dtype]:
            o, n = ready["old", dtype][name], ready["new", dtype][name]
            to, tn = best["old", dtype, name], best["new", dtype, name]
            print(
                f"| {dtype} | {name} | {o['num_steps']}, {o['marginal_error']:.2e} "
                f"| {n['num_steps']}, {n['marginal_error']:.2e} | {1e3 * to:.1f} | {1e3 * tn:.1f} "
                f"| {tn / to:.3f} |"
            )


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker(sys.argv[sys.argv.index("--worker") + 1])
    else:
        main()
