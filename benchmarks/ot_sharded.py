"""The same Sinkhorn solve and gradient on 1, 2, 4 and 8 (simulated) CPU devices: equal results,
and memory per device.

    python benchmarks/ot_sharded.py [--n N]

`XLA_FLAGS=--xla_force_host_platform_device_count=8` is set before JAX starts. The points of
both clouds are sharded over a 1-D mesh (`NamedSharding(mesh, P("d", None))`); the program is
jitted once per layout and XLA's SPMD partitioner splits it. For each device count: the largest
difference from the one-device answer (potentials, `reg_cost`, its gradient in `x`), and the
per-device buffers of the compiled program (`memory_analysis()`: temporaries + arguments, per
device). Simulated devices share this machine's cores, so times say nothing about speed-up.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import jaxsolve as js  # noqa: E402

try:
    from _timing import machine, markdown_table
except ImportError:  # run from the repository root
    from benchmarks._timing import machine, markdown_table


def loss_fn(batch_size):
    def loss(x, y):
        geom = js.ot.PointCloud(x, y, epsilon=0.1, batch_size=batch_size)
        sol = js.ot.solve(geom, throw=False)  # float32 defaults
        return sol.reg_cost, (sol.f, sol.g, sol.result == js.RESULTS.successful)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1024)
    args = parser.parse_args(argv)
    n = args.n
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 3))
    y = jax.random.normal(jax.random.PRNGKey(1), (n, 3)) + 0.5
    rows = []
    t0 = time.perf_counter()
    for label, batch in (("dense", None), ("blockwise B=128", 128)):
        fn = loss_fn(batch)
        ref = None
        for k in (1, 2, 4, 8):
            mesh = Mesh(np.array(jax.devices()[:k]), ("d",))
            sh = NamedSharding(mesh, P("d", None))
            xs, ys = jax.device_put(x, sh), jax.device_put(y, sh)
            compiled = fn.lower(xs, ys).compile()
            mem = compiled.memory_analysis()
            per_device = (mem.temp_size_in_bytes + mem.argument_size_in_bytes) / 2**20
            out = jax.block_until_ready(compiled(xs, ys))
            start = time.perf_counter()
            out = jax.block_until_ready(compiled(xs, ys))
            t = time.perf_counter() - start
            (cost, (f, g, ok)), grad = out
            if ref is None:
                ref = (cost, f, g, grad)
            diff = lambda u, v: float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
            rows.append(
                [
                    label,
                    k,
                    bool(ok),
                    float(cost),
                    diff(cost, ref[0]),
                    max(diff(f, ref[1]), diff(g, ref[2])),
                    diff(grad, ref[3]),
                    float(jnp.max(jnp.abs(ref[3]))),
                    per_device,
                    t,
                ]
            )
            print(rows[-1], flush=True)
    header = [
        "geometry",
        "devices",
        "successful",
        "reg_cost",
        "|Δ cost|",
        "max |Δ f|, |Δ g|",
        "max |Δ grad|",
        "max |grad|",
        "MB / device",
        "s / value+grad",
    ]
    print(f"\n{machine()}; 8 simulated CPU devices; n = m = {n}, d = 3, ε = 0.1, float32\n")
    print(markdown_table(header, rows))
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
