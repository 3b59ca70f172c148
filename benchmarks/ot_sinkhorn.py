"""Sinkhorn: jaxsolve vs OTT-JAX (and POT for correctness), side by side in one process.

    python benchmarks/ot_sinkhorn.py [--small]

Prints a Markdown table with ratios and saves ot_sinkhorn.png next to this file.
"""

import argparse
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import ot as pot  # noqa: E402
from ott.geometry import pointcloud  # noqa: E402
from ott.problems.linear import linear_problem  # noqa: E402
from ott.solvers.linear import sinkhorn  # noqa: E402

import jaxsolve as js  # noqa: E402

PLAIN = dict(acceleration=None, epsilon_scaling=None)


def timeit(fn, *args, repeats=3):
    fn = fn.lower(*args).compile()  # compile ahead of time, so no warm-up run is needed
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    LAST[0] = out
    return float(np.median(times))


LAST = [None]  # the output of the last timed run


def clouds(n, m, dtype, d=2):
    x = jax.random.normal(jax.random.PRNGKey(0), (n, d), dtype)
    y = jax.random.normal(jax.random.PRNGKey(1), (m, d), dtype) + 1.0
    return x, y


def ott_solve(x, y, eps, iters=None, tol=1e-6, max_iter=20_000, batch_size=None):
    geom = pointcloud.PointCloud(x, y, epsilon=eps, batch_size=batch_size)
    if iters is None:
        solver = sinkhorn.Sinkhorn(threshold=tol, max_iterations=max_iter)
    else:
        solver = sinkhorn.Sinkhorn(threshold=-1.0, max_iterations=iters, min_iterations=iters)
    out = solver(linear_problem.LinearProblem(geom))
    return out.f, out.n_iters


def js_solve(x, y, eps, iters=None, tol=1e-6, max_iter=20_000, batch_size=None, **kw):
    geom = js.ot.PointCloud(x, y, epsilon=eps, batch_size=batch_size)
    if iters is None:
        solver = js.ot.Sinkhorn(tol=tol, max_steps=max_iter, **kw)
    else:
        solver = js.ot.Sinkhorn(tol=1e-30, max_steps=iters, **PLAIN, **kw)
    sol = js.ot.solve(geom, solver=solver, throw=False)
    return sol.f, sol.stats["num_steps"], sol.stats["marginal_error"]


def main(small: bool):
    rows, plot = [], {}
    # 1. correctness against POT (float64, non-uniform weights)
    n = 200
    x, y = clouds(n, 150, jnp.float64)
    a = jax.random.uniform(jax.random.PRNGKey(2), (n,)) + 0.1
    b = jax.random.uniform(jax.random.PRNGKey(3), (150,)) + 0.1
    a, b = a / a.sum(), b / b.sum()
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.1), a, b, solver=js.ot.Sinkhorn(tol=1e-13))
    C = np.asarray(js.ot.PointCloud(x, y).cost_matrix)
    P = pot.sinkhorn(
        np.asarray(a),
        np.asarray(b),
        C,
        0.1,
        method="sinkhorn_log",
        stopThr=1e-15,
        numItermax=100_000,
    )
    err = float(np.abs(np.asarray(sol.plan) - P).max())
    print(f"plan vs POT sinkhorn_log (n=200x150, eps=0.1, float64): max |P - P_POT| = {err:.1e}")

    # 2. per-iteration time, n = m = 2000, d = 2 (fixed number of sweeps, no early stop)
    n = 1000 if small else 2000
    iters = 50 if small else 100
    for dtype in (jnp.float32, jnp.float64):
        x, y = clouds(n, n, dtype)
        f_ott = jax.jit(lambda x, y: ott_solve(x, y, 0.1, iters=iters))
        f_js = jax.jit(lambda x, y: js_solve(x, y, 0.1, iters=iters))
        t_ott = timeit(f_ott, x, y, repeats=2) / iters
        t_js = timeit(f_js, x, y, repeats=1) / iters
        name = f"per sweep, n={n}, {jnp.dtype(dtype).name}"
        rows.append((name, t_ott * 1e3, t_js * 1e3, "ms"))
        plot[name] = (t_ott * 1e3, t_js * 1e3)

    # 3. blockwise cost, n = m = 10 000 (never materialised)
    n = 3000 if small else 10_000
    it = 5
    x, y = clouds(n, n, jnp.float32)
    f_ott = jax.jit(lambda x, y: ott_solve(x, y, 0.1, iters=it, batch_size=1000))
    f_js = jax.jit(lambda x, y: js_solve(x, y, 0.1, iters=it, batch_size=1000))
    try:
        t_ott = timeit(f_ott, x, y, repeats=1) / it
    except AttributeError as e:  # OTT-JAX 0.6's batched PointCloud fails on jax 0.10
        print(f"OTT-JAX blockwise PointCloud failed: {e}")
        t_ott = float("nan")
    t_js = timeit(f_js, x, y, repeats=1) / it
    rows.append((f"per sweep, n={n}, blockwise, float32", t_ott * 1e3, t_js * 1e3, "ms"))

    # 4. time to marginal error 1e-6 at eps = 0.01, n = 1000, x ~ N(0, I), y ~ N(1, I)
    n = 300 if small else 1000
    x, y = clouds(n, n, jnp.float64)
    f_ott = jax.jit(lambda x, y: ott_solve(x, y, 0.01))
    f_js = jax.jit(lambda x, y: js_solve(x, y, 0.01))
    t_ott = timeit(f_ott, x, y, repeats=1)
    it_ott = int(LAST[0][1])
    t_js = timeit(f_js, x, y, repeats=3)
    _, it_js, err_js = LAST[0]
    rows.append(
        (
            f"time to 1e-6, eps=0.01, n={n}, float64 (iters {it_ott} vs {int(it_js)})",
            t_ott,
            t_js,
            "s",
        )
    )
    plot["time to 1e-6 (s)"] = (t_ott, t_js)
    print(f"jaxsolve reached marginal error {float(err_js):.2e} in {int(it_js)} sweeps")

    # 5. gradient of reg_cost w.r.t. x: backward vs forward; memory vs iteration count
    n = 300 if small else 1000
    x, y = clouds(n, n, jnp.float64)
    solver = js.ot.Sinkhorn(tol=1e-8)

    def cost(x):
        return js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.05), solver=solver).reg_cost

    t_fwd = timeit(jax.jit(cost), x)
    t_vg = timeit(jax.jit(jax.value_and_grad(cost)), x)
    rows.append((f"reg_cost value vs value+grad (x), n={n}, eps=0.05", t_fwd, t_vg, "s"))

    def temp_bytes(max_steps):
        s = js.ot.Sinkhorn(tol=1e-8, max_steps=max_steps)
        g = jax.jit(
            jax.grad(lambda x: js.ot.solve(js.ot.PointCloud(x, y, epsilon=0.05), solver=s).reg_cost)
        )
        return g.lower(x).compile().memory_analysis().temp_size_in_bytes

    mem = {k: temp_bytes(k) for k in (1_000, 100_000)}
    print(
        f"gradient temp memory: max_steps=1e3 -> {mem[1000] / 2**20:.1f} MiB, "
        f"max_steps=1e5 -> {mem[100_000] / 2**20:.1f} MiB"
    )

    print("\n| case | OTT-JAX 0.6 | jaxsolve | ratio (jaxsolve / OTT) |")
    print("|---|---|---|---|")
    for name, t_o, t_j, unit in rows:
        if name.startswith("reg_cost"):
            print(
                f"| {name} | value {t_o:.3g} {unit} | value+grad {t_j:.3g} {unit} | "
                f"backward/forward {(t_j - t_o) / t_o:.2f} |"
            )
        else:
            print(f"| {name} | {t_o:.3g} {unit} | {t_j:.3g} {unit} | {t_j / t_o:.2f} |")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(plot)
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, [plot[k][0] for k in names], 0.4, label="OTT-JAX 0.6")
    ax.bar(pos + 0.2, [plot[k][1] for k in names], 0.4, label="jaxsolve")
    ax.set_xticks(pos, names, fontsize=7)
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Sinkhorn on a 2-core CPU (lower is better)")
    fig.tight_layout()
    fig.savefig(pathlib.Path(__file__).with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true")
    main(parser.parse_args().small)
