"""Names a package exports, imported on first use (PEP 562).

A package's ``__init__`` maps each public name to the module that defines it;
importing the package then costs nothing (a worker process imports
``localsched`` as the parent of its own modules), and ``from package import
name`` imports just that module. No submodule may be named like an export
(``tests/test_public_api.py``): importing it would bind the module instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the package whose ``globals()`` is
    ``namespace``: ``exports`` maps each name to the module defining it."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # found by plain lookup from now on
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
