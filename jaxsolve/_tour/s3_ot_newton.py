"""Sinkhorn-Newton-Sparse vs Sinkhorn at small epsilon

One random point-cloud problem (n = 500, ε = 1e-3 × mean cost) solved to an L1 marginal
error of 1e-8 by plain Sinkhorn (the SNS paper's baseline), jaxsolve's accelerated Sinkhorn
and Sinkhorn–Newton–Sparse: iterations and wall time side by side.

This section runs in float64: Newton's advantage shows at tight tolerances (1e-8 here), below
what float32 resolves (its marginal errors bottom out near 1e-6), so it enables x64 for itself.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxsolve as js

from . import table, timed


def run():
    with jax.enable_x64(True):
        _run()


def _run():
    print("float64 (a 1e-8 marginal error is below float32's resolution)")
    n = 500
    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(n, 2)), rng.uniform(size=(n, 2))
    cost = np.sum((x[:, None] - y[None]) ** 2, -1)
    geom = js.ot.Geometry(jnp.asarray(cost), epsilon=1e-3 * float(np.mean(cost)))
    rows = []
    solvers = {
        "Sinkhorn (plain)": js.ot.Sinkhorn(
            tol=1e-8, max_steps=5_000, epsilon_scaling=None, acceleration=None
        ),
        "Sinkhorn (Anderson + eps-scaling)": js.ot.Sinkhorn(tol=1e-8, max_steps=20_000),
        "SparseNewton": js.ot.SparseNewton(tol=1e-8),
    }
    for name, solver in solvers.items():
        solve = jax.jit(lambda g, s=solver: js.ot.solve(g, solver=s, throw=False).stats)
        st, seconds, _ = timed(solve, geom)
        rows.append(
            [
                name,
                int(st["num_steps"]),
                int(st.get("newton_steps", 0)),
                int(st.get("cg_steps", 0)),
                f"{float(st['marginal_error']):.1e}",
                f"{seconds:.3f}",
            ]
        )
    table(rows, ["solver", "iterations", "newton", "CG", "marginal error", "seconds"])
    capped = " (plain capped at 5000 sweeps, short of 1e-8: lower bounds)"
    capped = capped if float(rows[0][4]) > 1e-8 else ""
    print(
        f"plain Sinkhorn / SNS: iterations {rows[0][1] / rows[2][1]:.0f}x, "
        f"time {float(rows[0][5]) / float(rows[2][5]):.1f}x (above 1: SNS faster){capped}"
    )
