"""User functions as data: a Python function becomes a pytree whose leaves are the arrays it
closes over, and whose static part is its code.

`eqx.filter_jit` keys its cache on the static part of its arguments, and a function is static,
compared by identity: a new lambda (the same code, re-created in a loop or by a factory that
closes over new arrays) is a cache miss, a new trace and a new XLA compilation, and the arrays
it closes over are baked into the program as constants (no derivative reaches them through
`custom_vjp` rules, and a new value means a new program). Closure conversion by tracing
(`eqx.filter_closure_convert`, what `js.minimise` does inside its jit) hoists the arrays, but
its key is a new jaxpr per call, so it cannot be done before the jit boundary.

`function_as_data(fn)` splits `fn` by its code instead: the code object, its globals and the
closure's non-array contents are the static key (equal for every lambda created by the same
line of code with equal non-array captures); the arrays in its closure cells and defaults
(recursively through the functions it closes over, `functools.partial` and pytrees) are
leaves. Calling the result rebuilds the function with the (possibly traced) arrays. So inside
a jitted entry point the closed-over arrays are traced inputs, and the core's closure
conversion then makes them differentiable inputs of the implicit derivative.

What is not converted stays as it was (static, by identity when unhashable): functions defined
at the top of a module (stable identity, nothing closed over), builtins, jitted or `custom_jvp`
functions, numpy arrays (they may be used for static shapes), module globals.
"""

import functools
import sys
import types
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu

_MAX_DEPTH = 8


class _ById:
    """A static value compared by identity (unhashable or not safely comparable by value)."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _ById) and other.value is self.value


def _is_hashable(x) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _convert(value: Any, depth: int) -> Any:
    """`value` with its functions converted and its non-array, unhashable leaves boxed."""
    if isinstance(value, types.FunctionType):
        return _of_function(value, depth)
    if isinstance(value, functools.partial):
        return _Partial(
            _convert(value.func, depth),
            _convert(value.args, depth),
            _convert(dict(value.keywords), depth),
        )

    def leaf(x):
        if isinstance(x, types.FunctionType | functools.partial):
            return _convert(x, depth)
        if isinstance(x, jax.Array):  # jax arrays and tracers: traced inputs
            return x
        return x if _is_hashable(x) else _ById(x)

    is_leaf = lambda x: isinstance(x, types.FunctionType | functools.partial)
    return jtu.tree_map(leaf, value, is_leaf=is_leaf)


def _restore(value: Any) -> Any:
    return jtu.tree_map(
        lambda x: x.value if isinstance(x, _ById) else x,
        value,
        is_leaf=lambda x: isinstance(x, _ById | Function | _Partial),
    )


class Function(eqx.Module):
    """A Python function as a pytree: `code` and `globals` static, the contents of its closure
    cells and defaults as (converted) pytrees. Calling it calls the function."""

    code: types.CodeType = eqx.field(static=True)
    globals: _ById = eqx.field(static=True)
    name: str = eqx.field(static=True)
    cells: tuple
    defaults: Any
    kwdefaults: Any

    def rebuild(self) -> Callable:
        cells = tuple(types.CellType(_restore(c)) for c in self.cells)
        defaults = None if self.defaults is None else tuple(_restore(self.defaults))
        fn = types.FunctionType(self.code, self.globals.value, self.name, defaults, cells)
        if self.kwdefaults is not None:
            fn.__kwdefaults__ = dict(_restore(self.kwdefaults))
        return fn

    def __call__(self, *args, **kwargs):
        return self.rebuild()(*args, **kwargs)


class _Partial(eqx.Module):
    func: Any
    args: tuple
    keywords: dict

    def __call__(self, *args, **kwargs):
        return _restore(self.func)(*_restore(self.args), *args, **_restore(self.keywords), **kwargs)


def _is_module_level(fn: types.FunctionType) -> bool:
    """A function defined at the top of its module: it closes over nothing, and its identity
    is stable (the same object at every call), so it stays as it is."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    return getattr(module, fn.__qualname__, None) is fn


def _of_function(fn: types.FunctionType, depth: int) -> Any:
    if _is_module_level(fn):
        return fn
    if depth >= _MAX_DEPTH:  # deep or recursive closures: keep the function itself
        return _ById(fn)
    try:
        contents = [c.cell_contents for c in fn.__closure__ or ()]
    except ValueError:  # an empty cell (a closure not yet complete): keep the function
        return _ById(fn)
    if fn.__dict__:  # attributes the rebuilt function would lose
        return _ById(fn)
    return Function(
        fn.__code__,
        _ById(fn.__globals__),
        fn.__name__,
        tuple(_convert(c, depth + 1) for c in contents),
        None if fn.__defaults__ is None else _convert(fn.__defaults__, depth + 1),
        None if fn.__kwdefaults__ is None else _convert(fn.__kwdefaults__, depth + 1),
    )


def function_as_data(fn: Any) -> Any:
    """`fn` as a pytree whose leaves are the jax arrays it closes over (see the module
    docstring); callables that are not Python functions or partials come back unchanged."""
    if isinstance(fn, types.FunctionType | functools.partial):
        out = _convert(fn, 0)
        return out.value if isinstance(out, _ById) else out
    return fn


def functions_as_data(tree: Any) -> Any:
    """Every Python function in the pytree `tree` as data (`function_as_data`): e.g. an optax
    `GradientTransformation`, whose `init` and `update` close over its settings (a new
    `optax.adam(1e-3)` is then the same static key as the last one)."""
    is_fn = lambda x: isinstance(x, types.FunctionType | functools.partial)
    return jtu.tree_map(lambda x: function_as_data(x) if is_fn(x) else x, tree, is_leaf=is_fn)
