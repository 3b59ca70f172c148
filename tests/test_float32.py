"""The float32 pass: the cross-family contract and every family's float32 tests, run again with
x64 off (JAX's default, and the only fast dtype on GPUs and TPUs), in a fresh process."""

import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).parent
# Files whose tests hold in both dtypes (tolerances chosen per dtype inside them).
FILES = ["test_contract.py", "test_scale.py", "test_qp.py", "test_least_squares.py"]


@pytest.mark.skipif(os.environ.get("JAXSOLVE_TEST_X64") == "0", reason="already the float32 pass")
def test_float32_pass():
    env = dict(os.environ, JAXSOLVE_TEST_X64="0", JAX_ENABLE_X64="0")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    # Compile counts do not depend on the dtype: the float64 pass covers them.
    deselect = ["-k", "not compile"]
    out = subprocess.run(
        cmd + deselect + [str(HERE / f) for f in FILES],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        cwd=HERE.parent,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
