"""Sinkhorn–Newton–Sparse vs Sinkhorn (jaxsolve's and OTT-JAX's) at small epsilon.

Problems of the SNS paper's kinds: random point clouds in the unit square (squared Euclidean,
ε = 1e-3 × mean cost) and W2 / W1 between two synthetic 28×28 densities (784 pixels, grid
cost). Target: L1 marginal error 1e-8. Sinkhorn runs are capped; a capped run that did not
reach the target is marked, and its ratios are lower bounds. float64, medians after compile.

    python benchmarks/ot_newton.py [--small]
"""

import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from ott.geometry import geometry as ott_geometry  # noqa: E402
from ott.problems.linear import linear_problem  # noqa: E402
from ott.solvers.linear import sinkhorn as ott_sinkhorn  # noqa: E402

import jaxsolve as js  # noqa: E402

SMALL = "--small" in sys.argv
TOL = 1e-8
CAP = 5_000 if SMALL else 20_000
REPEATS = 1


def timed(fn, *args):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return out, sorted(times)[len(times) // 2]


def image(kind, side=28):
    u = jnp.linspace(-1, 1, side)
    X, Y = jnp.meshgrid(u, u)
    if kind == 0:  # two blobs
        d = jnp.exp(-((X - 0.4) ** 2 + (Y - 0.3) ** 2) / 0.05) + jnp.exp(
            -((X + 0.5) ** 2 + (Y + 0.2) ** 2) / 0.1
        )
    else:  # a ring
        d = jnp.exp(-((jnp.sqrt(X**2 + Y**2) - 0.6) ** 2) / 0.02)
    d = d.ravel() + 1e-6
    return d / d.sum()


def problems():
    out = []
    sizes = [300] if SMALL else [500]
    for n in sizes:
        x = jax.random.uniform(jax.random.PRNGKey(n), (n, 2))
        y = jax.random.uniform(jax.random.PRNGKey(n + 1), (n, 2))
        C = jnp.sum((x[:, None] - y[None]) ** 2, -1)
        out.append((f"random n={n}", C, None, None))
    side = 16 if SMALL else 28
    u = jnp.linspace(0, 1, side)
    grid = jnp.stack(jnp.meshgrid(u, u), -1).reshape(-1, 2)
    a, b = image(0, side), image(1, side)
    diff = grid[:, None] - grid[None]
    out.append((f"W2 images {side}x{side}", jnp.sum(diff**2, -1), a, b))
    out.append((f"W1 images {side}x{side}", jnp.sqrt(jnp.sum(diff**2, -1)), a, b))
    return out


@jax.jit
def ours(C, eps, a, b, kind):
    geom = js.ot.Geometry(C, epsilon=eps)
    solver = {
        "sns": js.ot.SparseNewton(tol=TOL, max_steps=500),
        # jaxsolve's default Sinkhorn: Anderson acceleration + epsilon scaling.
        "sinkhorn": js.ot.Sinkhorn(tol=TOL, max_steps=CAP),
        # Plain Sinkhorn, the SNS paper's baseline.
        "plain": js.ot.Sinkhorn(tol=TOL, max_steps=CAP, epsilon_scaling=None, acceleration=None),
    }[kind]
    sol = js.ot.solve(geom, a, b, solver=solver, throw=False)
    return sol.stats


ours = jax.jit(ours.__wrapped__, static_argnums=4)


@jax.jit
def ott(C, eps, a, b):
    geom = ott_geometry.Geometry(C, epsilon=eps)
    out = ott_sinkhorn.Sinkhorn(threshold=TOL / 2, max_iterations=CAP)(
        linear_problem.LinearProblem(geom, a, b)
    )
    P = out.matrix
    err = jnp.sum(jnp.abs(P.sum(1) - a)) + jnp.sum(jnp.abs(P.sum(0) - b))
    return out.n_iters, err


def main():
    rows = []
    for name, C, a, b in problems():
        n = C.shape[0]
        a = jnp.full(n, 1.0 / n) if a is None else a
        b = jnp.full(n, 1.0 / n) if b is None else b
        eps = 1e-3 * float(jnp.mean(C))
        st_n, t_n = timed(ours, C, eps, a, b, "sns")
        st_s, t_s = timed(ours, C, eps, a, b, "sinkhorn")
        st_p, t_p = timed(ours, C, eps, a, b, "plain")
        (it_o, err_o), t_o = timed(ott, C, eps, a, b)
        it_n = int(st_n["num_steps"])
        rows.append(
            dict(
                problem=name,
                n=n,
                sns_it=f"{it_n} ({int(st_n['sinkhorn_steps'])}+{int(st_n['newton_steps'])})",
                sns_err=float(st_n["marginal_error"]),
                sns_t=t_n,
                sns_cg=int(st_n["cg_steps"]),
                pl_it=int(st_p["num_steps"]),
                pl_err=float(st_p["marginal_error"]),
                pl_t=t_p,
                pl_it_ratio=int(st_p["num_steps"]) / it_n,
                pl_t_ratio=t_p / t_n,
                sk_it=int(st_s["num_steps"]),
                sk_err=float(st_s["marginal_error"]),
                sk_t=t_s,
                ott_it=int(it_o),
                ott_err=float(err_o),
                ott_t=t_o,
                it_ratio=int(st_s["num_steps"]) / it_n,
                t_ratio=t_s / t_n,
                ott_t_ratio=t_o / t_n,
                ott_it_ratio=int(it_o) / it_n,
            )
        )
        print(rows[-1], flush=True)

    def mark(err):
        return "" if err <= TOL else f" (capped, err {err:.0e})"

    print(f"\nSNS vs Sinkhorn, eps = 1e-3 x mean cost, target L1 marginal error {TOL:g}, float64\n")
    print(
        "| problem | n | SNS iterations (Sinkhorn+Newton) | SNS CG steps | SNS time (s) | "
        "plain Sinkhorn iterations | time (s) | jaxsolve Sinkhorn (Anderson + eps-scaling) "
        "iterations | time (s) | OTT-JAX Sinkhorn iterations | time (s) | iterations ratio "
        "(plain / ours / OTT) | time ratio (plain / ours / OTT) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['problem']} | {r['n']} | {r['sns_it']} | {r['sns_cg']} | {r['sns_t']:.3f} | "
            f"{r['pl_it']}{mark(r['pl_err'])} | {r['pl_t']:.3f} | "
            f"{r['sk_it']}{mark(r['sk_err'])} | {r['sk_t']:.3f} | {r['ott_it']}{mark(r['ott_err'])}"
            f" | {r['ott_t']:.2f} | {r['pl_it_ratio']:.0f}x / {r['it_ratio']:.0f}x / "
            f"{r['ott_it_ratio']:.0f}x | {r['pl_t_ratio']:.1f}x / {r['t_ratio']:.1f}x / "
            f"{r['ott_t_ratio']:.1f}x |"
        )
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [r["problem"] for r in rows]
    xs = range(len(rows))
    for off, key, lab in [
        (-0.25, "sns_t", "SNS"),
        (-0.08, "pl_t", "plain Sinkhorn"),
        (0.08, "sk_t", "jaxsolve Sinkhorn"),
        (0.25, "ott_t", "OTT-JAX Sinkhorn"),
    ]:
        ax.bar([i + off for i in xs], [r[key] for r in rows], width=0.16, label=lab)
    ax.set_xticks(list(xs), labels, rotation=15)
    ax.set_yscale("log")
    ax.set_ylabel("seconds to 1e-8 (or cap)")
    ax.legend()
    fig.tight_layout()
    fig.savefig("benchmarks/ot_newton.png", dpi=120)


if __name__ == "__main__":
    main()
