"""Non-negative least squares and simplex-constrained regression: jaxsolve vs JAXopt and SciPy.

Problems: NNLS `min ½‖Aw − b‖², w ≥ 0` (A 600×200 and 2000×500, Gaussian, half of the true
coefficients negative so that many bounds are active) and simplex-constrained regression
`min ½‖Aw − b‖², w ∈ Δ` (A 600×200, a sparse mixture). Reference solutions: SciPy's `nnls`
(active set, exact) for NNLS; for the simplex, the exact KKT solution on the support found by a
long run (equality-constrained least squares on the support, KKT conditions checked).

Equal accuracy: each solver runs on a ladder of tolerances, and is timed at the loosest one whose
solution is within 1e-6 (relative to max|w*|) of the reference in every coordinate. jaxsolve
ProjectedGradient (FISTA, restart, backtracking) and LBFGSB (bounds) vs JAXopt
ProjectedGradient (FISTA, backtracking, its defaults) and SciPy `nnls` (Lawson-Hanson, one
call; also `lsq_linear(method='bvls')`). Everything jitted, float64, data passed as arguments.

Run: python benchmarks/constrained_nnls.py [--small]
"""

import os

# SciPy's L-BFGS-B and nnls call BLAS on tiny vectors: a multi-threaded OpenBLAS spinning
# against JAX's threads on a loaded 2-core machine made each call 5-10x slower. One thread is
# SciPy's best setting here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jaxopt  # noqa: E402
import numpy as np  # noqa: E402
from _timing import interleaved_times, machine, markdown_table  # noqa: E402
from scipy.optimize import lsq_linear, nnls  # noqa: E402

import jaxsolve as js  # noqa: E402

SMALL = "--small" in sys.argv
TARGET = 1e-6
TOLS = [
    1.0,
    0.3,
    0.1,
    0.03,
    0.01,
    3e-3,
    1e-3,
    3e-4,
    1e-4,
    1e-5,
    1e-6,
    1e-7,
    1e-8,
    1e-9,
    1e-10,
    1e-11,
    1e-12,
]
MAXITER = 20000


def lsq(w, data):
    A, b = data[0], data[1]
    return 0.5 * jnp.sum((A @ w - b) ** 2)


def jaxopt_lsq(w, A, b):
    return 0.5 * jnp.sum((A @ w - b) ** 2)


def nonneg(y, data):
    return js.projections.nonnegative(y)


def on_simplex(y, data):
    return js.projections.simplex(y)


def make_solvers(kind, n):
    y0 = jnp.zeros(n) if kind == "nnls" else jnp.full(n, 1.0 / n)
    proj = nonneg if kind == "nnls" else on_simplex
    jproj = (
        jaxopt.projection.projection_non_negative
        if kind == "nnls"
        else (jaxopt.projection.projection_simplex)
    )
    out = {}

    def js_pg(tol):
        solver = js.ProjectedGradient(proj)
        return lambda A, b: (
            js.minimise(
                lsq, y0, (A, b), solver=solver, tol=tol, max_steps=MAXITER, throw=False
            ).value
        )

    out["jaxsolve ProjectedGradient"] = js_pg
    if kind == "nnls":

        def js_lbfgsb(tol):
            return lambda A, b: (
                js.minimise(
                    lsq,
                    y0,
                    (A, b),
                    solver=js.LBFGSB(),
                    bounds=(0.0, None),
                    tol=tol,
                    max_steps=MAXITER,
                    throw=False,
                ).value
            )

        out["jaxsolve LBFGSB"] = js_lbfgsb

    def jo_pg(tol):
        pg = jaxopt.ProjectedGradient(fun=jaxopt_lsq, projection=jproj, tol=tol, maxiter=MAXITER)
        hyper = None if kind == "nnls" else 1.0
        return lambda A, b: pg.run(y0, hyper, A, b).params

    out["JAXopt ProjectedGradient"] = jo_pg
    return out


def simplex_reference(A, b, w_long):
    """Exact solution on the support of a long run: min ½‖A_S w − b‖² s.t. Σ w = 1 (KKT)."""
    A, b = np.asarray(A), np.asarray(b)
    S = np.asarray(w_long) > 1e-10
    As = A[:, S]
    k = S.sum()
    K = np.block([[As.T @ As, np.ones((k, 1))], [np.ones((1, k)), np.zeros((1, 1))]])
    sol = np.linalg.solve(K, np.concatenate([As.T @ b, [1.0]]))
    w = np.zeros(A.shape[1])
    w[S] = sol[:k]
    # KKT: ∇f + ν 1 − μ = 0, μ ≥ 0: w > 0 on S, and ∇f ≥ −ν off S
    g = A.T @ (A @ w - b)
    nu = sol[k]
    assert (w[S] > 0).all() and (g[~S] >= -nu - 1e-8 * max(1, abs(nu))).all(), "not a KKT point"
    return w


def run_case(kind, m, n, seed):
    kA, kw, ke = jax.random.split(jax.random.PRNGKey(seed), 3)
    A = jax.random.normal(kA, (m, n))
    if kind == "nnls":
        w_true = jax.random.normal(kw, (n,))
    else:
        w_true = js.projections.simplex(jax.random.normal(kw, (n,)) * 3.0)
    b = A @ w_true + 0.1 * jax.random.normal(ke, (m,))
    An, bn = np.asarray(A), np.asarray(b)
    if kind == "nnls":
        ref = nnls(An, bn, maxiter=50 * n)[0]
    else:
        long = js.minimise(
            lsq,
            jnp.full(n, 1.0 / n),
            (A, b),
            solver=js.ProjectedGradient(on_simplex),
            tol=1e-12,
            max_steps=200000,
            throw=False,
        ).value
        ref = simplex_reference(A, b, long)
    scale = np.abs(ref).max()
    rows, fns, chosen = [], {}, {}
    for name, make in make_solvers(kind, n).items():
        for tol in TOLS:
            fn = jax.jit(make(tol))
            err = np.abs(np.asarray(fn(A, b)) - ref).max() / scale
            if err <= TARGET:
                fns[name], chosen[name] = fn, (tol, err)
                break
        else:
            chosen[name] = (None, err)
    if kind == "nnls":
        fns["SciPy nnls"] = None
        fns["SciPy lsq_linear bvls"] = None
    jax_fns = {k: v for k, v in fns.items() if v is not None}
    times = interleaved_times(jax_fns, A, b, repeats=5 if SMALL else 9)
    if kind == "nnls":
        import time

        for name, call in [
            ("SciPy nnls", lambda: nnls(An, bn, maxiter=50 * n)[0]),
            (
                "SciPy lsq_linear bvls",
                lambda: lsq_linear(An, bn, bounds=(0, np.inf), method="bvls", tol=1e-12).x,
            ),
        ]:
            ts = []
            for _ in range(3 if name == "SciPy nnls" else 1):  # bvls takes seconds
                t0 = time.perf_counter()
                w = call()
                ts.append(time.perf_counter() - t0)
            times[name] = min(ts)
            chosen[name] = ("—", np.abs(w - ref).max() / scale)
    base = times.get("JAXopt ProjectedGradient")
    for name, t in times.items():
        tol, err = chosen[name]
        rows.append(
            [f"{kind} {m}×{n}", name, tol, err, t * 1e3, t / base if base else float("nan")]
        )
    for name, (_tol, err) in chosen.items():
        if name not in times:
            rows.append([f"{kind} {m}×{n}", name, "not reached", err, float("nan"), float("nan")])
    return rows


def main():
    cases = [("nnls", 600, 200, 0), ("simplex", 600, 200, 1)]
    if not SMALL:
        cases.insert(1, ("nnls", 2000, 500, 2))
    rows = []
    for case in cases:
        rows += run_case(*case)
    header = ["problem", "solver", "tol used", "max rel. error", "time (ms)", "× JAXopt"]
    table = markdown_table(header, rows)
    print(f"Machine: {machine()}\n")
    print(table)
    return table


if __name__ == "__main__":
    main()
