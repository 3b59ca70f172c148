"""The tour (`python -m jaxsolve`, the README's first command) runs to the end in a fresh
process and prints every section."""

import pkgutil
import subprocess
import sys

from jaxsolve import _tour


def test_tour_runs_every_section():
    names = sorted(m.name for m in pkgutil.iter_modules(_tour.__path__) if m.name.startswith("s"))
    out = subprocess.run(
        [sys.executable, "-m", "jaxsolve"], capture_output=True, text=True, timeout=280
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count("-- section took") == len(names), out.stdout[-4000:]
    assert "Traceback" not in out.stderr
