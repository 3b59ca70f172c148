"""Multi-host use through `jax.distributed.initialize`: notebooks/multihost_sinkhorn.py run as
two processes on one machine (two simulated CPU devices each, gloo collectives, a free localhost
port) gives the single-process Sinkhorn cost and gradient, with point clouds sharded across all
four devices of both processes.

About 12 s of wall time on an idle 2-core machine (three processes each import JAX and compile
one Sinkhorn value-and-gradient); the processes are killed if one fails or after `DEADLINE`
seconds (set far above that so that a loaded machine does not fail the test)."""

import importlib.util
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

DEADLINE = 120.0
EXAMPLE = pathlib.Path(__file__).parent.parent / "notebooks" / "multihost_sinkhorn.py"


def _example():
    spec = importlib.util.spec_from_file_location("multihost_sinkhorn", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_processes_give_the_single_process_answer(tmp_path):
    deadline = time.monotonic() + DEADLINE
    ex = _example()
    x64 = bool(jax.config.read("jax_enable_x64"))
    out = str(tmp_path / "run")
    # Started first, so that the two processes run while this one computes the reference;
    # `wait` kills both on a timeout or as soon as one fails.
    pending = ex.start(2, 2, x64, out, log=out + ".log", check=False)
    try:
        x, y = (jnp.asarray(a) for a in ex.clouds())
        fn = ex.loss_and_grad()
        (cost, ok), grad = fn(x, y)
        assert ok
        # the reference gradient itself against central finite differences of the cost
        d = jax.random.normal(jax.random.PRNGKey(0), x.shape, x.dtype)
        h = 1e-4 if x64 else 1e-2
        fd = (fn(x + h * d, y)[0][0] - fn(x - h * d, y)[0][0]) / (2 * h)
        # the envelope-theorem gradient is exact at the optimum: here within the solve's tol
        assert jnp.allclose(jnp.vdot(grad, d), fd, rtol=1e-5 if x64 else 3e-2)

        codes = ex.wait(pending, timeout=deadline - time.monotonic())
    finally:
        ex.stop(pending)  # whatever failed above, no process outlives the test
    logs = "".join(pathlib.Path(f"{out}.log.{i}").read_text()[-3000:] for i in range(2))
    assert codes == [0, 0], (codes, logs)
    result = json.loads(pathlib.Path(out + ".json").read_text())
    assert (result["processes"], result["devices"]) == (2, 4)
    assert result["dtype"] == str(x.dtype)
    assert result["success"]
    scale = float(jnp.max(jnp.abs(grad)))
    assert np.isclose(result["reg_cost"], float(cost), rtol=1e-10 if x64 else 1e-5)
    multi = np.load(out + ".grad.npy")
    assert multi.shape == x.shape
    np.testing.assert_allclose(multi, grad, rtol=0, atol=(1e-10 if x64 else 1e-5) * scale)
