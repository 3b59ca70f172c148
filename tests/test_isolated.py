"""Runs tests/isolated/ in a fresh process (see tests/conftest.py for why)."""

import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent


def test_isolated_suite_in_a_fresh_process():
    env = dict(os.environ, JAXSOLVE_ISOLATED="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "isolated")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env, cwd=HERE.parent)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout, out.stdout[-2000:]
