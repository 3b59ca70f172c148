"""mkdocs hooks for the jaxsolve site (see mkdocs.yml, `hooks:`).

- API reference: in a page, `<!-- api: jaxsolve.ot -->` expands to a `::: jaxsolve.ot.Name`
  block (mkdocstrings) for every public name of `jaxsolve.ot` that the page does not already
  document with its own `:::` line (`<!-- api-rest: ... -->`: the same under a heading "Other
  names", left out when there are none). Pages group the names they know; a name added to a module
  later appears on its page without editing it (`tests/test_docs.py` checks that every
  exported name of `jaxsolve` and its subpackages ends up on an API page).
- Benchmarks: `benchmarks/RESULTS*.md` become pages `benchmarks/RESULTS*.md` of the site and
  `benchmarks/*.png` its images (so the tables' relative image links resolve); no copies.
  `<!-- plots: benchmarks -->` expands to every plot, `<!-- results: benchmarks -->` to links to
  every results page (so a new `RESULTS-*.md` or plot shows up without editing a page).

This file imports nothing from mkdocs at module level, so the tests can use `public_names` and
`expand_api` without the docs extra.
"""

import importlib
import inspect
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
SUBPACKAGES = ("ot", "linear", "bilevel", "projections", "prox", "qp")
API_MARKER = re.compile(r"^<!-- api(-rest)?: ([\w.]+) -->$", re.M)
DIRECTIVE = re.compile(r"^::: ([\w.]+)", re.M)


def public_modules() -> list[str]:
    """`jaxsolve` and every public subpackage it exposes."""
    import jaxsolve

    names = ["jaxsolve"]
    for name, obj in vars(jaxsolve).items():
        if (
            inspect.ismodule(obj)
            and not name.startswith("_")
            and obj.__name__ == f"jaxsolve.{name}"
        ):
            names.append(obj.__name__)
    return sorted(names)


def public_names(module: str) -> list[str]:
    """The public names a module exports: `__all__` if it has one, else every name not
    starting with `_` that is not a module (jaxsolve re-exports with `from ._x import A as A`),
    in the order the module defines them."""
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [
            n for n, obj in vars(mod).items() if not n.startswith("_") and not inspect.ismodule(obj)
        ]
    return list(names)


def expand_api(markdown: str) -> str:
    """Replace each `<!-- api: module -->` marker by `:::` blocks for the module's public names
    that the page does not document yet."""
    documented = set(DIRECTIVE.findall(markdown))

    def blocks(match: re.Match) -> str:
        module = match.group(2)
        rest = [n for n in public_names(module) if f"{module}.{n}" not in documented]
        documented.update(f"{module}.{n}" for n in rest)
        text = "\n\n".join(f"::: {module}.{n}" for n in rest)
        if match.group(1) and rest:  # api-rest: under a heading of its own, if any are left
            text = "## Other names\n\n" + text
        return text

    return API_MARKER.sub(blocks, markdown)


PLOTS_MARKER = "<!-- plots: benchmarks -->"


def expand_plots(markdown: str) -> str:
    """Replace `<!-- plots: benchmarks -->` by every `benchmarks/*.png`, under its name (the
    page must sit in `benchmarks/`)."""
    plots = sorted((ROOT / "benchmarks").glob("*.png"))
    gallery = "\n\n".join(f"### `{p.name}`\n\n![{p.stem}]({p.name})" for p in plots)
    return markdown.replace(PLOTS_MARKER, gallery)


RESULTS_MARKER = "<!-- results: benchmarks -->"


def expand_results(markdown: str) -> str:
    """Replace `<!-- results: benchmarks -->` by a list of links to every
    `benchmarks/RESULTS*.md`, each under its first heading."""
    items = []
    for path in sorted((ROOT / "benchmarks").glob("RESULTS*.md")):
        lines = path.read_text().splitlines()
        title = next((ln.lstrip("# ") for ln in lines if ln.startswith("# ")), path.stem)
        items.append(f"- [{title}]({path.name}) (`benchmarks/{path.name}`)")
    return markdown.replace(RESULTS_MARKER, "\n".join(items))


def on_page_markdown(markdown, page, config, files):
    return expand_results(expand_plots(expand_api(markdown)))


def on_files(files, config):
    from mkdocs.structure.files import File

    for path in sorted((ROOT / "benchmarks").iterdir()):
        if path.suffix == ".png" or (path.suffix == ".md" and path.name.startswith("RESULTS")):
            files.append(
                File(
                    f"benchmarks/{path.name}",
                    src_dir=str(ROOT),
                    dest_dir=config["site_dir"],
                    use_directory_urls=config["use_directory_urls"],
                )
            )
    return files
