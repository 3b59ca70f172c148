"""Ridge with one regularisation weight per feature: hypergradient accuracy and time.

Inner: w*(θ) = argmin ½‖Xw − t‖² + ½ Σ_j exp(θ_j) w_j²  (train n = 1500, p = 300).
Outer: ½‖X_v w*(θ) − t_v‖² (validation n = 500). Closed form: −e^θ ⊙ w* ⊙ H⁻¹∇_w F.

Side by side in one process (float64): jaxsolve's estimators (implicit with CG / GMRES / the
adjoint form, truncated Neumann series, unrolled), JAXopt's implicit differentiation (gradient
descent inner solver with `implicit_diff_solve=solve_cg`) and JAXopt unrolled. Same inner
algorithm (gradient descent, step 1/L, at most 500 steps, gradient-norm tol 1e-9) for the
timing comparison. Prints a Markdown table and saves bilevel_ridge_hypergradient.png.

Usage: python benchmarks/bilevel_ridge_hypergradient.py [--small]
"""

import argparse
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jaxopt  # noqa: E402
import lineax as lx  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import jaxsolve as js  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--round-robin",
        action="store_true",
        help="time one call of each method per round (the call after a slow one is penalised)",
    )
    a = parser.parse_args()
    n, p, nv = (300, 60, 100) if a.small else (1500, 300, 500)
    steps = 500
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.PRNGKey(0), 5)
    X = jax.random.normal(k1, (n, p))
    Xv = jax.random.normal(k2, (nv, p))
    w_true = jax.random.normal(k3, (p,)) * (jax.random.uniform(k4, (p,)) < 0.3)
    t = X @ w_true + 0.5 * jax.random.normal(k5, (n,))
    tv = Xv @ w_true
    theta = jnp.log(jnp.full((p,), 10.0)) + 0.5 * jax.random.normal(k4, (p,))
    train, val = (X, t), (Xv, tv)

    def inner(th, w, data):
        x, y = data
        return 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * jnp.sum(jnp.exp(th) * w**2)

    def outer(th, w, data):
        x, y = data
        return 0.5 * jnp.sum((x @ w - y) ** 2)

    H = X.T @ X + jnp.diag(jnp.exp(theta))
    evals = jnp.linalg.eigvalsh(H)
    L = float(evals[-1])
    lr = 1.0 / L

    @jax.jit
    def closed_form(th, train, val):
        (X, t), (Xv, tv) = train, val
        H = X.T @ X + jnp.diag(jnp.exp(th))
        w = jnp.linalg.solve(H, X.T @ t)
        v = jnp.linalg.solve(H, Xv.T @ (Xv @ w - tv))
        return -jnp.exp(th) * w * v

    exact = closed_form(theta, train, val)
    w0 = jnp.zeros(p)
    tol = 1e-9
    cg = lx.CG(rtol=1e-10, atol=1e-10)

    def js_hg(estimator, solver, **kw):
        @jax.jit
        def f(th, train, val):
            return js.bilevel.hypergradient(
                outer,
                inner,
                th,
                w0,
                val,
                train,
                estimator=estimator,
                inner_solver=solver,
                inner_tol=tol,
                inner_max_steps=steps,
                throw=False,
                **kw,
            ).grad

        return f

    gd = js.GradientDescent(lr)

    # JAXopt: gradient descent (no acceleration, fixed step) with implicit diff by CG.
    def jaxopt_fn(implicit):
        solver = jaxopt.GradientDescent(
            fun=lambda w, th, train: inner(th, w, train),
            stepsize=lr,
            maxiter=steps,
            tol=tol,
            acceleration=False,
            implicit_diff=implicit,
            implicit_diff_solve=lambda matvec, b, **kw: jaxopt.linear_solve.solve_cg(
                matvec, b, tol=1e-10, **kw
            ),
        )

        @jax.jit
        def f(th, train, val):
            def loss(th):
                w = solver.run(w0, th, train).params
                return outer(th, w, val)

            return jax.grad(loss)(th)

        return f

    methods = {
        "jaxsolve Implicit(CG), inner GD": js_hg(js.bilevel.Implicit(cg), gd),
        "jaxsolve Implicit(GMRES), inner GD": js_hg(
            js.bilevel.Implicit(lx.GMRES(rtol=1e-10, atol=1e-10)), gd
        ),
        "jaxsolve adjoint form (CG), inner GD": js_hg(
            js.bilevel.Implicit(cg), gd, adjoint0=jnp.zeros(p)
        ),
        "jaxsolve Implicit(CG), inner L-BFGS": js_hg(js.bilevel.Implicit(cg), js.LBFGS()),
        "jaxsolve TruncatedNeumann(50)": js_hg(js.bilevel.TruncatedNeumann(50, lr), gd),
        "jaxsolve Unrolled (500 GD steps)": js_hg(js.bilevel.Unrolled(), gd),
        "JAXopt implicit (solve_cg), inner GD": jaxopt_fn(True),
        "JAXopt unrolled, inner GD": jaxopt_fn(False),
        "closed form (dense solves)": closed_form,
    }

    # Compile everything, then time each method in a block of repeats after warm-up calls; report
    # medians. (Round-robin timing penalises whatever runs right after a multi-second call.)
    grads = {name: f(theta, train, val).block_until_ready() for name, f in methods.items()}
    times = {name: [] for name in methods}
    if not a.round_robin:  # each method timed in one block of repeats (after 3 warm-ups)
        for name, f in methods.items():
            for i in range(a.repeats + 3):
                t0 = time.perf_counter()
                f(theta, train, val).block_until_ready()
                if i >= 3:
                    times[name].append(time.perf_counter() - t0)
    else:
        for _ in range(a.repeats):
            for name, f in methods.items():
                t0 = time.perf_counter()
                f(theta, train, val).block_until_ready()
                times[name].append(time.perf_counter() - t0)
    rows = {}
    for name in methods:
        err = float(jnp.linalg.norm(grads[name] - exact) / jnp.linalg.norm(exact))
        rows[name] = (float(np.median(times[name])), err)
        print(f"{name}: {rows[name][0] * 1e3:.1f} ms, rel. error {err:.2e}", flush=True)

    ref = rows["JAXopt implicit (solve_cg), inner GD"][0]
    print(
        f"\nRidge hypergradient, n = {n}, p = {p}, float64, inner GD <= {steps} steps "
        f"(cond(H) = {float(evals[-1] / evals[0]):.1f}); median of {a.repeats}.\n"
    )
    print(
        "| method | time per hypergradient (ms) | vs JAXopt implicit | rel. error vs closed form |"
    )
    print("|---|---|---|---|")
    for name, (tm, err) in rows.items():
        print(f"| {name} | {tm * 1e3:.1f} | {tm / ref:.2f}x | {err:.1e} |")

    # Neumann error vs number of terms (α = 1/L): bias ‖(I − αH)^K‖ decays geometrically.
    terms = [1, 2, 5, 10, 20, 50, 100]
    neumann_err = []
    for k in terms:
        g = js_hg(js.bilevel.TruncatedNeumann(k, lr), gd)(theta, train, val)
        neumann_err.append(float(jnp.linalg.norm(g - exact) / jnp.linalg.norm(exact)))
    print("\nTruncated Neumann series (α = 1/λ_max): relative error vs number of terms\n")
    print("| terms | " + " | ".join(str(k) for k in terms) + " |")
    print("|---|" + "---|" * len(terms))
    print("| rel. error | " + " | ".join(f"{e:.1e}" for e in neumann_err) + " |")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    axes[0].semilogy(terms, neumann_err, "o-", label="TruncatedNeumann")
    axes[0].axhline(
        rows["jaxsolve Implicit(CG), inner GD"][1] + 1e-16, color="k", ls="--", label="Implicit(CG)"
    )
    axes[0].set_xlabel("Neumann terms K")
    axes[0].set_ylabel("relative error vs closed form")
    axes[0].set_title(f"Ridge hypergradient (n={n}, p={p})")
    axes[0].legend()
    names = list(rows)
    axes[1].barh(
        names,
        [rows[k][0] * 1e3 for k in names],
        color=[
            "C0" if k.startswith("jaxsolve") else "C1" if "JAXopt" in k else "C2" for k in names
        ],
    )
    axes[1].set_xlabel("ms per hypergradient (median)")
    axes[1].invert_yaxis()
    fig.tight_layout()
    out = pathlib.Path(__file__).with_suffix(".png")
    fig.savefig(out, dpi=110)
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
