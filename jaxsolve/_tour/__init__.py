"""Sections of the tour (`python -m jaxsolve`). Each module `sN_name.py` has a docstring whose
first line is the section title and a `run()` that prints what it shows."""

import jax

jax.config.update("jax_enable_x64", True)


def table(rows: list[list], header: list[str]) -> None:
    """Print a small Markdown table."""
    cells = [header] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print(line(r))
