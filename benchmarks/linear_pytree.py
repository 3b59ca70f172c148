"""Pytree support in `js.linear` costs the flat-array path nothing: the solvers of
benchmarks/linear_cg.py (2-D Poisson, matrix-free, float64), timed in ONE process for the
jaxsolve before pytree support (a source tree given with --old, e.g. `git archive <base> |
tar -x -C /tmp/old`) and this one, interleaved (`_timing.compare_times`). Also the cost of
pytree vectors themselves: the same Poisson system split into a pytree of two half-grids.

Usage: python benchmarks/linear_pytree.py --old /tmp/old [--small]
"""

import collections
import importlib
import pathlib
import re
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _timing import compare_times, machine, markdown_table  # noqa: E402

SMALL = "--small" in sys.argv
N = 64 if SMALL else 256
RTOL = 1e-8
FIXED = 200  # iterations, for the per-iteration figure
REPEATS = 5 if SMALL else 25


def _load(path):
    """Import the jaxsolve under `path` (None: this tree) as its own module objects."""
    for name in [m for m in sys.modules if m == "jaxsolve" or m.startswith("jaxsolve.")]:
        del sys.modules[name]
    root = str(pathlib.Path(__file__).resolve().parent.parent) if path is None else path
    sys.path.insert(0, root)
    try:
        js = importlib.import_module("jaxsolve")
    finally:
        sys.path.remove(root)
    assert pathlib.Path(js.__file__).resolve().is_relative_to(pathlib.Path(root).resolve())
    return js


def _opcodes(js, solver, b):
    """The multiset of instructions in the optimised XLA program of a solve (a figure that
    the load of other processes cannot blur: the same instructions run at the same speed)."""
    f = jax.jit(lambda b: js.linear.solve(laplacian, b, solver(js), throw=False).value)
    text = f.lower(b).compile().as_text()
    return collections.Counter(m.group(1) for m in re.finditer(r"= \S+ (\w[\w-]*)\(", text))


def laplacian(u):
    p = jnp.pad(u, 1)
    return 4 * u - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]


def main():
    old_path = sys.argv[sys.argv.index("--old") + 1]
    versions = {"before": _load(old_path), "pytree": _load(None)}
    h = 1.0 / (N + 1)
    xs = jnp.arange(1, N + 1) * h
    b = (jnp.sin(np.pi * xs)[:, None] * jnp.sin(2 * np.pi * xs)[None, :] + 0.1 * xs[:, None]) * h**2

    def make(js, solver):
        @jax.jit
        def run(b):
            sol = js.linear.solve(laplacian, b, solver(js), throw=False)
            return sol.value, sol.stats["num_steps"]

        return run

    solvers = {
        "CG to rtol 1e-8": lambda js: js.linear.CG(tol=RTOL, max_steps=20_000),
        f"CG, {FIXED} its": lambda js: js.linear.CG(tol=1e-300, max_steps=FIXED),
        f"BiCGStab, {FIXED} its": lambda js: js.linear.BiCGStab(tol=1e-300, max_steps=FIXED),
        f"GMRES(20), {FIXED} its": lambda js: js.linear.GMRES(tol=1e-300, max_steps=FIXED),
    }
    rows = []
    for label, solver in solvers.items():
        fns = {v: make(js, solver) for v, js in versions.items()}
        its = {v: int(f(b)[1]) for v, f in fns.items()}
        same = bool(jnp.array_equal(fns["before"](b)[0], fns["pytree"](b)[0]))
        fns_value = {v: (lambda f: lambda b: f(b)[0])(f) for v, f in fns.items()}
        t = compare_times(fns_value, b, repeats=REPEATS)
        rows.append(
            [label, its["pytree"], 1e3 * t["before"], 1e3 * t["pytree"],
             t["pytree"] / t["before"], "bitwise" if same else "no"]
        )  # fmt: skip

    # The cost of pytree vectors: two independent Poisson systems, as one (2, N, N) array or
    # as a pytree {"a": (N, N), "b": (N, N)}: the same arithmetic, only the vector differs.
    js = versions["pytree"]
    b2 = jnp.stack([b, b[::-1]])
    stacked_mv = jax.vmap(laplacian)
    tree_mv = lambda v: {"a": laplacian(v["a"]), "b": laplacian(v["b"])}
    solver = js.linear.CG(tol=1e-300, max_steps=FIXED)
    flat = jax.jit(lambda b2: js.linear.solve(stacked_mv, b2, solver, throw=False).value)
    split = lambda b2: {"a": b2[0], "b": b2[1]}
    tree = jax.jit(lambda b2: js.linear.solve(tree_mv, split(b2), solver, throw=False).value)
    x_flat, x_tree = flat(b2), tree(b2)
    err = float(
        jnp.maximum(
            jnp.max(jnp.abs(x_flat[0] - x_tree["a"])), jnp.max(jnp.abs(x_flat[1] - x_tree["b"]))
        )
        / jnp.max(jnp.abs(x_flat))
    )
    t = compare_times({"flat": flat, "tree": tree}, b2, repeats=REPEATS)
    rows.append(
        [f"CG {FIXED} its on 2 systems: pytree {{a, b}} vs one (2, N, N) array", FIXED,
         1e3 * t["flat"], 1e3 * t["tree"], t["tree"] / t["flat"], f"max rel. diff {err:.1e}"]
    )  # fmt: skip

    # The compiled programs, instruction by instruction.
    hlo_rows = []
    extra = {
        "CG + Jacobi preconditioner": lambda js: js.linear.CG(
            tol=RTOL, preconditioner=js.linear.JacobiPreconditioner(4 * jnp.ones_like(b))
        ),
        "FlexibleCG": lambda js: js.linear.FlexibleCG(tol=RTOL),
        "Jacobi": lambda js: js.linear.Jacobi(tol=RTOL, diagonal=4 * jnp.ones_like(b)),
        "SOR(1.5)": lambda js: js.linear.SOR(omega=1.5, tol=RTOL),
    }
    for label, solver in {**solvers, **extra}.items():
        ops = {v: _opcodes(js, solver, b) for v, js in versions.items()}
        diff = {k: ops["pytree"][k] - ops["before"][k] for k in ops["before"] | ops["pytree"]}
        diff = {k: d for k, d in diff.items() if d} or "none"
        hlo_rows.append(
            [label, sum(ops["before"].values()), sum(ops["pytree"].values()),
             ops["before"]["fusion"], ops["pytree"]["fusion"], str(diff)]
        )  # fmt: skip

    print(f"\n2-D Poisson {N}x{N} (n = {N * N}), matrix-free, float64 — {machine()}\n")
    header = [
        "solve",
        "iterations",
        "before / array (ms)",
        "pytree / tree (ms)",
        "ratio",
        "same answer",
    ]
    print(markdown_table(header, rows))
    print("\nOptimised XLA programs, before vs with pytree support:\n")
    header = ["solve", "instructions before", "after", "fusions before", "after", "opcode diff"]
    print(markdown_table(header, hlo_rows))


if __name__ == "__main__":
    main()
