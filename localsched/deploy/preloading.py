"""Scheduler preload scripts (dask's ``distributed.preloading``, local only).

``LocalCluster(preload=[...])`` names Python files (``"path/to/file.py"``),
importable modules (``"package.module"``) or the text of a module (anything
with a space in it). Each is imported when the cluster starts; its
``dask_setup(scheduler)`` runs on the scheduler thread before the scheduler
plugins' ``start`` hooks, and its ``dask_teardown(scheduler)`` when the cluster
closes. A ``dask_setup`` that is a ``click.Command`` gets ``preload_argv``
parsed by click and its ``callback`` called, as in dask. Web addresses are not
supported (no downloads here).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import tempfile
from collections.abc import Iterable
from types import ModuleType
from typing import Any

logger = logging.getLogger("localsched.deploy.preloading")

__all__ = ["Preload", "process_preloads", "start_scheduler", "teardown_preloads"]


def _import_file(path: str) -> ModuleType:
    directory, filename = os.path.split(os.path.abspath(path))
    name = os.path.splitext(filename)[0]
    spec = importlib.util.spec_from_file_location(name, os.path.abspath(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"Cannot import preload file {path!r}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, directory)
    try:
        spec.loader.exec_module(module)
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(directory)
    sys.modules[name] = module
    return module


def _import_module(name: str) -> ModuleType:
    if name.startswith(("http://", "https://")):
        raise ValueError(f"localsched cannot download preload scripts: {name!r}")
    if name.endswith(".py"):
        return _import_file(name)
    if " " not in name:
        if name not in sys.modules:
            importlib.import_module(name)
        return sys.modules[name]
    # The text of a script.
    fd, path = tempfile.mkstemp(suffix=".py", prefix="localsched_preload_")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(name)
        return _import_file(path)
    finally:
        os.unlink(path)


def _resolve(result: Any) -> None:
    if inspect.isawaitable(result):
        import asyncio

        async def finish() -> Any:
            return await result

        asyncio.run(finish())


class Preload:
    """One preload module and the object (the scheduler) it sets up."""

    def __init__(self, dask_object: Any, name: str, argv: Iterable[str] = ()) -> None:
        self.dask_object = dask_object
        self.name = name
        self.argv = list(argv)
        self.module = _import_module(name)

    def start(self) -> None:
        """Run ``dask_setup`` (a plain function or a click command)."""
        dask_setup = getattr(self.module, "dask_setup", None)
        if dask_setup is None:
            return
        logger.info("Run preload setup: %s", self.name)
        if _is_click_command(dask_setup):
            context = dask_setup.make_context(
                "dask_setup", list(self.argv), allow_extra_args=False
            )
            _resolve(
                dask_setup.callback(self.dask_object, *context.args, **context.params)
            )
        else:
            _resolve(dask_setup(self.dask_object))

    def teardown(self) -> None:
        """Run ``dask_teardown`` if the module has one."""
        dask_teardown = getattr(self.module, "dask_teardown", None)
        if dask_teardown is not None:
            logger.info("Run preload teardown: %s", self.name)
            _resolve(dask_teardown(self.dask_object))


def _is_click_command(obj: Any) -> bool:
    click = sys.modules.get("click")  # a click command means click is imported
    return click is not None and isinstance(obj, click.Command)


def process_preloads(
    dask_object: Any,
    preload: str | Iterable[str] | None,
    preload_argv: Iterable[str] | Iterable[Iterable[str]] = (),
) -> list[Preload]:
    """Import each preload (dask's ``process_preloads``)."""
    if not preload:
        return []
    names = [preload] if isinstance(preload, str) else list(preload)
    argv = list(preload_argv or ())
    if argv and not isinstance(argv[0], str):
        argvs = [list(a) for a in argv]  # one argv per preload
    else:
        argvs = [list(argv)] * len(names)  # type: ignore[arg-type]
    argvs += [[]] * (len(names) - len(argvs))
    return [Preload(dask_object, n, a) for n, a in zip(names, argvs, strict=False)]


def start_scheduler(
    scheduler: Any,
    runtime: Any,
    plugins: Iterable[Any] = (),
    preload: str | Iterable[str] | None = None,
    preload_argv: Iterable[Any] = (),
) -> list[Preload]:
    """Start ``scheduler`` as dask's ``Scheduler.start`` does (on the scheduler
    thread): add ``plugins`` (worker plugins go to every worker), run the
    preloads' ``dask_setup``, then the plugins' ``start`` hooks.

    A preload that cannot be imported raises; a ``dask_setup`` that raises is
    logged, as in dask. Returns the preloads, for :func:`teardown_preloads`.
    """
    from localsched.plugins import WorkerPlugin

    for plugin in plugins:
        if isinstance(plugin, WorkerPlugin):
            from localsched.runtime.plugin_keeper import add_worker_plugin

            add_worker_plugin(scheduler, runtime, plugin)
        else:
            scheduler.add_plugin(plugin)
    preloads = process_preloads(scheduler, preload, preload_argv)
    for item in preloads:
        try:
            item.start()
        except Exception:
            logger.exception("Failed to start preload: %s", item.name)
    scheduler.start()
    return preloads


def teardown_preloads(preloads: list[Preload]) -> None:
    """Run each preload's ``dask_teardown``, last first; errors are logged."""
    for item in reversed(preloads):
        try:
            item.teardown()
        except Exception:
            logger.exception("Failed to tear down preload: %s", item.name)
