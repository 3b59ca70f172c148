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


def interleaved_times(fns: dict, *args, repeats: int = 5, slow: float = 10.0) -> dict:
    """Best wall time (s) of each `fn(*args)`, compilation excluded.

    For candidates that run for seconds (a slow baseline next to a fast solver): each is
    compiled ahead of time, then timed in `repeats` rounds of one call each, the order reversed
    every round, so a load drift from other processes falls on all candidates alike. A
    candidate whose call takes more than `slow` seconds is timed in the first round only."""
    compiled = {k: jax.jit(f).lower(*args).compile() for k, f in fns.items()}
    best = {}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            if r > 0 and best[name] > slow:
                continue
            start = time.perf_counter()
            jax.block_until_ready(compiled[name](*args))
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
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
