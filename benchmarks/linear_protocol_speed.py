"""Old vs new jaxsolve linear solvers, side by side in one run: CG per iteration on the 256²
Poisson problem (matrix-free, float64), and GMRES(20) to tol 1e-8 on a small non-symmetric
dense system. Each version runs in its own subprocess (two versions of a package cannot share
one process), alternately, several rounds; the table reports the median over rounds.

Usage: python benchmarks/linear_protocol_speed.py OLD_ROOT NEW_ROOT [--rounds R]
"""

import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np
import jaxsolve as js

def lap(u):
    p = jnp.pad(u, 1)
    return 4 * u - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]

def best(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return float(np.min(ts))  # the least-loaded run: robust on a shared machine

N, FIXED = 256, 200
xs = jnp.arange(1, N + 1) / (N + 1)
b = jnp.sin(np.pi * xs)[:, None] * jnp.sin(2 * np.pi * xs)[None, :] + 0.1 * xs[:, None]

@jax.jit
def cg(b):
    sol = js.linear.solve(lap, b, js.linear.CG(tol=1e-300, max_steps=FIXED), throw=False)
    return sol.value, sol.stats["num_steps"]

t = best(lambda: jax.block_until_ready(cg(b)), 7)
steps = int(cg(b)[1])

rng = np.random.default_rng(0)
n = 200
A = jnp.asarray(np.eye(n) * 3 + rng.normal(size=(n, n)) / np.sqrt(n))
bb = jnp.asarray(rng.normal(size=n))

@jax.jit
def gm(A, b):
    sol = js.linear.solve(A, b, js.linear.GMRES(tol=1e-8, restart=20), throw=False)
    return sol.value, sol.stats["num_matvecs"], sol.stats["error"]

tg = best(lambda: jax.block_until_ready(gm(A, bb)), 300)
_, mv, err = gm(A, bb)
print(json.dumps({"file": js.__file__, "cg_per_iter_us": 1e6 * t / steps, "cg_steps": steps,
                  "gmres_ms": 1e3 * tg, "gmres_matvecs": int(mv), "gmres_error": float(err)}))
"""


def run(root):
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd="/",  # not the caller's directory: `-c` puts it first on sys.path
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    old, new = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
    res = {"old": [], "new": []}
    for _ in range(rounds):
        for name, root in (("old", old), ("new", new)):
            res[name].append(run(root))
    med = lambda name, k: sorted(r[k] for r in res[name])[len(res[name]) // 2]
    print("| measure | old | new | new/old |")
    print("|---|---|---|---|")
    for k in ("cg_per_iter_us", "gmres_ms"):
        o, n = med("old", k), med("new", k)
        print(f"| {k} | {o:.2f} | {n:.2f} | {n / o:.3f} |")
    for k in ("file", "cg_steps", "gmres_matvecs", "gmres_error"):
        print(f"| {k} | {res['old'][0][k]} | {res['new'][0][k]} | |")


if __name__ == "__main__":
    main()
