"""Bound-constrained minimisation: jaxsolve LBFGSB vs SciPy's L-BFGS-B (Fortran, v3.0).

Problems (CUTEst-style, float64):
- bounded Rosenbrock (chained), n = 100 and 1000, x ∈ [−2, 2] with every third upper bound at
  0.5 (active at the solution), from (−1.2, 1, −1.2, ...);
- obstacle problem (OBSTCLAE-like): ½ uᵀLu − c Σu on a 32×32 grid (n = 1024, L the 5-point
  Laplacian), ψ ≤ u ≤ 0.2 with a bump obstacle ψ;
- a bounded convex quadratic (BQPGAUSS-like): ½ xᵀQx + qᵀx, Q = MᵀM/n + 1e-3 I (n = 500),
  x ∈ [−1, 1];
- non-negative Poisson regression (n = 200 weights, 2000 counts), w ≥ 0.

Both use 10 curvature pairs. SciPy stops on its projected-gradient test `max|P(x − g) − x| ≤
gtol` with gtol = 1e-6 (ftol = 0, so only that test); jaxsolve on the 2-norm of the same vector,
`tol = 1e-6` (a stricter test). Reported: iterations, function evaluations (jaxsolve: value and
gradient evaluations including rejected line-search trials are not counted separately; the
iteration count is what is compared), f − f* (f* from SciPy at gtol = 1e-12), final
projected-gradient ∞-norm, and wall time (SciPy calls a jitted JAX value-and-gradient; jaxsolve
is one jitted solve).

Run: python benchmarks/constrained_bounded.py [--small]
"""

import os

# SciPy's L-BFGS-B and nnls call BLAS on tiny vectors: a multi-threaded OpenBLAS spinning
# against JAX's threads on a loaded 2-core machine made each call 5-10x slower. One thread is
# SciPy's best setting here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _timing import machine, markdown_table  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

import jaxsolve as js  # noqa: E402

SMALL = "--small" in sys.argv


def rosen(x, _):
    return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def rosen_case(n):
    x0 = jnp.full(n, -1.2).at[1::2].set(1.0)
    lo, hi = jnp.full(n, -2.0), jnp.full(n, 2.0).at[::3].set(0.5)
    return f"bounded Rosenbrock n={n}", rosen, None, x0, lo, hi


def obstacle_case(k=32):
    h = 1.0 / (k + 1)
    g = jnp.linspace(h, 1 - h, k)
    xx, yy = jnp.meshgrid(g, g)
    psi = 0.15 - 2.0 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)  # a bump, positive in the middle

    def energy(u, c):
        U = u.reshape(k, k)
        P = jnp.pad(U, 1)
        lap = 4 * U - P[:-2, 1:-1] - P[2:, 1:-1] - P[1:-1, :-2] - P[1:-1, 2:]
        return 0.5 * jnp.sum(U * lap) - c * h * h * jnp.sum(U)

    return f"obstacle {k}×{k}", energy, 1.0, jnp.zeros(k * k), psi.ravel(), jnp.full(k * k, 0.2)


def bqp_case(n=500):
    M = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    Q = M.T @ M / n + 1e-3 * jnp.eye(n)
    q = jax.random.normal(jax.random.PRNGKey(1), (n,))

    def f(x, args):
        Q, q = args
        return 0.5 * x @ Q @ x + q @ x

    return f"bounded QP n={n}", f, (Q, q), jnp.zeros(n), jnp.full(n, -1.0), jnp.full(n, 1.0)


def poisson_case(n=200, m=2000):
    kA, kw, kc = jax.random.split(jax.random.PRNGKey(2), 3)
    A = jnp.abs(jax.random.normal(kA, (m, n))) / jnp.sqrt(n)
    w_true = jnp.maximum(jax.random.normal(kw, (n,)), 0.0)
    counts = jax.random.poisson(kc, A @ w_true + 0.1).astype(jnp.float64)

    def nll(w, args):
        A, c = args
        rate = A @ w + 0.1
        return jnp.sum(rate - c * jnp.log(rate)) / m

    return (
        "non-negative Poisson n=200",
        nll,
        (A, counts),
        jnp.full(n, 0.5),
        jnp.zeros(n),
        jnp.full(n, jnp.inf),
    )


def run(name, fn, args, x0, lo, hi):
    vg = jax.jit(jax.value_and_grad(fn))
    pg_inf = lambda x: float(
        np.abs(np.clip(x - np.asarray(vg(jnp.asarray(x), args)[1]), lo, hi) - x).max()
    )
    lo, hi = np.asarray(lo), np.asarray(hi)
    bounds = list(zip(lo, hi))

    def scipy_solve(gtol):
        fun = lambda x: tuple(np.asarray(v, np.float64) for v in vg(jnp.asarray(x), args))
        return minimize(
            fun,
            np.asarray(x0),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options=dict(gtol=gtol, ftol=0.0, maxiter=100000, maxfun=1000000, maxcor=10),
        )

    fstar = scipy_solve(1e-12).fun
    solve = jax.jit(
        lambda x0, args, lo, hi: js.minimise(
            fn,
            x0,
            args,
            solver=js.LBFGSB(),
            bounds=(lo, hi),
            tol=1e-6,
            max_steps=100000,
            throw=False,
        )
    )
    sol = solve(x0, args, jnp.asarray(lo), jnp.asarray(hi))
    jax.block_until_ready(sol.value)
    t_js, t_sp = [], []
    for _ in range(3 if SMALL else 5):
        t0 = time.perf_counter()
        jax.block_until_ready(solve(x0, args, jnp.asarray(lo), jnp.asarray(hi)).value)
        t_js.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r = scipy_solve(1e-6)
        t_sp.append(time.perf_counter() - t0)
    x_js = np.asarray(sol.value)
    f_js = float(fn(sol.value, args))
    return [
        [
            name,
            "jaxsolve LBFGSB",
            int(sol.stats["num_steps"]),
            js.RESULTS[sol.result] or "successful",
            f_js - fstar,
            pg_inf(x_js),
            min(t_js) * 1e3,
            min(t_js) / min(t_sp),
        ],
        [
            name,
            "SciPy L-BFGS-B",
            int(r.nit),
            f"{r.nfev} evaluations",
            r.fun - fstar,
            pg_inf(r.x),
            min(t_sp) * 1e3,
            1.0,
        ],
    ]


def main():
    cases = [
        rosen_case(100),
        obstacle_case(16 if SMALL else 32),
        bqp_case(100 if SMALL else 500),
        poisson_case(),
    ]
    if not SMALL:
        cases.insert(1, rosen_case(1000))
    rows = []
    for case in cases:
        rows += run(*case)
    header = [
        "problem",
        "solver",
        "iterations",
        "result / evaluations",
        "f − f*",
        "‖P(x−∇f)−x‖∞",
        "time (ms)",
        "× SciPy",
    ]
    print(f"Machine: {machine()}\n")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
