"""Per-feature ridge hypergradient with default settings: jaxsolve vs JAXopt's L-BFGS with its
implicit differentiation, in float32 and float64.

Inner: w*(θ) = argmin ½‖Xw − t‖² + ½ Σ_j exp(θ_j) w_j²  (train n = 1500, p = 300, one log-penalty
per feature). Outer: ½‖X_v w*(θ) − t_v‖² (validation n = 500). The problem and data are
`bilevel_ridge_hypergradient.py`'s. Closed form (float64, normal equations solved directly):
∇θ = −e^θ ⊙ w* ⊙ H⁻¹ X_vᵀ(X_v w* − t_v), H = XᵀX + diag(e^θ).

Side by side in one process, for each dtype, the same inner tolerance on ‖∇_w G‖₂: the one
`js.bilevel.hypergradient` takes by default (1e-6 in float64; in float32 1e-6 ‖∇_w G(θ, 0)‖₂,
here 1.5e-2, since an absolute 1e-4 is out of float32's reach at this loss scale):

- jaxsolve: `js.bilevel.hypergradient(outer, inner, θ, w0, val, train)`, all defaults (L-BFGS
  inner solver, `Implicit()`: CG on Hessian-vector products), and `jax.grad` of the validation
  loss through `js.minimise(..., tol=tol)` (its default `ImplicitAdjoint()`);
- JAXopt: `jax.grad` through `jaxopt.LBFGS(fun, tol=..., implicit_diff=True).run(...)`, with its
  default implicit solve (`solve_normal_cg`: CG on the normal equations, jax.scipy's tolerance)
  and with `implicit_diff_solve=solve_cg` (plain CG).

Usage: python benchmarks/bilevel_ridge_vs_jaxopt.py [--repeats 15]
"""

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jaxopt  # noqa: E402

import jaxsolve as js  # noqa: E402
from jaxsolve.bilevel._problem import default_inner_tol  # noqa: E402

try:
    from _timing import compare_times, machine, markdown_table
except ImportError:  # run from the repository root
    from benchmarks._timing import compare_times, machine, markdown_table

N, P, NV = 1500, 300, 500


def data():
    """`bilevel_ridge_hypergradient.py`'s problem: sparse truth, noisy targets, penalties
    around 10 (float64)."""
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.PRNGKey(0), 5)
    X = jax.random.normal(k1, (N, P))
    Xv = jax.random.normal(k2, (NV, P))
    w_true = jax.random.normal(k3, (P,)) * (jax.random.uniform(k4, (P,)) < 0.3)
    t = X @ w_true + 0.5 * jax.random.normal(k5, (N,))
    theta = jnp.log(jnp.full((P,), 10.0)) + 0.5 * jax.random.normal(k4, (P,))
    return theta, (X, t), (Xv, Xv @ w_true)


def inner(th, w, data):
    x, y = data
    return 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * jnp.sum(jnp.exp(th) * w**2)


def outer(th, w, data):
    x, y = data
    return 0.5 * jnp.sum((x @ w - y) ** 2)


@jax.jit
def closed_form(th, train, val):
    (X, t), (Xv, tv) = train, val
    H = X.T @ X + jnp.diag(jnp.exp(th))
    w = jnp.linalg.solve(H, X.T @ t)
    v = jnp.linalg.solve(H, Xv.T @ (Xv @ w - tv))
    return -jnp.exp(th) * w * v


def programs(tol):
    def js_hypergradient(th, train, val):
        return js.bilevel.hypergradient(outer, inner, th, jnp.zeros_like(th), val, train).grad

    def js_grad_minimise(th, train, val):
        def loss(th):
            fit = lambda w, a: inner(a[0], w, a[1])
            w = js.minimise(fit, jnp.zeros_like(th), (th, train), tol=tol).value
            return outer(th, w, val)

        return jax.grad(loss)(th)

    def jaxopt_grad(solve):
        kw = {} if solve is None else {"implicit_diff_solve": solve}
        solver = jaxopt.LBFGS(
            fun=lambda w, th, train: inner(th, w, train), tol=tol, implicit_diff=True, **kw
        )

        def f(th, train, val):
            def loss(th):
                w = solver.run(jnp.zeros_like(th), th, train).params
                return outer(th, w, val)

            return jax.grad(loss)(th)

        return f

    return {
        "jaxsolve hypergradient (defaults)": js_hypergradient,
        "jaxsolve jax.grad through minimise (same tol)": js_grad_minimise,
        "JAXopt LBFGS implicit (default solve_normal_cg)": jaxopt_grad(None),
        "JAXopt LBFGS implicit (solve_cg)": jaxopt_grad(jaxopt.linear_solve.solve_cg),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    a = parser.parse_args()
    theta, train, val = data()
    exact = closed_form(theta, train, val)
    rows = []
    for dtype in (jnp.float32, jnp.float64):
        cast = lambda t: jax.tree_util.tree_map(lambda x: x.astype(dtype), t)
        args = (cast(theta), cast(train), cast(val))
        # The inner tolerance js.bilevel.hypergradient takes by default, given to all.
        tol = float(default_inner_tol(inner, args[0], jnp.zeros_like(args[0]), args[1]))
        print(f"{jnp.dtype(dtype).name}: inner tol {tol:.3g}", flush=True)
        fns = {k: jax.jit(f) for k, f in programs(tol).items()}
        times = compare_times(fns, *args, repeats=a.repeats)
        ref = times["JAXopt LBFGS implicit (default solve_normal_cg)"]
        for name, f in fns.items():
            g = f(*args)
            assert g.dtype == dtype, (name, g.dtype)
            err = float(jnp.linalg.norm(g.astype(jnp.float64) - exact) / jnp.linalg.norm(exact))
            rows.append(
                [jnp.dtype(dtype).name, name, times[name] * 1e3, times[name] / ref, f"{err:.1e}"]
            )
            print(rows[-1], flush=True)
    print(
        f"\nPer-feature ridge hypergradient, n = {N}, p = {P}, inner tol = jaxsolve's default "
        f"for the dtype (both libraries); {machine()}\n"
    )
    print(
        markdown_table(
            [
                "dtype",
                "method",
                "ms / hypergradient",
                "× JAXopt default",
                "rel. error (f64 closed form)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
