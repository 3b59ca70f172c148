"""Every public name has a docstring with an **Example** that runs and whose asserts hold, in
float32 (JAX's default, what a user who copies the example gets) unless the example itself turns
float64 on."""

import inspect
import re

import jax
import pytest

import jaxsolve as js


def _public_objects():
    seen = {}
    subpackages = ("ot", "linear", "bilevel", "projections", "prox", "qp")
    modules = [js] + [getattr(js, m) for m in subpackages if hasattr(js, m)]
    for mod in modules:
        for name in getattr(mod, "__all__", None) or dir(mod):
            if name.startswith("_") or name in subpackages:
                continue
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)):
                continue
            seen[f"{mod.__name__}.{name}"] = obj
    return seen


OBJECTS = _public_objects()
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
_WANTS_X64 = re.compile(r'jax\.config\.update\(\s*"jax_enable_x64",\s*True\s*\)')


def _examples(obj):
    doc = inspect.getdoc(obj) or ""
    return [inspect.cleandoc(b) for b in _BLOCK.findall(doc)]


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_public_name_has_runnable_example(name):
    blocks = _examples(OBJECTS[name])
    # Abstract bases need an example only when they are an extension point users subclass
    # (those have one); the rest document their methods instead.
    if not name.split(".")[-1].startswith("Abstract"):
        assert blocks, f"{name} has no ```python example in its docstring"
    x64 = jax.config.jax_enable_x64
    try:
        for block in blocks:
            # Inside this context a `jax.config.update` cannot turn x64 on, so the example's own
            # opt-in is read here; the process's setting is restored after it.
            with jax.enable_x64(bool(_WANTS_X64.search(block))):
                exec(compile(block, f"<docstring of {name}>", "exec"), {})
    finally:
        jax.config.update("jax_enable_x64", x64)
