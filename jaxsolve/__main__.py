"""`python -m jaxsolve`: a tour of the library on built-in data, a few seconds per section."""

import importlib
import pkgutil
import sys
import time

from . import _tour


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = sorted(m.name for m in pkgutil.iter_modules(_tour.__path__) if m.name.startswith("s"))
    wanted = [n for n in names if not argv or any(a in n for a in argv)]
    print("jaxsolve tour:", ", ".join(wanted))
    for name in wanted:
        module = importlib.import_module(f"{_tour.__name__}.{name}")
        title = (module.__doc__ or name).strip().splitlines()[0]
        print(f"\n== {title} " + "=" * max(0, 72 - len(title)))
        start = time.perf_counter()
        module.run()
        print(f"-- section took {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
