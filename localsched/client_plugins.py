"""``Client.register_plugin`` and friends (a mixin of ``Client``), and the
scheduler-side keeper of worker plugins.

- A :class:`~localsched.plugins.SchedulerPlugin` is added on the scheduler
  thread with ``Scheduler.add_plugin``; its ``start`` hook runs there.
- A :class:`~localsched.plugins.WorkerPlugin` is cloudpickled once and sent to
  every worker in an :class:`~localsched.transport.protocol.AddPlugin`; the
  worker calls ``setup(worker)`` before it reads its next message and answers.
  :class:`WorkerPluginKeeper` (an internal scheduler plugin, added with the
  first worker plugin) keeps the pickles and sends them to every worker that
  joins later, in the same batch as (and before) its first tasks.

The names, defaults, return values and warnings are dask's: ``register_plugin``
returns None for a scheduler plugin and ``{address: {"status": "OK"}}`` for a
worker plugin (``{}`` when an idempotent plugin of that name exists); a setup
that raises in a worker raises in the caller. ``register_scheduler_plugin``
(FutureWarning) and ``register_worker_plugin`` (DeprecationWarning) are dask's
older spellings.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from concurrent.futures import Future as CellFuture
from typing import Any

import cloudpickle

from localsched.plugins import SchedulerPlugin, WorkerPlugin
from localsched.transport import pickling
from localsched.transport.protocol import AddPlugin, RemovePlugin

__all__ = ["PluginsMixin", "WorkerPluginKeeper"]

#: Name of the internal scheduler plugin holding worker plugins.
KEEPER_NAME = "localsched-worker-plugins"


class WorkerPluginKeeper(SchedulerPlugin):
    """Holds the worker plugins (dask's ``Scheduler.worker_plugins``: name ->
    pickled plugin) and sets them up on workers that join later."""

    name = KEEPER_NAME
    idempotent = True

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.worker_plugins: dict[str, bytes] = {}

    def add_worker(self, scheduler: Any = None, worker: Any = None, **kwargs: Any):
        handle = self.runtime.workers.get(worker)
        if handle is None:
            return
        for name, data in self.worker_plugins.items():
            handle.outbox.append(_add_message(-1, name, data, handle))

    # -- scheduler thread only -------------------------------------------------------

    def broadcast(self, make: Any) -> CellFuture[dict[str, tuple[bool, Any, str]]]:
        """Send ``make(id, handle)`` to every ready worker; a cell resolving to
        address -> (ok, payload, traceback text) once each answered or left."""
        from localsched.runtime import _PendingRun

        runtime = self.runtime
        cell: CellFuture[dict[str, tuple[bool, Any, str]]] = CellFuture()
        ready = [h for h in runtime.workers.values() if h.is_ready]
        if not ready:
            cell.set_result({})
            return cell
        run_id = next(runtime._run_ids)
        runtime._runs[run_id] = _PendingRun(cell, {h.address for h in ready})
        for handle in ready:
            handle.outbox.append(make(run_id, handle))
        return cell


def _add_message(run_id: int, name: str, data: bytes, handle: Any) -> AddPlugin:
    return AddPlugin(
        id=run_id,
        name=name,
        plugin=data,
        address=handle.address,
        worker_name=handle.name,
    )


def _keeper(scheduler: Any, runtime: Any) -> WorkerPluginKeeper:
    keeper = scheduler.plugins.get(KEEPER_NAME)
    if keeper is None:
        keeper = WorkerPluginKeeper(runtime)
        scheduler.add_plugin(keeper, name=KEEPER_NAME)
    return keeper


def _responses(answers: dict[str, tuple[bool, Any, str]]) -> dict[str, Any]:
    """Workers' answers as dask's responses; raise the first error as dask does."""
    responses: dict[str, Any] = {}
    for address in sorted(answers):
        ok, payload, traceback_text = answers[address]
        if ok:
            responses[address] = {"status": "OK"}
            continue
        error = cloudpickle.loads(payload) if isinstance(payload, bytes) else payload
        if traceback_text and error.__cause__ is None:
            from localsched.future import RemoteTraceback

            error.__cause__ = RemoteTraceback(traceback_text)
        raise error
    return responses


class PluginsMixin:
    """Plugin registration methods of ``Client``."""

    _runtime: Any
    scheduler: Any

    def register_plugin(
        self,
        plugin: SchedulerPlugin | WorkerPlugin,
        name: str | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Register a scheduler or worker plugin.

        See https://distributed.readthedocs.io/en/latest/plugins.html

        Parameters
        ----------
        plugin
            A ``SchedulerPlugin`` (added to the scheduler, its ``start`` hook
            run) or a ``WorkerPlugin`` (set up on every current and future
            worker).
        name
            Name for the plugin; default: the plugin's ``name`` attribute, else
            a generated one. A plugin of the same name is replaced.
        idempotent
            Do nothing if a plugin of that name exists (default: the plugin's
            ``idempotent`` attribute).

        Returns
        -------
        None for a scheduler plugin; for a worker plugin, address ->
        ``{"status": "OK"}`` of the workers that set it up.

        Raises
        ------
        TypeError
            A plugin class instead of an instance, or an object that is neither
            plugin type.
        Exception
            The exception the plugin's ``setup`` raised in a worker.
        """
        if isinstance(plugin, type):
            raise TypeError("Please provide an instance of a plugin, not a type.")
        if name is None:
            name = _plugin_name(plugin)
        assert name
        if idempotent is None:
            idempotent = getattr(plugin, "idempotent", False)
        assert isinstance(idempotent, bool)
        if isinstance(plugin, SchedulerPlugin):
            return self._register_scheduler_plugin(plugin, name, idempotent)
        if isinstance(plugin, WorkerPlugin):
            return self._register_worker_plugin(plugin, name, idempotent)
        raise TypeError(
            "Registering duck-typed plugins is not allowed. Please inherit from "
            "NannyPlugin, WorkerPlugin, or SchedulerPlugin to create a plugin."
        )

    def register_scheduler_plugin(
        self,
        plugin: SchedulerPlugin,
        name: str | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Register a scheduler plugin (deprecated: use :meth:`register_plugin`)."""
        warnings.warn(
            "register_scheduler_plugin is deprecated; use register_plugin instead",
            FutureWarning,
            stacklevel=2,
        )
        return self.register_plugin(plugin, name=name, idempotent=idempotent)

    def register_worker_plugin(
        self,
        plugin: WorkerPlugin | None = None,
        name: str | None = None,
        nanny: bool | None = None,
    ) -> Any:
        """Register a worker plugin (deprecated: use :meth:`register_plugin`)."""
        warnings.warn(
            "`Client.register_worker_plugin` has been deprecated; "
            "please `Client.register_plugin` instead",
            DeprecationWarning,
            stacklevel=2,
        )
        if nanny:
            raise ValueError(
                "localsched has no nanny processes; register a WorkerPlugin instead"
            )
        if plugin is None:
            raise ValueError("register_worker_plugin needs a plugin")
        return self.register_plugin(plugin, name=name)

    def register_worker_callbacks(
        self, setup: Callable[..., Any] | None = None
    ) -> dict[str, Any]:
        """Run ``setup`` on every current and future worker (dask's older API).

        A ``setup`` with a ``dask_worker`` parameter gets the worker object
        there. Registered as a worker plugin of its own (each call adds one).

        Returns
        -------
        dict
            address -> ``{"status": "OK"}``, as :meth:`register_plugin`.
        """
        return self.register_plugin(_WorkerSetupPlugin(setup))

    def unregister_worker_plugin(self, name: str, nanny: bool | None = None) -> Any:
        """Tear down and remove the worker plugin ``name`` on every worker.

        Returns
        -------
        dict
            address -> ``{"status": "OK"}``.

        Raises
        ------
        ValueError
            No worker plugin of that name is registered.
        """
        if nanny:
            raise ValueError("localsched has no nanny processes")
        scheduler = self.scheduler
        runtime = self._runtime

        def start() -> Any:
            keeper = scheduler.plugins.get(KEEPER_NAME)
            if keeper is None or name not in keeper.worker_plugins:
                raise ValueError(f"The worker plugin {name} does not exist")
            del keeper.worker_plugins[name]
            return keeper.broadcast(lambda i, _h: RemovePlugin(id=i, name=name))

        cell = runtime.call(start).result()
        return _responses(cell.result())

    def unregister_scheduler_plugin(self, name: str) -> None:
        """Remove the scheduler plugin ``name``."""
        scheduler = self.scheduler
        self._runtime.call(lambda: scheduler.remove_plugin(name)).result()

    def _register_scheduler_plugin(
        self, plugin: SchedulerPlugin, name: str, idempotent: bool
    ) -> None:
        scheduler = self.scheduler

        def add() -> None:
            if name in scheduler.plugins and idempotent:
                return
            scheduler.add_plugin(plugin, name=name, idempotent=idempotent)

        self._runtime.call(add).result()

    def _register_worker_plugin(
        self, plugin: WorkerPlugin, name: str, idempotent: bool
    ) -> dict[str, Any]:
        data = pickling.dumps(plugin, protocol=5)
        scheduler = self.scheduler
        runtime = self._runtime

        def start() -> CellFuture[Any] | None:
            keeper = _keeper(scheduler, runtime)
            if name in keeper.worker_plugins and idempotent:
                return None
            keeper.worker_plugins[name] = data
            return keeper.broadcast(
                lambda i, handle: _add_message(i, name, data, handle)
            )

        cell = runtime.call(start).result()
        if cell is None:
            return {}
        return _responses(cell.result())


class _WorkerSetupPlugin(WorkerPlugin):
    """Runs a ``register_worker_callbacks`` function at setup (dask's class)."""

    def __init__(self, setup: Callable[..., Any] | None) -> None:
        self._setup = setup

    def setup(self, worker: Any) -> Any:
        if self._setup is None:
            return None
        try:
            parameters = inspect.signature(self._setup).parameters
        except (TypeError, ValueError):
            parameters = {}  # type: ignore[assignment]
        if "dask_worker" in parameters:
            return self._setup(dask_worker=worker)
        return self._setup()


def _plugin_name(plugin: Any) -> str:
    """dask's ``_get_plugin_name``: the ``name`` attribute, else a unique name."""
    if hasattr(plugin, "name"):
        return plugin.name
    import uuid

    return f"{type(plugin).__name__}-{uuid.uuid4()}"


def add_worker_plugin(
    scheduler: Any, runtime: Any, plugin: WorkerPlugin, name: str | None = None
) -> None:
    """Keep a worker plugin for the workers yet to join (scheduler thread;
    ``LocalCluster(plugins=[...])`` before its workers start)."""
    keeper = _keeper(scheduler, runtime)
    name = name or _plugin_name(plugin)
    keeper.worker_plugins[name] = pickling.dumps(plugin, protocol=5)
