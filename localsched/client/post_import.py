"""Run a function right after a module is first imported (a post-import hook).

A client points dask's ``scheduler`` setting at itself, which needs
``dask.config``; importing dask costs about 0.2 s, more than the rest of the
cluster's start-up. When dask is not imported yet, the client registers a hook
instead: the setting is made the moment the program imports dask, before
``import dask`` returns, so a collection computed afterwards runs here exactly
as if it had been made at once.

The hook is a ``sys.meta_path`` finder that asks the other finders for the
module's spec and wraps its loader: after the module's code ran, the callbacks
run (an exception in one is logged, never raised into the user's import). The
finder leaves ``sys.meta_path`` once no hook is pending.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

logger = logging.getLogger("localsched.client.post_import")

__all__ = ["when_imported"]

_lock = threading.Lock()
#: Module name -> callbacks waiting for its first import (guarded by _lock).
_pending: dict[str, list[Callable[[ModuleType], None]]] = {}


def when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` once ``name`` is imported (now if it is).

    Parameters
    ----------
    name
        A top-level or dotted module name.
    callback
        Called once, in the importing thread, after the module's code ran.
    """
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            callbacks = _pending.setdefault(name, [])
            if callback not in callbacks:
                callbacks.append(callback)
            if _FINDER not in sys.meta_path:
                sys.meta_path.insert(0, _FINDER)
            return
    callback(module)


def _run_callbacks(name: str, module: ModuleType) -> None:
    with _lock:
        callbacks = _pending.pop(name, [])
        if not _pending:
            while _FINDER in sys.meta_path:
                sys.meta_path.remove(_FINDER)
    for callback in callbacks:
        try:
            callback(module)
        except Exception:
            logger.exception("Hook after importing %s failed", name)


class _Loader(importlib.abc.Loader):
    """The module's own loader, then the hooks; anything else is delegated."""

    def __init__(self, name: str, loader: Any) -> None:
        self._name = name
        self._loader = loader

    def create_module(self, spec: Any) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        # The loader the module says it came from stays the real one.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        _run_callbacks(self._name, module)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._loader, attribute)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of a module with pending hooks."""

    def __init__(self) -> None:
        self._searching = threading.local()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> Any:
        if fullname not in _pending or getattr(self._searching, "active", False):
            return None
        self._searching.active = True
        try:
            for finder in list(sys.meta_path):
                if finder is self:
                    continue
                find = getattr(finder, "find_spec", None)
                spec = None if find is None else find(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._searching.active = False
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # a namespace package or an old-style loader: leave it
        spec.loader = _Loader(fullname, spec.loader)
        return spec


_FINDER = _Finder()
