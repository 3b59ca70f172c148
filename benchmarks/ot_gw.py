"""Entropic Gromov–Wasserstein and fused GW: `js.ot.solve_gw` against POT and OTT-JAX.

Side by side in one process, float64, point clouds (squared Euclidean costs normalised to a
maximum of 1): a 2-D Gaussian cloud against a different 3-D one (GW), the same with a fused
term `M = |x₁ − y₁|²` at `alpha = 0.5` (fused GW), and a 2-D anisotropic cloud against its
rotated, permuted copy embedded in 3-D (recovery). The same ε in POT's convention
(`T ← Sinkhorn_ε(∇E(T))`, the gradient with its factor 2); OTT-JAX linearises without it, so
it runs at ε/2 (fused: its linearisation `L ⊗ T + λM` at `λ = (1 − α)/(2α)` and ε/(2α) is
POT's iteration; its objective is evaluated by POT's formula on its plan). Reported: the GW
objective (no entropy) relative to POT's converged one (`tol = 1e-9`, warm-started inner
solves), the outer steps, the best wall time of interleaved runs (compilation excluded; POT's
numpy once; not run at n = 1000, where the two JAX solvers are compared with each other), and
the share of points the plan's argmax sends to their true copy (or its nearest neighbour).

    python benchmarks/ot_gw.py [--small] [--sizes=100,300] [--no-recovery]
"""

import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import ot as pot  # noqa: E402
from _timing import interleaved_times, machine, markdown_table  # noqa: E402
from ott.geometry import pointcloud  # noqa: E402
from ott.problems.quadratic import quadratic_problem  # noqa: E402
from ott.solvers.linear import sinkhorn  # noqa: E402
from ott.solvers.quadratic import gromov_wasserstein as ott_gw  # noqa: E402

import jaxsolve as js  # noqa: E402

SMALL = "--small" in sys.argv
SIZES = [100] if SMALL else [100, 300, 1000]
for arg in sys.argv:  # --sizes=1000 runs only those
    if arg.startswith("--sizes="):
        SIZES = [int(v) for v in arg.split("=")[1].split(",")]
RECOVERY = "--no-recovery" not in sys.argv
POT_MAX_N = 300  # POT's dense numpy GW at n = 1000 takes tens of minutes on 2 shared cores
EPS = 0.01  # POT's convention, costs normalised to max 1
EPS_RECOVERY = 0.001
ALPHA = 0.5
TOL_OUTER = 1e-6  # jaxsolve: L1 change of the plan between outer steps
TOL_INNER = 1e-8  # both: L1 marginal error of each Sinkhorn solve
OTT_THRESHOLD = 1e-8  # OTT: relative change of the regularised cost between outer steps


def normalised(x):
    return x / np.sqrt(pot.dist(x, x).max())


def clouds(n, seed=0):
    rng = np.random.default_rng(seed)
    return normalised(rng.standard_normal((n, 2))), normalised(rng.standard_normal((n, 3)))


def rotated_copy(n, seed=0):
    rng = np.random.default_rng(seed)
    x = normalised(rng.standard_normal((n, 2)) * np.array([1.0, 0.4]))
    perm = rng.permutation(n)
    c, s = np.cos(1.0), np.sin(1.0)
    Q = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    y = np.c_[x[perm] @ np.array([[c, -s], [s, c]]), np.zeros(n)] @ Q
    return x, y, perm


def ours(eps, alpha=None):
    # POT's fused objective α·GW + (1 − α)·W at ε is α × (GW + λ W) at ε/α, λ = (1 − α)/α
    # (jaxsolve's `fused_penalty`, OTT-JAX's convention).
    solver = js.ot.GromovWasserstein(
        epsilon=eps if alpha is None else eps / alpha,
        tol=TOL_OUTER,
        max_steps=5000,
        sinkhorn=js.ot.Sinkhorn(tol=TOL_INNER, epsilon_scaling=None),
    )

    def run(x, y):
        geom_xy = None if alpha is None else js.ot.PointCloud(x[:, :1], y[:, :1])
        sol = js.ot.solve_gw(
            js.ot.PointCloud(x, x),
            js.ot.PointCloud(y, y),
            geom_xy=geom_xy,
            fused_penalty=0.0 if alpha is None else (1 - alpha) / alpha,
            solver=solver,
        )
        cost = sol.cost if alpha is None else alpha * sol.cost  # in POT's scale
        return cost, sol.plan, sol.stats["num_steps"]

    return run


def ott(eps, alpha=None):
    solver = ott_gw.GromovWasserstein(
        sinkhorn.Sinkhorn(threshold=TOL_INNER, max_iterations=100_000),
        epsilon=eps / 2 if alpha is None else eps / (2 * alpha),
        threshold=OTT_THRESHOLD,
        max_iterations=5000,
        warm_start=True,
    )

    def run(x, y):
        kw = {}
        if alpha is not None:
            kw = dict(
                geom_xy=pointcloud.PointCloud(x[:, :1], y[:, :1]),
                fused_penalty=(1 - alpha) / (2 * alpha),
            )
        prob = quadratic_problem.QuadraticProblem(
            pointcloud.PointCloud(x), pointcloud.PointCloud(y), **kw
        )
        out = solver(prob)
        return jnp.nan, out.matrix, jnp.sum(out.costs != -1)

    return run


def objective(x, y, T, alpha=None):
    """POT's (fused) GW objective of a plan (no entropy)."""
    T = np.asarray(T)
    p, q = T.sum(1), T.sum(0)
    constC, hC1, hC2 = pot.gromov.init_matrix(pot.dist(x, x), pot.dist(y, y), p, q)
    gw = float(pot.gromov.gwloss(constC, hC1, hC2, T))
    if alpha is None:
        return gw
    return alpha * gw + (1 - alpha) * float(np.sum(pot.dist(x[:, :1], y[:, :1]) * T))


def pot_run(x, y, eps, alpha=None):
    Cx, Cy = pot.dist(x, x), pot.dist(y, y)
    kw = dict(epsilon=eps, max_iter=5000, tol=1e-9, log=True, warmstart=True)
    start = time.perf_counter()
    if alpha is None:
        T, log = pot.gromov.entropic_gromov_wasserstein(Cx, Cy, **kw)
        value = log["gw_dist"]
    else:
        M = pot.dist(x[:, :1], y[:, :1])
        T, log = pot.gromov.entropic_fused_gromov_wasserstein(M, Cx, Cy, alpha=alpha, **kw)
        value = log["fgw_dist"]
    return float(value), T, 10 * len(log["err"]), time.perf_counter() - start


def main():
    print(f"Machine: {machine()}\n")
    rows, rec_rows = [], []
    for n in SIZES:
        for kind, alpha in [("GW", None), ("fused GW", ALPHA)]:
            x, y = (jnp.asarray(v) for v in clouds(n))
            if n <= POT_MAX_N:
                ref, _, pot_steps, t_pot = pot_run(np.asarray(x), np.asarray(y), EPS, alpha)
            fns = {"jaxsolve": ours(EPS, alpha), "ott": ott(EPS, alpha)}
            times = interleaved_times(fns, x, y, repeats=3)
            out = {k: jax.jit(f)(x, y) for k, f in fns.items()}
            xn, yn = np.asarray(x), np.asarray(y)
            value = {
                "jaxsolve": float(out["jaxsolve"][0]),  # its own `cost`
                "ott": objective(xn, yn, out["ott"][1], alpha),  # POT's formula on OTT's plan
            }
            if n > POT_MAX_N:  # no POT: each against the other
                ref, pot_steps, t_pot = value["ott"], "not run", "not run"
                value["ott"] = float(out["jaxsolve"][0])
            rel = {k: abs(v - ref) / abs(ref) for k, v in value.items()}
            rows.append(
                [
                    n,
                    kind,
                    ref,
                    f"{rel['jaxsolve']:.1e}",
                    f"{rel['ott']:.1e}",
                    f"{int(out['jaxsolve'][2])} / {int(out['ott'][2])} / {pot_steps}",
                    times["jaxsolve"],
                    times["ott"],
                    t_pot,
                    times["jaxsolve"] / times["ott"],
                ]
            )
            print(markdown_table(HEADER, rows[-1:]), flush=True)
        if not RECOVERY:
            continue
        x, y, perm = rotated_copy(n)
        xn = np.asarray(x)
        d = pot.dist(xn, xn)
        np.fill_diagonal(d, np.inf)
        nearest = np.argmin(d, axis=1)  # each point's nearest neighbour in the cloud
        x, y = jnp.asarray(x), jnp.asarray(y)
        row = [n]
        for f in (ours(EPS_RECOVERY), ott(EPS_RECOVERY)):
            match = np.argmax(np.asarray(jax.jit(f)(x, y)[1]), axis=0)
            row += [
                f"{np.mean(match == perm):.0%}",
                f"{np.mean((match == perm) | (match == nearest[perm])):.0%}",
            ]
        rec_rows.append(row)
        print(markdown_table(REC_HEADER, rec_rows[-1:]), flush=True)
    print(f"\nMachine: {machine()}; float64; ε = {EPS} (POT's convention)\n")
    print(markdown_table(HEADER, rows))
    print(f"\nRecovery of a rotated, permuted copy in 3-D (ε = {EPS_RECOVERY}):\n")
    print(markdown_table(REC_HEADER, rec_rows))


HEADER = [
    "n",
    "problem",
    "POT objective",
    "jaxsolve rel. diff",
    "OTT rel. diff",
    "outer steps (js / OTT / POT≈)",
    "jaxsolve s",
    "OTT s",
    "POT s (once)",
    "jaxsolve / OTT",
]
REC_HEADER = [
    "n",
    "jaxsolve: exact",
    "jaxsolve: exact or nearest neighbour",
    "OTT: exact",
    "OTT: exact or nearest neighbour",
]

if __name__ == "__main__":
    main()
