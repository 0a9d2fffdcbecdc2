"""``Future.type``: the result's type object, found by the name the worker sent.

dask's worker pickles ``type(result)`` and the client unpickles it. Here the
worker sends the type's qualified name (``"numpy.ndarray"``, dask's
``typename``), which the scheduler keeps as ``TaskState.type`` anyway, and the
client looks the type up by that name the way unpickling a class by reference
does: import the module, walk the qualified name. The result itself is never
unpickled for it. A name that finds no type (a class defined inside a function,
a module the client cannot import) stays the name, as dask gives the name of a
type it could not pickle.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from localsched.future_state import FutureState
from localsched.worker.execute import typename

__all__ = ["remember_type", "resolve_type", "result_type"]


def result_type(state: FutureState) -> type | str | None:
    """The type of ``state``'s result (looked up once per name), or None."""
    name = state.type
    if name is None:
        return None
    cached = state.type_object
    if cached is not None and cached[0] == name:
        return cached[1]  # type: ignore[return-value]
    found = resolve_type(name)
    state.type_object = (name, found)
    return found


def remember_type(state: FutureState, cls: type) -> None:
    """Record the type of a value this client has (``scatter``): no lookup."""
    name = typename(cls)
    state.type = name
    state.type_object = (name, cls)


def resolve_type(name: str) -> type | str:
    """The type whose ``typename`` is ``name``; ``name`` itself if none is found.

    The split between module and qualified name is not in the name: try the
    longest module first and keep a candidate only if its own name is ``name``.
    """
    parts = name.split(".")
    if len(parts) == 1:
        parts = ["builtins", *parts]
    for cut in range(len(parts) - 1, 0, -1):
        qualname = parts[cut:]
        if "<locals>" in qualname:
            break  # defined inside a function: nothing to import it by
        module = _module(".".join(parts[:cut]))
        if module is None:
            continue
        found: Any = module
        for attribute in qualname:
            found = getattr(found, attribute, None)
        if isinstance(found, type) and typename(found) == name:
            return found
    return name


def _module(name: str) -> Any:
    module = sys.modules.get(name)
    if module is not None:
        return module
    try:
        return importlib.import_module(name)
    except Exception:  # not a module (a class's dotted path), or it fails to import
        return None
