"""Sections of the tour (`python -m jaxsolve`). Each module `sN_name.py` has a docstring whose
first line is the section title and a `run()` that prints what it shows.

The tour runs in float32, JAX's default and the dtype users train in. A section that needs
float64 says why and enables it for itself only (`with jax.enable_x64(True):`)."""

import time

import jax


def table(rows: list[list], header: list[str]) -> None:
    """Print a small Markdown table."""
    cells = [header] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print(line(r))


def timed(fn, *args):
    """`(fn(*args), seconds, compiled)` for a `jax.jit`-ed `fn`: compiled ahead of time (nothing
    is run twice), then one call timed. Reuse `compiled` for further calls with arguments of the
    same shapes: an ahead-of-time compilation is not in `fn`'s cache, so calling `fn` again
    would compile the same program a second time."""
    compiled = fn.lower(*args).compile()
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, time.perf_counter() - start, compiled
