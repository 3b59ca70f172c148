r"""jaxsolve on several hosts: a Sinkhorn solve and its gradient under `jax.distributed`.

Every process of a multi-host (multi-controller) JAX program runs this same script. Here the
"hosts" are processes on one machine, each with a few simulated CPU devices; the code is the
one you would run on a cluster of GPU or TPU hosts (there, pass `--devices-per-process 0` to
use the real devices and leave out `--coordinator`: `jax.distributed.initialize()` then finds
the cluster from its environment, e.g. SLURM or a Cloud TPU pod).

    # all processes from one command (they are launched on a free localhost port):
    python notebooks/multihost_sinkhorn.py --launch 2 --devices-per-process 2

    # or one process per terminal, the same coordinator address in each:
    python notebooks/multihost_sinkhorn.py --process-id 0 --num-processes 2 \
        --coordinator localhost:12355
    python notebooks/multihost_sinkhorn.py --process-id 1 --num-processes 2 \
        --coordinator localhost:12355

What it does:

1. `jax.distributed.initialize` joins the processes; `jax.devices()` is then the global list
   (every process's devices), `jax.local_devices()` this process's own.
2. A global `Mesh` over all devices, and two point clouds sharded along their points over it
   (`NamedSharding(mesh, P("d", None))`). Each process builds only the rows that live on its
   own devices (`jax.make_array_from_callback`): no process ever holds the whole cloud.
3. One jitted `jax.value_and_grad` of Sinkhorn's `reg_cost` (its gradient by the envelope
   theorem) runs on the global arrays: the same program on every process, XLA inserting the
   cross-process collectives (gloo on CPU, NCCL on GPU).
4. Process 0 gathers the gradient (`multihost_utils.process_allgather`) and checks it against
   the single-device answer, computed on its first local device alone.

jaxsolve needs nothing special for this: its solvers are `jax.lax.while_loop`s over arrays, so
whatever sharding the inputs carry, XLA's SPMD partitioner splits the kernel matrix–vector
products over the mesh and all-reduces the marginals. On the CPU backend the cross-process
collectives are gloo's (`jax_cpu_collectives_implementation`, the default in jax 0.10).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

N, M, D, EPS = 256, 192, 3, 0.1  # points in x and y, dimension, entropic regularisation


def clouds(n=N, m=M, d=D):
    """The two point clouds, identical on every process (fixed seeds), as NumPy arrays."""
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)), rng.normal(size=(m, d)) + 0.5


def loss_and_grad():
    """`x, y ↦ (reg_cost, success), d reg_cost / d x`, jitted once: the same function serves
    the sharded multi-process call and the single-device reference."""
    import jax

    import jaxsolve as js

    def loss(x, y):
        geom = js.ot.PointCloud(x, y, epsilon=EPS)
        sol = js.ot.solve(geom, solver=js.ot.Sinkhorn(), throw=False)
        return sol.reg_cost, sol.result == js.RESULTS.successful

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def worker(coordinator, num_processes, process_id, devices_per_process, x64, out, check=True):
    import jax

    # Both must come before JAX starts its backend (the first array or device query).
    if devices_per_process:
        jax.config.update("jax_num_cpu_devices", devices_per_process)
    jax.config.update("jax_enable_x64", x64)
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)

    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("d",))  # every device of every process
    rows = NamedSharding(mesh, P("d", None))  # points split over the mesh, coordinates not
    dtype = jnp.float64 if x64 else jnp.float32
    x_np, y_np = (a.astype(dtype) for a in clouds())

    def global_array(a):
        # the callback is asked only for the shards on this process's devices
        return jax.make_array_from_callback(a.shape, rows, lambda index: a[index])

    x, y = global_array(x_np), global_array(y_np)
    fn = loss_and_grad()
    (cost, ok), grad = fn(x, y)
    # cost and ok are replicated (every process holds them); grad is sharded like x
    grad = np.asarray(multihost_utils.process_allgather(grad, tiled=True))
    local = {
        "process": process_id,
        "local_devices": [d.id for d in jax.local_devices()],
        "grad_shards_here": [s.data.shape[0] for s in x.addressable_shards],
    }
    print(json.dumps(local), flush=True)
    if process_id == 0:
        result = {
            "processes": jax.process_count(),
            "devices": jax.device_count(),
            "dtype": str(np.dtype(dtype)),
            "reg_cost": float(cost),
            "success": bool(ok),
            "max_abs_grad": float(np.max(np.abs(grad))),
        }
        if check:
            # the single-device answer, on this process's first device only
            one = jax.local_devices()[0]
            (cost1, ok1), grad1 = fn(jax.device_put(x_np, one), jax.device_put(y_np, one))
            result["reg_cost_single_device"] = float(cost1)
            result["success_single_device"] = bool(ok1)
            result["max_abs_grad_difference"] = float(np.max(np.abs(grad - np.asarray(grad1))))
        print(json.dumps(result, indent=1), flush=True)
        if out:
            np.save(out + ".grad.npy", grad)
            with open(out + ".json", "w") as fh:
                json.dump(result, fh)
    # keep every process alive until all have finished (process 0 hosts the coordinator)
    multihost_utils.sync_global_devices("done")
    jax.distributed.shutdown()


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(num_processes, devices_per_process, x64, out=None, log=None, check=True):
    """Start `num_processes` copies of this script on a free localhost port; returns them.
    With `log`, process i's output goes to the file `LOG.<i>` (else to this terminal)."""
    coordinator = f"localhost:{free_port()}"
    cmd = [sys.executable, os.path.abspath(__file__), "--coordinator", coordinator]
    cmd += ["--num-processes", str(num_processes)]
    cmd += ["--devices-per-process", str(devices_per_process)]
    cmd += ["--x64"] if x64 else []
    cmd += [] if check else ["--no-check"]
    procs = []
    try:
        for i in range(num_processes):
            extra = ["--out", out] if out and i == 0 else []
            sink = open(f"{log}.{i}", "w") if log else None
            procs.append(
                subprocess.Popen(cmd + ["--process-id", str(i)] + extra, stdout=sink, stderr=sink)
            )
            if sink:
                sink.close()  # the child holds its own copy
    except BaseException:
        stop(procs)
        raise
    return procs


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def wait(procs, timeout):
    """Wait for every process, at most `timeout` seconds in all. As soon as one fails (its
    peers would wait for it forever in a collective) or time runs out, kill the others.
    Returns the exit codes (negative: killed by that signal)."""
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        stop(procs)
    return [p.returncode for p in procs]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launch", type=int, default=0, help="start this many processes")
    parser.add_argument("--coordinator", default=None, help="host:port of process 0")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--devices-per-process", type=int, default=2, help="0: the real ones")
    parser.add_argument("--x64", action="store_true", help="float64 (default float32)")
    parser.add_argument("--out", default=None, help="process 0 writes OUT.json, OUT.grad.npy")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--no-check", action="store_true", help="skip process 0's single-device comparison"
    )
    args = parser.parse_args(argv)
    if args.launch:
        procs = start(
            args.launch, args.devices_per_process, args.x64, args.out, None, not args.no_check
        )
        codes = wait(procs, args.timeout)
        return max(abs(c) if c is not None else 1 for c in codes)
    worker(
        args.coordinator,
        args.num_processes,
        args.process_id,
        args.devices_per_process,
        args.x64,
        args.out,
        not args.no_check,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
