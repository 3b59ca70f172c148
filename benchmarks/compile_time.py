"""First-call time (trace + compile + one run) of small problems, jaxsolve vs its peers.

What a notebook user waits for in every new cell: `js.ot.solve` and `jax.grad` of it vs
OTT-JAX, `js.minimise` vs optimistix, `js.linear.solve` vs lineax, each on the same small
problem, float32. Every measurement runs in a fresh Python process (imports excluded from the
time, nothing cached), alternating jaxsolve and the peer, `REPEATS` processes each; the median
is quoted. Writes the table to stdout (Markdown).

    python benchmarks/compile_time.py
"""

import json
import statistics
import subprocess
import sys

from _timing import machine

REPEATS = int(__import__("os").environ.get("REPEATS", 5))

_PRELUDE = """
import time, json
import jax, jax.numpy as jnp
x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
y = jax.random.normal(jax.random.PRNGKey(1), (64, 2)) + 1.0
A = jax.random.normal(jax.random.PRNGKey(2), (50, 50)) / 50 ** 0.5
A = A @ A.T + jnp.eye(50)
rhs = jnp.ones(50)
def rosen(z, args):
    return jnp.sum(100.0 * (z[1:] - z[:-1] ** 2) ** 2 + (1.0 - z[:-1]) ** 2)
z0 = jnp.zeros(10)
"""

# Each case: (label, jaxsolve imports + function, peer imports + function). The function `f`
# is what is timed on its first call; its argument is `arg`.
CASES = {
    "`js.ot.solve` vs OTT-JAX `solve` (n = 64, ε = 0.1)": (
        """
import jaxsolve as js
f = jax.jit(lambda x: js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.1)).reg_cost)
arg = x
""",
        """
from ott.geometry import pointcloud
from ott.solvers import linear
f = jax.jit(lambda x: linear.solve(pointcloud.PointCloud(x, y, epsilon=0.1)).reg_ot_cost)
arg = x
""",
    ),
    "`js.ot.solve` with OTT-JAX's default algorithm (log-domain sweeps, no acceleration, no "
    "ε-scaling) vs OTT-JAX `solve`": (
        """
import jaxsolve as js
s = js.ot.Sinkhorn(kernel=False, acceleration=None, epsilon_scaling=None)
f = jax.jit(lambda x: js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.1), solver=s).reg_cost)
arg = x
""",
        """
from ott.geometry import pointcloud
from ott.solvers import linear
f = jax.jit(lambda x: linear.solve(pointcloud.PointCloud(x, y, epsilon=0.1)).reg_ot_cost)
arg = x
""",
    ),
    "`jax.grad` of `js.ot.solve`'s cost vs OTT-JAX's": (
        """
import jaxsolve as js
f = jax.jit(jax.grad(lambda x: js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.1)).reg_cost))
arg = x
""",
        """
from ott.geometry import pointcloud
from ott.solvers import linear
cost = lambda x: linear.solve(pointcloud.PointCloud(x, y, epsilon=0.1)).reg_ot_cost
f = jax.jit(jax.grad(cost))
arg = x
""",
    ),
    "`js.minimise` (L-BFGS) vs optimistix `minimise` (LBFGS), Rosenbrock n = 10": (
        """
import jaxsolve as js
f = jax.jit(lambda z: js.minimise(rosen, z, solver=js.LBFGS(), tol=1e-5, max_steps=500).value)
arg = z0
""",
        """
import optimistix as optx
solver = optx.LBFGS(rtol=1e-5, atol=1e-5)
f = jax.jit(lambda z: optx.minimise(rosen, solver, z, max_steps=500).value)
arg = z0
""",
    ),
    "`js.linear.solve` (CG) vs lineax `linear_solve` (CG), dense SPD 50": (
        """
import jaxsolve as js
f = jax.jit(lambda b: js.linear.solve(A, b, solver=js.linear.CG(tol=1e-5)).value)
arg = rhs
""",
        """
import lineax as lx
op = lx.MatrixLinearOperator(A, lx.positive_semidefinite_tag)
f = jax.jit(lambda b: lx.linear_solve(op, b, lx.CG(rtol=1e-5, atol=1e-5)).value)
arg = rhs
""",
    ),
}

_TIMER = """
start, cpu = time.perf_counter(), time.process_time()
jax.block_until_ready(f(arg))
print(json.dumps([time.perf_counter() - start, time.process_time() - cpu]))
"""


def first_call_seconds(setup: str) -> list[float]:
    """The first call's wall and CPU time in a fresh process (imports and data setup
    excluded)."""
    code = _PRELUDE + setup + _TIMER
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark case failed:\n{setup}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    print(f"First call (trace + compile + run), float32; {machine()}; median of {REPEATS} fresh")
    print("processes each, jaxsolve and the peer alternating. CPU time (the process's, all")
    print("threads) is what the compiler did, robust to other load; wall time is what a user")
    print("waits on an otherwise idle machine when the two agree.\n")
    print("| first call | jaxsolve wall / CPU (s) | peer wall / CPU (s) | ratio (CPU) |")
    print("|---|---|---|---|")
    for label, (ours, peer) in CASES.items():
        times = {"ours": [], "peer": []}
        for _ in range(REPEATS):
            times["ours"].append(first_call_seconds(ours))
            times["peer"].append(first_call_seconds(peer))
        (aw, ac), (bw, bc) = (
            [statistics.median(t[i] for t in times[k]) for i in (0, 1)] for k in ("ours", "peer")
        )
        row = f"| {label} | {aw:.2f} / {ac:.2f} | {bw:.2f} / {bc:.2f} | {ac / bc:.2f}× |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
