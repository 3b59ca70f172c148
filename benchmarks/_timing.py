"""Shared helpers for the benchmark scripts: timing, Markdown tables, machine description."""

import platform
import statistics
import time

import jax


def median_time(fn, *args, repeats: int = 10, warmup: int = 1) -> float:
    """Median wall time in seconds of `fn(*args)` after `warmup` calls (compilation excluded)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare_times(fns: dict, *args, repeats: int = 15) -> dict:
    """Median wall time (s) of each `fn(*args)`, compilation excluded.

    Each candidate is timed in a block of `repeats` calls after a warm-up, in two passes in
    opposite orders, and keeps the better of its two medians: a load ramp from other processes
    then falls on the candidates alike, and a fast call is never timed right after a
    multi-second one (which measurably slows it on these machines)."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    best = {}
    for order in (list(fns), list(fns)[::-1]):
        for name in order:
            t = median_time(fns[name], *args, repeats=repeats, warmup=1)
            best[name] = min(best.get(name, float("inf")), t)
    return best


def machine() -> str:
    import os

    return (
        f"{os.cpu_count()}-core {platform.machine()} CPU ({platform.processor() or 'unknown'}), "
        f"no GPU, jax {jax.__version__}, backend {jax.default_backend()}"
    )


def markdown_table(header: list[str], rows: list[list]) -> str:
    fmt = lambda c: f"{c:.4g}" if isinstance(c, float) else str(c)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
