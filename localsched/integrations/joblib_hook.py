"""Registering the ``"localsched"`` joblib backend, without importing joblib.

``import localsched`` calls :func:`install`. If joblib is imported already, the
backend is registered at once; otherwise a one-shot import hook registers it
right after ``joblib.parallel`` is first imported. Either way it is registered
lazily, the way joblib registers its own ``"dask"`` backend: an entry in
``joblib.parallel.EXTERNAL_BACKENDS`` that imports
:mod:`localsched.integrations.joblib_backend` only when
``backend="localsched"`` is asked for. Importing localsched thus never imports joblib.

joblib's own ``"dask"`` backend is wrapped the same way: with a localsched
client current (or given as ``client=``) ``parallel_config(backend="dask")``
runs on it, as a script written for dask.distributed expects; otherwise it is
joblib's backend for a dask.distributed client, unchanged.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["BACKEND_NAME", "install"]

BACKEND_NAME = "localsched"
_TARGET = "joblib.parallel"


def install() -> None:
    """Make ``parallel_config(backend="localsched")`` available in joblib."""
    module = sys.modules.get(_TARGET)
    if module is not None:
        _register(module)
    elif not any(isinstance(f, _JoblibImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _JoblibImportHook())


def _register(parallel_module: Any) -> None:
    external = getattr(parallel_module, "EXTERNAL_BACKENDS", None)
    if external is not None:
        external.setdefault(BACKEND_NAME, _register_backend)
        register_dask = external.get("dask")
        if register_dask is not None and not isinstance(register_dask, _DaskRegistrar):
            external["dask"] = _DaskRegistrar(register_dask)
    backends = getattr(parallel_module, "BACKENDS", None)
    if backends is not None and "dask" in backends:
        # joblib's "dask" backend was asked for before localsched was imported.
        backends["dask"] = _dask_backend_factory(backends["dask"])


def _register_backend() -> None:
    """Called by joblib the first time ``backend="localsched"`` is asked for."""
    from joblib import register_parallel_backend

    from localsched.integrations.joblib_backend import LocalschedBackend

    register_parallel_backend(BACKEND_NAME, LocalschedBackend)


class _DaskRegistrar:
    """Wraps joblib's registration of its ``"dask"`` backend, so that
    ``parallel_config(backend="dask")`` runs on a localsched client when one is
    current (a script written for dask.distributed, with only the import
    changed), and on dask.distributed's client otherwise."""

    def __init__(self, register: Any) -> None:
        self._register = register

    def __call__(self) -> None:
        self._register()
        from joblib.parallel import BACKENDS

        if "dask" in BACKENDS:
            BACKENDS["dask"] = _dask_backend_factory(BACKENDS["dask"])


def _dask_backend_factory(dask_backend: Any) -> Any:
    """The ``"dask"`` backend: localsched's for a localsched client (given as
    ``client=``, or current), else joblib's own ``dask_backend``."""
    if getattr(dask_backend, "_localsched_wrapped", False):
        return dask_backend

    def make_backend(**kwargs: Any) -> Any:
        client = kwargs.get("client")
        if client is None and kwargs.get("scheduler_host") is None:
            from localsched.client.dask_collections import current_client

            try:
                client = current_client()
            except ValueError:
                client = None
        from localsched.client.client import Client

        if not isinstance(client, Client):
            return dask_backend(**kwargs)
        from localsched.integrations.joblib_backend import LocalschedBackend

        # Options of joblib's dask backend with no meaning here: the workers
        # share the client's memory (scatter) and its event loop (loop).
        for name in ("scatter", "loop", "wait_for_workers_timeout"):
            kwargs.pop(name, None)
        kwargs["client"] = client
        return LocalschedBackend(**kwargs)

    make_backend._localsched_wrapped = True  # type: ignore[attr-defined]
    return make_backend


class _JoblibImportHook:
    """A meta-path finder that wraps ``joblib.parallel``'s loader, once."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


class _RegisteringLoader:
    """Runs the real loader, then registers the backend in the fresh module."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        # The module must report its real loader (inspect, pkgutil, reloads).
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _register(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
