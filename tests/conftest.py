"""Shared test setup: float64 on (unless JAXSOLVE_TEST_X64=0: the float32 pass, see
tests/test_float32.py), a seeded key, and small helpers."""

import os

# The suite is compile-bound: hundreds of small programs, most run once or twice. XLA's CPU
# backend compiles them about a third faster with LLVM's optimisation level 0 and without its
# expensive passes. The machine code runs slower and may round differently in the last bit
# (as another backend does): no test may depend on the rounding of one compiler. Set
# before JAX starts (the flags are read when the backend is created); a run that sets its own
# optimisation level in XLA_FLAGS, or JAXSOLVE_TEST_OPTIMISED=1, keeps XLA's defaults.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
_flags = os.environ.get("XLA_FLAGS", "")
if os.environ.get("JAXSOLVE_TEST_OPTIMISED") != "1" and "optimization_level" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} {_FAST_COMPILE}".strip()

import jax  # noqa: E402

X64 = os.environ.get("JAXSOLVE_TEST_X64", "1") != "0"
jax.config.update("jax_enable_x64", X64)

# tests/sharded/ needs 8 devices: tests/test_sharding.py runs it in its own process with
# XLA_FLAGS=--xla_force_host_platform_device_count=8 (which must be set before JAX starts).
collect_ignore_glob = [] if jax.device_count() >= 8 else ["sharded/*"]
# tests/isolated/ runs in a fresh process of its own (tests/test_isolated.py): compiling the
# smooth-OT programs aborted XLA's CPU compiler (jaxlib 0.10.2) in 3 of 4 full runs inside a
# long-lived xdist worker, and never in a fresh process.
if os.environ.get("JAXSOLVE_ISOLATED") != "1":
    collect_ignore_glob.append("isolated/*")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


# Every compiled executable keeps a few memory mappings alive (its machine code), and a
# long-lived xdist worker that compiles ~12 000 programs reaches the kernel's limit of 65 530
# mappings per process (`vm.max_map_count`), where XLA's compiler segfaults: the "crashed
# worker" of earlier runs. So JAX's compiled programs are dropped after each test module
# (programs are shared within a module, through module-level jitted helpers, rarely across
# modules), and after any test that leaves the process above _MAX_MAPPINGS (one module took a
# worker from 1 000 to 22 000 mappings on its own).
_MAPS = "/proc/self/maps"
_MAX_MAPPINGS = 30_000


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs_per_module():
    yield
    jax.clear_caches()


@pytest.fixture(autouse=True)
def _release_compiled_programs_when_near_the_limit():
    yield
    if os.path.exists(_MAPS):
        with open(_MAPS) as f:
            if sum(1 for _ in f) > _MAX_MAPPINGS:
                jax.clear_caches()


def finite_difference(f, x, eps=1e-6):
    """Central finite differences of a scalar function `f` at the array `x` (float64)."""
    x = jnp.asarray(x, dtype=jnp.float64)
    flat = x.ravel()
    grads = []
    for i in range(flat.size):
        e = jnp.zeros_like(flat).at[i].set(eps).reshape(x.shape)
        grads.append((f(x + e) - f(x - e)) / (2 * eps))
    return jnp.stack(grads).reshape(x.shape)


# The longest tests (each a fresh subprocess of its own: the float32 pass, tests/isolated/,
# tests/sharded/, the tour, the notebooks, two hosts) go first, so that pytest-xdist's workers
# do not end the run with one of them alone on one core while the other core idles.
_LONGEST_FIRST = (
    "tests/test_float32.py",
    "tests/test_isolated.py",
    "tests/test_tour.py",
    "tests/test_sharding.py",
    "tests/test_notebooks.py",
    "tests/test_multihost.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.nodeid.split("::")[0]
        return _LONGEST_FIRST.index(path) if path in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each group is kept
