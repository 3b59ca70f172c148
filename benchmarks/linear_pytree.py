"""Pytree support in `js.linear` costs the flat-array path nothing: the solvers of
benchmarks/linear_cg.py (2-D Poisson, matrix-free, float64), timed in ONE process for the
jaxsolve before pytree support (a source tree given with --old, e.g. `git archive <base> |
tar -x -C /tmp/old`) and this one, interleaved (`_timing.compare_times`). Also the cost of
pytree vectors themselves: the same Poisson system split into a pytree of two half-grids.

Usage: python benchmarks/linear_pytree.py --old /tmp/old [--small]
"""

import importlib
import pathlib
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
        t = compare_times({v: (lambda f: lambda b: f(b)[0])(f) for v, f in fns.items()}, b)
        rows.append(
            [label, its["pytree"], 1e3 * t["before"], 1e3 * t["pytree"],
             t["pytree"] / t["before"], "yes" if same else "no"]
        )  # fmt: skip

    # The cost of pytree vectors: the same system as {"top": rows 0..N/2, "bottom": the rest}.
    js = versions["pytree"]
    half = N // 2
    split = lambda u: {"top": u[:half], "bottom": u[half:]}
    join = lambda v: jnp.concatenate([v["top"], v["bottom"]])
    tree_mv = lambda v: split(laplacian(join(v)))
    solver = js.linear.CG(tol=1e-300, max_steps=FIXED)
    flat = jax.jit(lambda b: js.linear.solve(laplacian, b, solver, throw=False).value)
    tree = jax.jit(lambda b: join(js.linear.solve(tree_mv, split(b), solver, throw=False).value))
    err = float(jnp.max(jnp.abs(flat(b) - tree(b))) / jnp.max(jnp.abs(flat(b))))
    t = compare_times({"flat": flat, "tree": tree}, b)
    rows.append(
        [f"CG {FIXED} its, pytree of 2 half-grids vs flat (same build)", FIXED,
         1e3 * t["flat"], 1e3 * t["tree"], t["tree"] / t["flat"], f"max rel. diff {err:.1e}"]
    )  # fmt: skip

    print(f"\n2-D Poisson {N}x{N} (n = {N * N}), matrix-free, float64 — {machine()}\n")
    header = ["solve", "iterations", "before (ms)", "pytree (ms)", "ratio", "bitwise equal"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
