"""The float32 pass: the cross-family contract and every family's float32 tests, run again with
x64 off (JAX's default, and the only fast dtype on GPUs and TPUs), in a fresh process."""

import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).parent
# Files whose tests hold in both dtypes (tolerances chosen per dtype inside them).
# One fresh process per file, so that the xdist workers share the pass. (test_qp.py has its own
# in-process float32 gradient test; test_bilevel_closures.py checks compile counts, which do not
# depend on the dtype.) A file may come with the `-k` expression of the tests run in float32.
FILES = [
    "test_contract.py",
    "test_scale.py",
    "test_constrained.py::-k projections or proxes or nnls or one_bad_member",
    "test_linear_pytree.py",
    "test_least_squares.py",
    "test_ot_lowrank.py",
]


@pytest.mark.skipif(os.environ.get("JAXSOLVE_TEST_X64") == "0", reason="already the float32 pass")
@pytest.mark.parametrize("file", FILES)
def test_float32_pass(file):
    env = dict(os.environ, JAXSOLVE_TEST_X64="0", JAX_ENABLE_X64="0")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    # Compile counts do not depend on the dtype: the float64 pass covers them.
    path, _, only = file.partition("::-k ")
    deselect = ["-k", f"not compile and ({only})" if only else "not compile"]
    out = subprocess.run(
        cmd + deselect + [str(HERE / path)],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        cwd=HERE.parent,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
