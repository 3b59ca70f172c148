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
    """Median wall time (s) of each `fn(*args)`, timed round-robin after one warm-up call each,
    so that load from other processes falls on every candidate alike."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


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
