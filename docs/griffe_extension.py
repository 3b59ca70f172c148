"""Griffe extension for the API reference (mkdocs.yml, mkdocstrings `extensions:`).

With `force_inspection` (needed for equinox Modules' dataclass signatures), Griffe gives a
class attribute the docstring of its *value*: a solver field whose default is
`lx.AutoLinearSolver(...)` would show lineax's class docstring (and its cross-references into
lineax's docs). Fields are documented in their class's **Arguments** instead, so such borrowed
docstrings are dropped (and the field, having no docstring of its own, is not listed).
"""

import inspect

import griffe


class DropValueDocstrings(griffe.Extension):
    def on_attribute_instance(self, *, node, attr, **kwargs) -> None:
        if attr.docstring is None or node.obj is None:
            return
        own = getattr(type(node.obj), "__doc__", None)
        if isinstance(own, str) and inspect.cleandoc(own) == attr.docstring.value:
            attr.docstring = None
