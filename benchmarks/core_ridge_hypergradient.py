"""Ridge hypergradient: jaxsolve implicit vs JAXopt implicit vs unrolled vs the closed form.

Train n = 1500, p = 300; validation loss of the ridge solution; gradient with respect to the log
regularisation weight. The inner problem is solved by plain gradient descent with a fixed step for
a fixed number of steps (500, as in the reference figure) by both libraries, and the implicit
derivative uses CG in both. Also: the compiled peak temporary memory of the gradient at 100 and
10 000 inner steps (XLA's memory analysis), implicit vs unrolled.

Run: python benchmarks/core_ridge_hypergradient.py [--small]
"""

import functools
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
from _timing import compare_times, machine, markdown_table  # noqa: E402

import jaxsolve as js  # noqa: E402

SMALL = "--small" in sys.argv
N, NV, P = (300, 100, 60) if SMALL else (1500, 500, 300)
STEPS = 500

k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
w_true = jax.random.normal(k1, (P,))
X = jax.random.normal(k2, (N, P))
DATA = (X, X @ w_true + 0.5 * jax.random.normal(k3, (N,)), jax.random.normal(k4, (NV, P)))
DATA = DATA + (DATA[2] @ w_true,)
# Step 1/L for the inner objective, L = largest eigenvalue of X'X/n + lambda I (lambda <= 1).
LR = float(1.0 / (jnp.linalg.eigvalsh(X.T @ X / N)[-1] + 1.0))
# The data travel as arguments: arrays closed over by a jitted function become XLA constants,
# and constant folding X'X at compile time costs tens of seconds.


def inner(w, log_lam, X, y):
    return 0.5 * jnp.sum((X @ w - y) ** 2) / X.shape[0] + 0.5 * jnp.exp(log_lam) * jnp.sum(w**2)


def outer_of_w(w, Xv, yv):
    return 0.5 * jnp.sum((Xv @ w - yv) ** 2) / Xv.shape[0]


def closed_form_grad(log_lam, data):
    X, y, Xv, yv = data
    H = X.T @ X / N + jnp.exp(log_lam) * jnp.eye(P)
    w = jnp.linalg.solve(H, X.T @ y / N)
    dw = jnp.linalg.solve(H, -jnp.exp(log_lam) * w)
    return jax.grad(outer_of_w)(w, Xv, yv) @ dw


CG = lx.CG(rtol=1e-10, atol=1e-10, max_steps=1000)


def js_outer(log_lam, data, adjoint, steps=STEPS):
    X, y, Xv, yv = data
    sol = js.minimise(
        lambda w, a: inner(w, *a),
        jnp.zeros(P),
        (log_lam, X, y),
        solver=js.GradientDescent(LR),
        tol=1e-300,
        max_steps=steps,
        adjoint=adjoint,
        throw=False,
    )
    return outer_of_w(sol.value, Xv, yv)


def make_jaxopt(implicit: bool):
    import jaxopt

    solver = jaxopt.GradientDescent(
        fun=inner,
        stepsize=LR,
        maxiter=STEPS,
        tol=1e-300,
        acceleration=False,
        jit=True,
        implicit_diff=implicit,
        implicit_diff_solve=functools.partial(
            jaxopt.linear_solve.solve_cg, tol=1e-10, maxiter=1000
        ),
    )

    def outer(log_lam, data):
        X, y, Xv, yv = data
        return outer_of_w(solver.run(jnp.zeros(P), log_lam, X, y).params, Xv, yv)

    return outer


def main():
    theta = jnp.array(0.0)
    g_true = float(closed_form_grad(theta, DATA))
    candidates = {
        "jaxsolve implicit (CG)": jax.jit(
            jax.grad(functools.partial(js_outer, adjoint=js.ImplicitAdjoint(CG)))
        ),
        "jaxsolve unrolled": jax.jit(
            jax.grad(functools.partial(js_outer, adjoint=js.UnrollAdjoint()))
        ),
        "closed form (dense solves)": jax.jit(closed_form_grad),
    }
    try:
        candidates["JAXopt implicit (CG)"] = jax.jit(jax.grad(make_jaxopt(True)))
        candidates["JAXopt unrolled"] = jax.jit(jax.grad(make_jaxopt(False)))
    except ImportError:
        print("jaxopt not installed: pip install '.[bench]' to compare")
    times = compare_times(candidates, theta, DATA, repeats=5 if SMALL else 15)
    rows = []
    for name, f in candidates.items():
        g = float(f(theta, DATA))
        rows.append([name, f"{g:.12e}", abs(g - g_true) / abs(g_true), times[name] * 1e3])
    ref = times.get("JAXopt implicit (CG)")
    for r in rows:
        r.append(r[3] / 1e3 / ref if ref else "-")
    print(f"\nRidge hypergradient, n={N}, p={P}, {STEPS} inner GD steps, float64; {machine()}\n")
    print(
        markdown_table(
            [
                "method",
                "gradient",
                "rel. error vs closed form",
                "ms / gradient",
                "time ratio vs JAXopt implicit",
            ],
            rows,
        )
    )

    # Peak temporary memory of the compiled gradient: flat in the steps for the implicit adjoint.
    mem_rows = []
    for name, adjoint in [
        ("implicit (CG)", js.ImplicitAdjoint(CG)),
        ("unrolled (checkpointed)", js.UnrollAdjoint()),
    ]:
        row = [name]
        for steps in (100, 10_000):
            loss = functools.partial(js_outer, adjoint=adjoint, steps=steps)
            mem = jax.jit(jax.grad(loss)).lower(theta, DATA).compile().memory_analysis()
            row.append(mem.temp_size_in_bytes / 2**20)
        mem_rows.append(row)
    print("\nCompiled peak temporary memory of the gradient (MiB, XLA memory analysis)\n")
    print(markdown_table(["adjoint", "100 inner steps", "10 000 inner steps"], mem_rows))

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3))
        names = list(times)
        ax.barh(names, [times[n] * 1e3 for n in names], color="tab:blue")
        ax.set_xlabel("ms per hypergradient (lower is better)")
        ax.set_title(f"Ridge hypergradient, n={N}, p={P}, {STEPS} GD steps")
        fig.tight_layout()
        fig.savefig(__file__.replace(".py", ".png"), dpi=100)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
