"""Implicit differentiation: the gradient of a validation loss through a ridge-regression solve

A regularised regression is fitted by `js.minimise`; the gradient of the validation loss with
respect to the log regularisation weight comes from the implicit function theorem (one linear solve
with the Hessian), from unrolling the inner iterations, and from the closed form, all in float32,
each against the closed form evaluated in float64 by NumPy. Built-in data: a synthetic regression
problem drawn from a fixed seed.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxsolve as js

from . import table, timed


def inner(w, args):
    log_lam, X, y = args
    return 0.5 * jnp.mean((X @ w - y) ** 2) + 0.5 * jnp.exp(log_lam) * jnp.sum(w**2)


def val(w, Xv, yv):
    return 0.5 * jnp.mean((Xv @ w - yv) ** 2)


def implicit(t, data):
    X, y, Xv, yv = data
    # default tolerance (1e-4 on the gradient norm in float32) and default adjoint (CG)
    sol = js.minimise(inner, jnp.zeros(X.shape[1]), (t, X, y))
    return val(sol.value, Xv, yv), sol.stats["num_steps"]


def unrolled(t, data):
    X, y, Xv, yv = data
    lr = 1.0 / (jnp.linalg.norm(X, 2) ** 2 / X.shape[0] + 1.0)
    sol = js.minimise(
        inner,
        jnp.zeros(X.shape[1]),
        (t, X, y),
        solver=js.GradientDescent(lr),
        tol=1e-30,  # never reached: exactly 500 steps
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


def reference_grad(t, data):
    """d val / d log λ in float64 (NumPy): w = H⁻¹ Xᵀy / n with H = XᵀX / n + λI, and
    dw/dt = −λ H⁻¹ w, so the derivative is −λ ⟨H⁻¹ ∇_w val, w⟩."""
    X, y, Xv, yv = (np.asarray(a, np.float64) for a in data)
    n, p = X.shape
    lam = np.exp(float(t))
    H = X.T @ X / n + lam * np.eye(p)
    w = np.linalg.solve(H, X.T @ y / n)
    grad_w = Xv.T @ (Xv @ w - yv) / Xv.shape[0]
    return -lam * np.linalg.solve(H, grad_w) @ w


def run() -> None:
    n, nv, p = 400, 200, 50
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=p)
    X, Xv = rng.normal(size=(n, p)), rng.normal(size=(nv, p))
    data = tuple(
        jnp.asarray(a, jnp.float32)
        for a in (X, X @ w_true + 0.5 * rng.normal(size=n), Xv, Xv @ w_true)
    )
    methods = {
        "implicit (L-BFGS, CG adjoint)": implicit,
        "unrolled (500 GD steps)": unrolled,
        "closed form (float32)": closed,
    }
    theta = jnp.float32(-1.0)
    g_ref = reference_grad(theta, data)
    rows, grads = [], {}
    for name, f in methods.items():
        print(f"  compiling and running: {name} ...", flush=True)
        g_fn = jax.jit(jax.value_and_grad(f, has_aux=True))
        ((loss, steps), g), seconds, grads[name] = timed(g_fn, theta, data)
        ms = seconds * 1e3
        rel = abs(float(g) - g_ref) / abs(g_ref)
        steps = int(steps) or "-"
        rows.append([name, steps, float(loss), float(g), rel, f"{ms:.2f}"])
    print(f"float32; reference d loss / d log λ (closed form, float64): {g_ref:.6g}")
    table(rows, ["method", "inner steps", "val. loss", "d loss / d log λ", "rel. error", "ms"])

    # A few outer steps of gradient descent on log λ, by implicit differentiation.
    step, t = grads["implicit (L-BFGS, CG adjoint)"], float(theta)  # compiled above
    for _ in range(15):
        (loss, _), g = step(jnp.float32(t), data)
        t = t - 2.0 * float(g)
    print(
        f"15 outer gradient steps on log λ: validation loss {float(rows[0][2]):.4f}"
        f" -> {float(loss):.4f} (λ = {np.exp(t):.3g})"
    )
