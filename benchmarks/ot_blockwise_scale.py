"""Blockwise Sinkhorn at n = m = 100 000 (float32, CPU): time per sweep and peak memory, next to
the dense n = 10 000 figure and a bare JAX loop (the floor) doing the same arithmetic.

    python benchmarks/ot_blockwise_scale.py [--rows R] [--full]

Each configuration runs in a subprocess of its own, so its peak resident memory
(`resource.getrusage(...).ru_maxrss`) is its own; the XLA buffers a program needs are also read
from the compiled program (`memory_analysis()`: arguments + temporaries), which needs no run.

- Blockwise (`PointCloud(x, y, batch_size=B)`): one Sinkhorn sweep is two log-domain passes,
  `LSE_j(g_j − C_ij)/ε` over rows and the same over columns, the cost recomputed block by
  block. jaxsolve's sweep is timed through the geometry primitives its log-domain sweep calls
  (`geom.lse`, the exact calls of `Sinkhorn`'s sweep); the floor is the same two passes
  written directly with `lax.map` over blocks. A full sweep of 100 000 × 100 000 is 2·10^10
  exponentials: on a shared 2-core machine that is minutes, so by default the sweep is timed
  on a slab of `R` source rows against all 100 000 targets (the work of a blockwise sweep is
  exactly linear in the number of source rows: `n/R` slabs make the full sweep) and the
  full-size time is that × n/R; `--full` times the full 100 000 × 100 000 sweep instead.
- Dense (n = m = 10 000, kernel mode, the default): a sweep is two kernel matrix–vector
  products; jaxsolve's full solve (`max_steps` sweeps, no acceleration, no annealing) against a
  bare `fori_loop` of `u = a/(K v)`, `v = b/(Kᵀ u)`. Memory: the n × n kernel (and, on CPU,
  its stored transpose: see `Sinkhorn`'s docstring).
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).parent
N_BIG, N_DENSE, D, EPS, BATCH = 100_000, 10_000, 2, 0.1, 256


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mem_mb(compiled):
    m = compiled.memory_analysis()
    if m is None:
        return float("nan")
    return (m.temp_size_in_bytes + m.argument_size_in_bytes) / 2**20


def _time(compiled, *args, repeats):
    import jax

    jax.block_until_ready(compiled(*args))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - t)
    return best


def worker(kind, n, m, repeats):
    import jax
    import jax.numpy as jnp

    import jaxsolve as js

    x = jax.random.normal(jax.random.PRNGKey(0), (n, D), jnp.float32)
    y = jax.random.normal(jax.random.PRNGKey(1), (m, D), jnp.float32) + 1.0
    f0, g0 = jnp.zeros(n, jnp.float32), jnp.zeros(m, jnp.float32)
    a, b = jnp.full(n, 1.0 / n, jnp.float32), jnp.full(m, 1.0 / m, jnp.float32)
    eps = jnp.float32(EPS)

    if kind == "jaxsolve-blockwise":

        def fn(x, y, f, g):  # one sweep: the two passes of Sinkhorn's log-domain sweep
            geom = js.ot.PointCloud(x, y, epsilon=eps, batch_size=BATCH)
            f = eps * jnp.log(a) - eps * geom.lse(g / eps, eps, 1)
            g = eps * jnp.log(b) - eps * geom.lse(f / eps, eps, 0)
            return f, g

        args, sweeps = (x, y, f0, g0), 1
    elif kind == "floor-blockwise":

        def lse_blocks(p, q, h):  # LSE_j(h_j − |p_i − q_j|²/ε) for all i, block by block
            k = p.shape[0]
            nb = -(-k // BATCH)
            pad = nb * BATCH - k
            pb = jnp.concatenate([p, jnp.zeros((pad, D), p.dtype)]).reshape(nb, BATCH, D)
            qq = jnp.sum(q * q, 1)

            def one(blk):
                c = jnp.sum(blk * blk, 1)[:, None] + qq[None, :] - 2 * blk @ q.T
                z = h[None, :] - c / eps
                mx = jnp.max(z, 1, keepdims=True)
                return mx[:, 0] + jnp.log(jnp.sum(jnp.exp(z - mx), 1))

            return jax.lax.map(one, pb).reshape(-1)[:k]

        def fn(x, y, f, g):
            f = eps * jnp.log(a) - eps * lse_blocks(x, y, g / eps)
            g = eps * jnp.log(b) - eps * lse_blocks(y, x, f / eps)
            return f, g

        args, sweeps = (x, y, f0, g0), 1
    elif kind == "jaxsolve-dense":
        sweeps = 50
        solver = js.ot.Sinkhorn(
            tol=1e-30, max_steps=sweeps, check_every=10, epsilon_scaling=None, acceleration=None
        )

        def fn(x, y):
            geom = js.ot.PointCloud(x, y, epsilon=eps)
            return js.ot.solve(geom, solver=solver, throw=False).f

        args = (x, y)
    elif kind == "floor-dense":
        sweeps = 50

        def fn(x, y):
            C = jnp.sum(x * x, 1)[:, None] + jnp.sum(y * y, 1)[None, :] - 2 * x @ y.T
            K = jnp.exp(-C / eps)

            def body(_, uv):
                u, v = uv
                u = a / (K @ v)
                return u, b / (K.T @ u)

            return jax.lax.fori_loop(0, sweeps, body, (a, b))[0]

        args = (x, y)
    else:
        raise ValueError(kind)
    compiled = jax.jit(fn).lower(*args).compile()
    base = _rss_mb()
    t = _time(compiled, *args, repeats=repeats)
    return {
        "kind": kind,
        "n": n,
        "m": m,
        "s_per_sweep": t / sweeps,
        "rss_base_mb": base,
        "rss_peak_mb": _rss_mb(),
        "xla_mb": _mem_mb(compiled),
    }


def compiled_only(kind, n):
    """XLA's buffers for a program at size n × n, from the compiled program alone (no run)."""
    import jax
    import jax.numpy as jnp

    import jaxsolve as js

    x = jax.ShapeDtypeStruct((n, D), jnp.float32)
    batch = BATCH if kind == "blockwise" else None
    solver = js.ot.Sinkhorn(max_steps=100)

    def fn(x, y):
        return js.ot.solve(js.ot.PointCloud(x, y, EPS, batch_size=batch), solver=solver).f

    return _mem_mb(jax.jit(fn).lower(x, x).compile())


def run(kind, n, m, repeats=3):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent)] + sys.path))
    cmd = [sys.executable, __file__, "--worker", kind, str(n), str(m), str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3000)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5_000, help="source rows of the timed slab")
    parser.add_argument("--full", action="store_true", help="time the full 100k × 100k sweep")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--compiled", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, n, m, repeats = args.worker
        print(json.dumps(worker(kind, int(n), int(m), int(repeats))))
        return
    if args.compiled:
        print(json.dumps(compiled_only(args.compiled[0], int(args.compiled[1]))))
        return

    import jax

    try:
        from _timing import machine, markdown_table
    except ImportError:
        from benchmarks._timing import machine, markdown_table

    t0 = time.perf_counter()
    rows_n = N_BIG if args.full else args.rows
    scale = N_BIG / rows_n
    res = {}
    # interleaved: floor, jaxsolve, jaxsolve, floor (best of each), so load drift hits both
    for kind in ("floor-blockwise", "jaxsolve-blockwise", "floor-dense", "jaxsolve-dense"):
        n = N_DENSE if "dense" in kind else rows_n
        m = N_DENSE if "dense" in kind else N_BIG
        res[kind] = run(kind, n, m, repeats=1 if "blockwise" in kind else 3)
        print(res[kind], flush=True)
    mem_block = compiled_only("blockwise", N_BIG)
    mem_dense_big = compiled_only("dense", N_BIG)
    mem_dense = compiled_only("dense", N_DENSE)

    def row(label, kind, n_label, s, xla):
        r = res[kind]
        return [label, n_label, s, xla, r["rss_peak_mb"], r["rss_peak_mb"] - r["rss_base_mb"]]

    fb, jb = res["floor-blockwise"], res["jaxsolve-blockwise"]
    fd, jd = res["floor-dense"], res["jaxsolve-dense"]
    table = markdown_table(
        ["", "n = m", "s / sweep", "XLA buffers (MB)", "peak RSS (MB)", "RSS growth (MB)"],
        [
            row(
                f"jaxsolve blockwise (B = {BATCH})",
                "jaxsolve-blockwise",
                "100 000",
                jb["s_per_sweep"] * scale,
                mem_block,
            ),
            row(
                "floor blockwise (bare lax.map)",
                "floor-blockwise",
                "100 000",
                fb["s_per_sweep"] * scale,
                float("nan"),
            ),
            row(
                "jaxsolve dense (kernel mode)",
                "jaxsolve-dense",
                "10 000",
                jd["s_per_sweep"],
                mem_dense,
            ),
            row(
                "floor dense (two K-vector products)",
                "floor-dense",
                "10 000",
                fd["s_per_sweep"],
                float("nan"),
            ),
        ],
    )
    how = "full sweep" if args.full else f"{rows_n} × {N_BIG} slab × {scale:g}"
    print(f"\n{machine()}; float32\n\n{table}\n")
    print(
        f"blockwise: {how}; jaxsolve / floor = {jb['s_per_sweep'] / fb['s_per_sweep']:.2f}; "
        f"dense: jaxsolve / floor = {jd['s_per_sweep'] / fd['s_per_sweep']:.2f}\n"
        f"XLA buffers of the full 100 000-point solve: blockwise {mem_block:.0f} MB; dense "
        f"would need {mem_dense_big / 1024:.0f} GB\nRSS of the slab runs: the 100 000 × "
        f"{rows_n} slab holds the same per-block buffers as the full solve (O((n + m)·B))\n"
        f"{time.perf_counter() - t0:.0f} s"
    )
    del jax


if __name__ == "__main__":
    main()
