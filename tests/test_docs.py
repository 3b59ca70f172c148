"""The documentation site (mkdocs.yml, docs/) stays complete and in sync, without building it
(mkdocs is not in the test extra; CI builds the site with `mkdocs build --strict`):

- every name exported by `jaxsolve` and its subpackages is on an API reference page;
- every notebook has an executed copy in docs/notebooks/ whose cells are the notebook's own
  (re-render with `python docs/render_notebooks.py NAME` after editing a notebook).
"""

import importlib
import importlib.util
import inspect
import json
import pathlib

import pytest

import jaxsolve as js

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# docs/hooks.py (the API pages' expansion; imports no mkdocs), under a name of its own
_spec = importlib.util.spec_from_file_location("jaxsolve_docs_hooks", DOCS / "hooks.py")
hooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hooks)


def _exported(module) -> set[str]:
    """Public names of a module, found independently of docs/hooks.py: what users reach as
    `module.name` (`__all__` if any, else every non-underscore, non-module attribute)."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in dir(module) if not n.startswith("_")]
    return {n for n in names if not inspect.ismodule(getattr(module, n))}


def _subpackages():
    return [
        obj
        for name, obj in vars(js).items()
        if inspect.ismodule(obj)
        and not name.startswith("_")
        and obj.__name__.startswith("jaxsolve.")
    ]


def _api_reference() -> set[str]:
    """Every `::: target` of the API pages after docs/hooks.py expanded their markers."""
    targets = set()
    for page in sorted((DOCS / "api").glob("*.md")):
        targets |= set(hooks.DIRECTIVE.findall(hooks.expand_api(page.read_text())))
    return targets


def test_every_exported_name_is_in_the_api_reference():
    reference = _api_reference()
    missing = [
        f"{mod.__name__}.{name}"
        for mod in [js, *_subpackages()]
        for name in sorted(_exported(mod))
        if f"{mod.__name__}.{name}" not in reference
    ]
    assert not missing, (
        f"not in any docs/api/*.md page: {missing}. Add a `::: name` line or a "
        "`<!-- api: module -->` / `<!-- api-rest: module -->` marker for a new module."
    )
    assert len(reference) >= 100  # the expansion is not vacuous (122 names today)


def test_api_reference_names_exist():
    for target in _api_reference():
        module, _, name = target.rpartition(".")
        assert hasattr(importlib.import_module(module), name), f"{target} does not exist"


def test_api_marker_expansion_skips_documented_names():
    text = "::: jaxsolve.qp.solve\n\n<!-- api-rest: jaxsolve.qp -->"
    out = hooks.expand_api(text)
    assert out.count("::: jaxsolve.qp.solve") == 1
    assert "## Other names" in out and "::: jaxsolve.qp.ADMM" in out
    every = "\n\n".join(f"::: jaxsolve.qp.{n}" for n in dir(js.qp) if not n.startswith("_"))
    assert "## Other names" not in hooks.expand_api(every + "\n\n<!-- api-rest: jaxsolve.qp -->")


def test_api_pages_are_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (DOCS / "api").glob("*.md"):
        assert f"api/{page.name}" in nav, f"docs/api/{page.name} is not in mkdocs.yml's nav"


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _cells(path):
    return [(c["cell_type"], "".join(c["source"])) for c in json.loads(path.read_text())["cells"]]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_rendered_notebook_matches_its_source(path):
    copy = DOCS / "notebooks" / path.name
    assert copy.exists(), f"run `python docs/render_notebooks.py {path.stem}`"
    assert _cells(copy) == _cells(path), (
        f"docs/notebooks/{path.name} differs from notebooks/{path.name}: "
        f"run `python docs/render_notebooks.py {path.stem}`"
    )
    executed = json.loads(copy.read_text())["cells"]
    code = [c for c in executed if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), "the copy was not executed"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, "the executed copy holds an error output"
    assert f"notebooks/{path.name}" in (ROOT / "mkdocs.yml").read_text(), "not in the nav"
