"""float32 OT gradients with default settings, against a float64 reference from POT's plan.

    python benchmarks/ot_float32_gradients.py [--small]

For every point-cloud problem of the grid (n in 64, 200, 500, 2000; epsilon in 0.01, 0.1, 1;
independent N(0, I) clouds in 2-D, "random", and the same with the targets shifted by 3 in
each coordinate, "shifted"; squared Euclidean cost, uniform weights) this takes
`jax.grad` with respect to `x` of `js.ot.solve(PointCloud(x, y, epsilon)).reg_cost` in float32
with every default (`throw=False`, as under `vmap`), and compares it with the float64
reference gradient `2 (a·x − P y)` of POT's plan: `ot.sinkhorn(..., method="sinkhorn_log")`
(log-domain, stable at small epsilon) in float64 at the same epsilon. Plain Sinkhorn needs
~10^5 sweeps at epsilon = 0.01 (POT's own run at n = 64 stops at 1e5 iterations with its
error still 4e-7), so POT is warm-started from float64 potentials (jaxsolve's Sinkhorn in
float64) and then iterates to its own stopping test; the reference's L1 marginal error,
measured here in NumPy on POT's plan, certifies it (the entropic plan is unique). For the
cases where a cold POT run converges in the budget, its gradient is compared too.

The figure: every float32 gradient finite and within 1e-2 relative (2-norm) error.
"""

import argparse
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64 for the warm start; float32 below

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import ot as pot  # noqa: E402

import jaxsolve as js  # noqa: E402

try:
    from _timing import machine, markdown_table, median_time
except ImportError:  # run from the repository root
    from benchmarks._timing import machine, markdown_table, median_time

HERE = pathlib.Path(__file__).parent


def clouds(n, kind, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2))
    y = rng.standard_normal((n, 2)) + (3.0 if kind == "shifted" else 0.0)
    return x, y


def _grad(x, y, eps):
    def loss(x):
        sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=eps), throw=False)
        aux = (sol.result._value, sol.stats["num_steps"], sol.stats["marginal_error"])
        return sol.reg_cost, aux

    return jax.grad(loss, has_aux=True)(x)


with jax.enable_x64(False):
    grad32 = jax.jit(_grad)  # traced and run with x64 off: float32 throughout


@jax.jit
def potentials64(x, y, eps):
    solver = js.ot.Sinkhorn(max_steps=5000)  # float64 default tol: 1e-6
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=eps), solver=solver, throw=False)
    return sol.f, sol.g


def pot_reference(x, y, eps, warm, max_iter):
    """POT's log-domain Sinkhorn in float64; returns the gradient 2(a x − P y), the plan's L1
    marginal error and POT's iterations."""
    n, m = len(x), len(y)
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    M = pot.dist(x, y)  # squared Euclidean
    start = None if warm is None else (warm[0] / eps, warm[1] / eps)
    P, log = pot.sinkhorn(
        a,
        b,
        M,
        eps,
        method="sinkhorn_log",
        stopThr=1e-10,
        numItermax=max_iter,
        warmstart=start,
        log=True,
        warn=False,
    )
    err = np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum()
    return 2 * (a[:, None] * x - P @ y), err, log["niter"] + 1


def rel(u, v):
    return float(np.linalg.norm(u - v) / np.linalg.norm(v))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="n = 64 and 200 only")
    parser.add_argument("--sizes", default="64,200,500,2000")
    parser.add_argument("--clouds", default="random,shifted", help="which kinds of clouds")
    args = parser.parse_args(argv)
    sizes = [64, 200] if args.small else [int(s) for s in args.sizes.split(",")]
    rows, worst, failures = [], 0.0, 0
    t0 = time.perf_counter()
    for n in sizes:
        for kind in args.clouds.split(","):
            for eps in (0.01, 0.1, 1.0):
                x, y = clouds(n, kind)
                with jax.enable_x64(False):
                    x32, y32 = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
                    e32 = jnp.asarray(eps, jnp.float32)
                    g, (res, steps, merr) = grad32(x32, y32, e32)
                    t = median_time(lambda: grad32(x32, y32, e32)[0], repeats=3)
                g = np.asarray(g, np.float64)
                warm = [np.asarray(p) for p in potentials64(x, y, eps)]
                its_max = {64: 5000, 200: 5000, 500: 1000}.get(n, 100)
                ref, ref_err, its = pot_reference(x, y, eps, warm, its_max)
                cold = ""
                if n <= 200 and eps >= 0.1:
                    ref_c, err_c, its_c = pot_reference(x, y, eps, None, 20_000)
                    if err_c < 1e-8:
                        cold = f"{rel(ref_c, ref):.1e} ({its_c} its)"
                e = rel(g, ref)
                ok = bool(np.all(np.isfinite(g))) and e <= 1e-2
                failures += not ok
                worst = max(worst, e)
                rows.append(
                    [
                        n,
                        kind,
                        eps,
                        "successful" if int(res) == 0 else f"code {int(res)}",
                        int(steps),
                        float(merr),
                        e,
                        "yes" if ok else "NO",
                        1e3 * t,
                        float(ref_err),
                        its,
                        cold or "-",
                    ]
                )
                print(rows[-1], flush=True)
    header = [
        "n",
        "clouds",
        "ε",
        "result",
        "sweeps",
        "f32 marginal err",
        "rel. grad err",
        "≤1e-2",
        "ms / grad",
        "POT plan L1 err",
        "POT its",
        "cold POT vs warm",
    ]
    table = markdown_table(header, rows)
    print(f"\n{machine()}\n\n{table}\n")
    print(
        f"worst relative error {worst:.2e}; {failures} of {len(rows)} cases fail the figure; "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return table, worst, failures


if __name__ == "__main__":
    main()
