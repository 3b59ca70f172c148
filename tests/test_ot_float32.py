"""OT in float32 (x64 off, in-process), against POT in float64, and the backend-dependent
storage of the kernel's transpose.

The gradient of `reg_cost` with respect to the source points is, for the squared Euclidean
cost, `2 (a·x − P y)` with `P` the optimal plan: POT's float64 plan gives the reference.
(benchmarks/ot_float32_gradients.py runs the full grid, n up to 2000 and ε down to 0.01.)"""

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

import jaxsolve as js
from jaxsolve.ot import _sinkhorn

N = 200  # at this size lineax's CG declared every float32 adjoint solve a breakdown


def _loss(x, y, eps):
    sol = js.ot.solve(js.ot.PointCloud(x, y, epsilon=eps), throw=False)  # every default
    return sol.reg_cost, sol.result == js.RESULTS.successful


with jax.enable_x64(False):
    _grad32 = jax.jit(jax.grad(_loss, has_aux=True))  # one compilation for every case


def _clouds(seed, shift):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, 2)), rng.standard_normal((N, 2)) + shift


@pytest.mark.parametrize(
    "seed, shift, eps", [(0, 0.0, 1.0), (1, 3.0, 1.0), (2, 0.0, 0.1), (3, 3.0, 0.1)]
)
def test_float32_gradient_of_reg_cost_matches_pot_float64(seed, shift, eps):
    x, y = _clouds(seed, shift)
    with jax.enable_x64(False):
        g, ok = _grad32(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), eps)
        assert g.dtype == jnp.float32
    a = np.full(N, 1 / N)
    # POT's float64 Sinkhorn (kernel domain: these costs/ε keep K and its scalings in range).
    P = pot.sinkhorn(a, a, pot.dist(x, y), eps, stopThr=1e-13, numItermax=100_000)
    assert np.abs(P.sum(1) - a).sum() < 1e-9
    ref = 2 * (a[:, None] * x - P @ y)
    g = np.asarray(g, np.float64)
    assert bool(ok) and np.all(np.isfinite(g))
    assert np.linalg.norm(g - ref) / np.linalg.norm(ref) < 1e-2


def _cloud_geom(n, m):
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 2))
    y = jax.random.normal(jax.random.PRNGKey(1), (m, 2)) + 0.5
    return js.ot.PointCloud(x, y, epsilon=0.1)


def test_kernel_transpose_is_stored_on_cpu_only(monkeypatch):
    geom = _cloud_geom(13, 11)
    one = jnp.ones((), geom.dtype)
    problem = js.ot.OTProblem(geom, jnp.full(13, 1 / 13), jnp.full(11, 1 / 11), one, one, one)
    f, g = jnp.zeros(13), jnp.zeros(11)
    # Sinkhorn's kernel mode holds the kernel alone, on every backend (`u @ K` for `Kᵀ u`).
    K = js.ot.Sinkhorn()._build_kernel(problem, f, g, problem.epsilon)
    assert K.shape == (13, 11)
    # SparseNewton's plan transpose is stored on CPU only.
    assert jax.default_backend() == "cpu"  # CI: the behaviour on CPU is unchanged
    KT = _sinkhorn.transposed(K)
    assert KT is not None and jnp.array_equal(KT, K.T)
    # On another backend (decided at trace time) the transpose is not stored, and a solve
    # traced there (a shape of its own: no cached CPU program) gives the same answer.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not _sinkhorn.stores_transpose()
    assert _sinkhorn.transposed(K) is None
    geom = _cloud_geom(17, 9)
    tol = 1e-10 if jax.config.read("jax_enable_x64") else 1e-5
    sol = js.ot.solve(geom, solver=js.ot.Sinkhorn(tol=tol))
    monkeypatch.undo()
    assert sol.result == js.RESULTS.successful
    x, y = np.asarray(geom.x, np.float64), np.asarray(geom.y, np.float64)
    ref = pot.sinkhorn(np.full(17, 1 / 17), np.full(9, 1 / 9), pot.dist(x, y), 0.1, stopThr=1e-14)
    assert np.abs(np.asarray(sol.plan) - ref).max() < 10 * tol
    u = jnp.arange(17.0)
    for KT in (None, sol.plan.T):
        assert jnp.allclose(_sinkhorn.t_matvec(sol.plan, KT, u), sol.plan.T @ u)
