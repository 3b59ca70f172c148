"""Execute notebooks/*.ipynb and write the executed copies (outputs and plots) to docs/notebooks/.

The notebooks are stored without outputs and run by the test suite at small size; the site
shows these executed copies (mkdocs-jupyter with `execute: false`), so building the site runs
no notebook. Re-render after editing a notebook — `tests/test_docs.py` fails while a copy's
cells differ from its source notebook's:

    pip install ".[test,docs]"
    python docs/render_notebooks.py                      # every notebook, full size
    python docs/render_notebooks.py ot_in_a_training_loop --small

Each notebook runs in a fresh Jupyter kernel (ipykernel, from the docs extra) with the
repository's `jaxsolve`, x64 off as in any fresh kernel; `--small` sets `JAXSOLVE_SMALL=1` (the
test suite's sizes). The copy's metadata records the size, the time it took and the machine.
XLA's C++ log lines (warnings the kernel captures from stderr) are left out of the copies.
"""

import argparse
import importlib.metadata
import os
import pathlib
import platform
import re
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "notebooks"
TARGET = ROOT / "docs" / "notebooks"


_XLA_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def drop_xla_logs(nb) -> None:
    """Remove XLA's C++ log lines (e.g. the SPMD partitioner's "involuntary full
    rematerialization" warnings, which the kernel captures from file descriptor 2) from the
    stderr outputs; the notebooks' own output is untouched."""
    for cell in nb.cells:
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                lines = out["text"].splitlines(keepends=True)
                out["text"] = "".join(ln for ln in lines if not _XLA_LOG.match(ln))
                if not out["text"].strip():
                    continue
            outputs.append(out)
        if cell.cell_type == "code":
            cell.outputs = outputs


def render(path: pathlib.Path, small: bool, timeout: int) -> float:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_ENABLE_X64", "XLA_FLAGS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    if small:
        env["JAXSOLVE_SMALL"] = "1"
    else:
        env.pop("JAXSOLVE_SMALL", None)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cwd:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": cwd}},
            record_timing=False,
        )
        client.execute(env=env)  # passed on to the kernel manager's start_kernel
    seconds = time.perf_counter() - start
    drop_xla_logs(nb)
    nb.metadata["jaxsolve_render"] = {
        "size": "small (JAXSOLVE_SMALL=1)" if small else "full",
        "seconds": round(seconds, 1),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, "
        f"jax {importlib.metadata.version('jax')}",
    }
    TARGET.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, TARGET / path.name)
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook stems (default: all)")
    parser.add_argument("--small", action="store_true", help="JAXSOLVE_SMALL=1 sizes")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = sorted(SOURCE.glob("*.ipynb"))
    if args.names:
        paths = [p for p in paths if p.stem in args.names]
        missing = set(args.names) - {p.stem for p in paths}
        if missing:
            sys.exit(f"no such notebook in notebooks/: {sorted(missing)}")
    for path in paths:
        seconds = render(path, args.small, args.timeout)
        print(f"{path.name}: {seconds:.1f} s -> {(TARGET / path.name).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
