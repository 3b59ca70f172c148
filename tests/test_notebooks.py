"""Every notebook in notebooks/ runs, top to bottom, at small size (JAXSOLVE_SMALL=1), in float32.

Code cells are executed in one namespace (no kernel needed); a notebook reads
`os.environ.get("JAXSOLVE_SMALL")` to shrink its problem sizes. Notebooks run with x64 off, as
in a fresh kernel (JAX's default), whatever the test session's dtype; a cell that needs float64
enables it itself. A notebook whose metadata says `"jaxsolve": {"fresh_process": true}` (one
that configures JAX before its first operation, e.g. simulated devices) runs in a fresh Python
process, as in a fresh kernel; the others run in this process.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def execute(path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    cells = json.loads(path.read_text())["cells"]
    namespace = {"__name__": "__notebook__"}
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        source = "\n".join(
            ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))
        )
        exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)
    import matplotlib.pyplot as plt

    plt.close("all")


def _fresh_process(path: pathlib.Path) -> bool:
    return bool(json.loads(path.read_text())["metadata"].get("jaxsolve", {}).get("fresh_process"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch, tmp_path):
    monkeypatch.setenv("JAXSOLVE_SMALL", "1")
    monkeypatch.chdir(tmp_path)
    if _fresh_process(path):
        # The notebook asks for its own devices; it keeps the suite's compile flags (conftest).
        env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
        flags = os.environ.get("XLA_FLAGS", "").split()
        env["XLA_FLAGS"] = " ".join(f for f in flags if "device_count" not in f)
        out = subprocess.run(
            [sys.executable, __file__, str(path)],
            capture_output=True,
            text=True,
            timeout=600,  # ~25 s on an idle 2-core machine; generous for a loaded one
            env=env,
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return
    x64 = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", False)
    try:
        execute(path)
    finally:
        jax.config.update("jax_enable_x64", x64)


if __name__ == "__main__":
    execute(pathlib.Path(sys.argv[1]))
