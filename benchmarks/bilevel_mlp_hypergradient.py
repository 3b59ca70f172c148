"""Hypergradient through an MLP inner problem, float32, default settings.

Inner: fit an equinox MLP (`eqx.partition`: the inner unknowns are its weights, a pytree) by
`js.minimise` with its defaults (L-BFGS, `tol` the float32 default, `max_steps` 1000):

    G(θ, p) = ½ mean((MLP_p(x) − y)²) + ½ Σ_l exp(θ_l) ‖p_l‖²      (one log-penalty per layer)

Outer: the validation loss ½ mean((MLP_p*(x_v) − y_v)²), differentiated with respect to θ by the
two paths users take, both with default settings:

- `js.bilevel.hypergradient(outer, inner, θ, p0, val, train)` (estimator `Implicit()`);
- `jax.grad` of the validation loss through `js.minimise` (its default `ImplicitAdjoint()`).

Yardstick: the inner solve alone (the same `js.minimise` call, jitted, warm). Figures: time per
hypergradient / time per inner solve (target ≤ 2), and peak memory / the inner solve's (target
≤ 3), by XLA's compiled memory analysis (arguments + outputs + temporaries) and, each program in
a fresh subprocess, by the process's peak resident set size above the interpreter's.

Usage: python benchmarks/bilevel_mlp_hypergradient.py [--sizes 1e4,1e5,1e6] [--repeats 5]
       [--out benchmarks/RESULTS-bilevel-scale.md]
"""

import argparse
import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import jaxsolve as js

try:
    from _timing import machine, markdown_table
except ImportError:  # run from the repository root
    from benchmarks._timing import machine, markdown_table

D_IN, DEPTH = 16, 2
LAM = 1e-2
LOSS = jnp.mean
# Samples per size: enough that the fit is a well-posed regression, few enough that a 10⁶-
# parameter solve runs on a shared 2-core CPU.
N_TRAIN = {10_000: 512, 100_000: 256, 1_000_000: 128}


def width_for(size: int) -> int:
    # parameters of MLP(D_IN, 1, w, DEPTH): (D_IN + 1) w + (w + 1) w + (w + 1)
    a, b, c = 1.0, D_IN + 3.0, 1.0 - size
    return int(round((-b + (b * b - 4 * a * c) ** 0.5) / (2 * a)))


def setup(size: int, lam: float = LAM):
    width = width_for(size)
    n = N_TRAIN.get(size, 256)
    kx, kv, km, kt = jax.random.split(jax.random.PRNGKey(0), 4)
    model = eqx.nn.MLP(D_IN, 1, width, DEPTH, activation=jnp.tanh, key=km)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    teacher = eqx.nn.MLP(D_IN, 1, 32, DEPTH, activation=jnp.tanh, key=kt)

    def data(k, m):
        x = jax.random.normal(k, (m, D_IN))
        return x, jax.vmap(teacher)(x)

    train, val = data(kx, n) + (params,), data(kv, n)
    theta = jnp.full((len(jax.tree_util.tree_leaves(params)),), jnp.log(lam))
    return static, params, theta, train, val


def make_fns(static):
    """The objectives and the three programs (module-level functions of the data only)."""

    def predict(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    def inner(theta, p, data):
        x, y, anchor = data
        leaves = zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(anchor))
        penalty = sum(jnp.exp(t) * jnp.sum((w - w0) ** 2) for t, (w, w0) in zip(theta, leaves))
        return 0.5 * LOSS((predict(p, x) - y) ** 2) + 0.5 * penalty

    def outer(theta, p, data):
        x, y = data
        return 0.5 * jnp.mean((predict(p, x) - y) ** 2)

    def fit(theta, p0, train):
        return js.minimise(lambda p, a: inner(a[0], p, a[1]), p0, (theta, train))

    def solve(theta, p0, train, val):
        return fit(theta, p0, train).value

    def hypergradient(theta, p0, train, val):
        return js.bilevel.hypergradient(outer, inner, theta, p0, val, train).grad

    def grad_through_minimise(theta, p0, train, val):
        return jax.grad(lambda th: outer(th, fit(th, p0, train).value, val))(theta)

    def stats(theta, p0, train, val):
        hg = js.bilevel.hypergradient(outer, inner, theta, p0, val, train, throw=False)
        return {
            "inner_steps": hg.inner.stats["num_steps"],
            "inner_error": hg.inner.stats["error"],
            "adjoint_steps": hg.stats.get("adjoint_num_steps", jnp.array(-1)),
            "result": hg.result._value,  # noqa
        }

    return {
        "solve": solve,
        "hypergradient": hypergradient,
        "grad through minimise": grad_through_minimise,
    }, stats


def memory_of(compiled) -> float:
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes) / 2**20


def run_size(size: int, repeats: int) -> dict:
    import time

    static, params, theta, train, val = setup(size)
    fns, stats = make_fns(static)
    args = (theta, params, train, val)
    out = {"size": sum(x.size for x in jax.tree_util.tree_leaves(params))}
    compiled = {}
    for name, f in fns.items():
        t0 = time.perf_counter()
        compiled[name] = jax.jit(f).lower(*args).compile()
        out[f"compile {name}"] = time.perf_counter() - t0
        out[f"mem {name}"] = memory_of(compiled[name])
    st = jax.jit(stats)(*args)
    out.update({k: float(v) for k, v in st.items()})
    # Interleaved: one call of each program per round, the order reversed every round.
    times = {k: [] for k in fns}
    names = list(fns)
    for name in names:  # warm
        jax.block_until_ready(compiled[name](*args))
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[name](*args))
            times[name].append(time.perf_counter() - t0)
    for name in names:
        out[f"time {name}"] = float(np.median(times[name]))
    g1 = compiled["hypergradient"](*args)
    g2 = compiled["grad through minimise"](*args)
    out["paths agree (rel)"] = float(jnp.linalg.norm(g1 - g2) / jnp.linalg.norm(g1))
    return out


def rss_child(size: int, program: str) -> float:
    """Peak RSS (MiB) of a fresh process that compiles and runs one program once, minus that of
    a process that sets the problem up and compiles nothing."""
    here = os.path.dirname(os.path.abspath(__file__))
    run = "" if program == "" else f"jax.block_until_ready(jax.jit(fns[{program!r}])(*args));"
    code = (
        f"import sys, resource, jax; sys.path.insert(0, {here!r});"
        "import bilevel_mlp_hypergradient as b;"
        f"static, params, theta, train, val = b.setup({size}); fns, _ = b.make_fns(static);"
        "args = (theta, params, train, val);"
        f"{run}"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1e4,1e5,1e6")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--json", default=None)
    a = parser.parse_args()
    rows = []
    for s in a.sizes.split(","):
        size = int(float(s))
        r = run_size(size, a.repeats)
        if not a.no_rss:
            base = rss_child(size, "")
            for name in ("solve", "hypergradient", "grad through minimise"):
                r[f"rss {name}"] = rss_child(size, name) - base
        print(json.dumps(r), flush=True)
        rows.append(r)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    table = []
    for r in rows:
        ts = r["time solve"]
        row = [
            f"{r['size']:,}",
            f"{int(r['inner_steps'])}",
            f"{int(r['adjoint_steps'])}",
            f"{ts * 1e3:.0f}",
            f"{r['time hypergradient'] * 1e3:.0f} ({r['time hypergradient'] / ts:.2f}×)",
            f"{r['time grad through minimise'] * 1e3:.0f} "
            f"({r['time grad through minimise'] / ts:.2f}×)",
            f"{r['mem solve']:.1f}",
            f"{r['mem hypergradient']:.1f} ({r['mem hypergradient'] / r['mem solve']:.2f}×)",
            f"{r['mem grad through minimise']:.1f} "
            f"({r['mem grad through minimise'] / r['mem solve']:.2f}×)",
        ]
        if "rss solve" in r:
            row.append(
                f"{r['rss solve']:.0f} / {r['rss hypergradient']:.0f} / "
                f"{r['rss grad through minimise']:.0f}"
            )
        table.append(row)
    header = [
        "parameters",
        "inner L-BFGS steps",
        "adjoint CG steps",
        "inner solve (ms)",
        "hypergradient (ms, × solve)",
        "jax.grad through minimise (ms, × solve)",
        "solve memory (MiB)",
        "hypergradient memory (MiB, × solve)",
        "jax.grad memory (MiB, × solve)",
    ]
    if table and len(table[0]) > len(header):
        header.append("peak RSS above setup, solve / hypergradient / jax.grad (MiB)")
    print(f"\nMLP hypergradient, float32, default settings; {machine()}\n")
    print(markdown_table(header, table))


if __name__ == "__main__":
    main()
