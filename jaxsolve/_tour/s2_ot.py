"""Optimal transport: an entropic OT problem solved and differentiated (js.ot).

Two point clouds, `x ~ N(0, I)` and `y ~ N(1, I)`, at a small epsilon, in float32: plain
Sinkhorn against the default (epsilon scaling + Anderson, kernel mode), then the gradient of the
regularised cost with respect to `x` (envelope theorem: no linear solve), checked against finite
differences.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxsolve as js

from . import table, timed


def run():
    n, m, eps = 300, 240, 0.02
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = jnp.asarray(rng.normal(size=(m, 2)) + 1.0, jnp.float32)

    def solve(solver):
        @jax.jit
        def fn(x):
            sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=eps), solver=solver)
            return sol.reg_cost, sol.stats["num_steps"], sol.stats["marginal_error"]

        return fn

    solvers = {
        "plain Sinkhorn": js.ot.Sinkhorn(acceleration=None, epsilon_scaling=None, max_steps=50_000),
        "+ Anderson (default)": js.ot.Sinkhorn(),
    }
    rows, fns = [], {}
    for name, solver in solvers.items():
        (value, steps, err), seconds, fns[name] = timed(solve(solver), x)
        rows.append([name, int(steps), float(err), float(value), f"{seconds * 1e3:.0f} ms"])
    print(f"n = {n}, m = {m} points, epsilon = {eps}, float32: tol 1e-4 on the L1 marginal error")
    table(rows, ["solver", "sweeps", "marginal error", "reg_cost", "time"])

    def cost(x):
        return js.ot.solve(js.ot.PointCloud(x, y, epsilon=eps)).reg_cost

    grad, seconds, _ = timed(jax.jit(jax.grad(cost)), x)
    d = rng.normal(size=x.shape).astype(np.float32)
    h = 1e-2  # float32: a larger step than in float64 (the rounding error is ~1e-7 / h)
    default = fns["+ Anderson (default)"]  # the same solve, compiled once
    fd = (float(default(x + h * d)[0]) - float(default(x - h * d)[0])) / (2 * h)
    print("\nGradient of reg_cost w.r.t. x (envelope theorem: no linear solve):")
    table(
        [["<grad, d>", float(np.vdot(np.asarray(grad), d)), fd, f"{seconds * 1e3:.0f} ms"]],
        ["directional derivative", "envelope", "finite differences", "grad time"],
    )
