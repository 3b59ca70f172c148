"""Bilevel optimisation: hypergradients and bilevel algorithms (js.bilevel)

A ridge regression with one regularisation weight per feature: the hypergradient of the
validation loss with respect to the weights, by three estimators, against the closed form; then
the outer problem solved by AID, ITD and the first-order penalty method. In float32, with the
default tolerances; the closed form is evaluated in float64 by NumPy.
"""

import time

import jax.numpy as jnp
import numpy as np
import optax

import jaxsolve as js

from . import table


def _inner(theta, w, data):
    x, t = data
    return 0.5 * jnp.sum((x @ w - t) ** 2) + 0.5 * jnp.sum(jnp.exp(theta) * w**2)


def _outer(theta, w, data):
    x, t = data
    return 0.5 * jnp.sum((x @ w - t) ** 2)


def run():
    rng = np.random.default_rng(0)
    n, p = 200, 20
    X, Xv = rng.normal(size=(n, p)), rng.normal(size=(100, p))
    w_true = rng.normal(size=p) * (np.arange(p) < 5)
    t = X @ w_true + 2.0 * rng.normal(size=n)
    yv = Xv @ w_true

    # the closed form, in float64: w = H⁻¹Xᵀt, d val/dθ = −e^θ ⊙ w ⊙ H⁻¹Xvᵀ(Xv w − yv)
    H = X.T @ X + np.eye(p)  # θ = 0
    w = np.linalg.solve(H, X.T @ t)
    exact = -w * np.linalg.solve(H, Xv.T @ (Xv @ w - yv))
    lr = 1.0 / np.linalg.eigvalsh(H)[-1]
    # log-weights are kept in [-5, 5] during the outer loop, so this inner step stays stable
    lr_outer = 1.0 / (np.linalg.eigvalsh(X.T @ X)[-1] + np.exp(5.0))

    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    train, val = (f32(X), f32(t)), (f32(Xv), f32(yv))
    theta = jnp.zeros(p)

    rows = []
    for name, est, solver in [
        ("Implicit(CG)", js.bilevel.Implicit(), js.LBFGS()),
        ("TruncatedNeumann(20)", js.bilevel.TruncatedNeumann(20, float(lr)), js.LBFGS()),
        ("Unrolled (300 GD steps)", js.bilevel.Unrolled(), js.GradientDescent(float(lr))),
    ]:
        hg = js.bilevel.hypergradient(
            _outer,
            _inner,
            theta,
            jnp.zeros(p),
            val,
            train,
            estimator=est,
            inner_solver=solver,
            inner_max_steps=300,
            throw=False,
        )
        err = np.linalg.norm(np.asarray(hg.grad) - exact) / np.linalg.norm(exact)
        rows.append([name, f"{err:.1e}"])
    print("Hypergradient of the validation loss (float32), relative error vs the closed form:")
    table(rows, ["estimator", "rel. error"])

    print("\nLearning the 20 regularisation weights (100 outer steps, Adam):")
    rows = []
    for name, alg in [
        ("AID", js.bilevel.AID()),
        ("ITD", js.bilevel.ITD(inner_steps=20, inner_lr=float(lr_outer))),
        (
            "Penalty",
            js.bilevel.Penalty(penalty=100.0, inner_solver=js.GradientDescent(float(lr_outer))),
        ),
    ]:
        t0 = time.perf_counter()
        sol = js.bilevel.solve(
            _outer,
            _inner,
            theta,
            jnp.zeros(p),
            algorithm=alg,
            optimiser=optax.adam(0.1),
            num_steps=100,
            outer_args=val,
            inner_args=train,
            throw=False,  # the table reports the result
        )
        loss = sol.metrics["outer_loss"]
        rows.append(
            [
                name,
                float(loss[0]),
                float(loss[-1]),
                js.RESULTS[sol.result] or "successful",
                f"{time.perf_counter() - t0:.1f}",
            ]
        )
    table(rows, ["algorithm", "val. loss, step 1", "step 100", "result", "seconds"])
