"""Implicit differentiation: the gradient of a validation loss through a ridge-regression solve

A regularised regression is fitted by `js.minimise`; the gradient of the validation loss with
respect to the log regularisation weight comes from the implicit function theorem (one linear solve
with the Hessian), from unrolling the inner iterations, and from the closed form. Built-in data: a
synthetic regression problem drawn from a fixed seed.
"""

import time

import jax
import jax.numpy as jnp
import lineax as lx

import jaxsolve as js

from . import table


def inner(w, args):
    log_lam, X, y = args
    return 0.5 * jnp.mean((X @ w - y) ** 2) + 0.5 * jnp.exp(log_lam) * jnp.sum(w**2)


def val(w, Xv, yv):
    return 0.5 * jnp.mean((Xv @ w - yv) ** 2)


def implicit(t, data):
    X, y, Xv, yv = data
    sol = js.minimise(
        inner,
        jnp.zeros(X.shape[1]),
        (t, X, y),
        tol=1e-10,
        adjoint=js.ImplicitAdjoint(lx.CG(rtol=1e-10, atol=1e-10)),
    )
    return val(sol.value, Xv, yv), sol.stats["num_steps"]


def unrolled(t, data):
    X, y, Xv, yv = data
    lr = 1.0 / (jnp.linalg.norm(X, 2) ** 2 / X.shape[0] + 1.0)
    sol = js.minimise(
        inner,
        jnp.zeros(X.shape[1]),
        (t, X, y),
        solver=js.GradientDescent(lr),
        tol=1e-300,
        max_steps=500,
        adjoint=js.UnrollAdjoint(),
        throw=False,
    )
    return val(sol.value, Xv, yv), sol.stats["num_steps"]


def closed(t, data):
    X, y, Xv, yv = data
    n, p = X.shape
    w = jnp.linalg.solve(X.T @ X / n + jnp.exp(t) * jnp.eye(p), X.T @ y / n)
    return val(w, Xv, yv), jnp.array(0, jnp.int32)


def run() -> None:
    n, nv, p = 400, 200, 50
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    w_true = jax.random.normal(k1, (p,))
    X, Xv = jax.random.normal(k2, (n, p)), jax.random.normal(k3, (nv, p))
    data = (X, X @ w_true + 0.5 * jax.random.normal(k4, (n,)), Xv, Xv @ w_true)
    methods = {
        "implicit (L-BFGS, CG adjoint)": implicit,
        "unrolled (500 GD steps)": unrolled,
        "closed form": closed,
    }
    theta = jnp.array(-1.0)
    g_ref = float(jax.grad(lambda t: closed(t, data)[0])(theta))
    rows, grads = [], {}
    for name, f in methods.items():
        print(f"  compiling and running: {name} ...", flush=True)
        grads[name] = g_fn = jax.jit(jax.value_and_grad(f, has_aux=True))
        jax.block_until_ready(g_fn(theta, data))
        start = time.perf_counter()
        (loss, steps), g = jax.block_until_ready(g_fn(theta, data))
        ms = (time.perf_counter() - start) * 1e3
        rel = abs(float(g) - g_ref) / abs(g_ref)
        steps = int(steps) or "-"
        rows.append([name, steps, float(loss), float(g), rel, f"{ms:.2f}"])
    table(rows, ["method", "inner steps", "val. loss", "d loss / d log λ", "rel. error", "ms"])

    # A few outer steps of gradient descent on log λ, by implicit differentiation.
    step, t = grads["implicit (L-BFGS, CG adjoint)"], theta
    for _ in range(15):
        (loss, _), g = step(t, data)
        t = t - 2.0 * g
    print(
        f"15 outer gradient steps on log λ: validation loss {float(closed(theta, data)[0]):.4f}"
        f" -> {float(loss):.4f} (λ = {float(jnp.exp(t)):.3g})"
    )
