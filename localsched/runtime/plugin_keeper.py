"""The scheduler-side keeper of worker plugins (scheduler thread only).

A :class:`~localsched.plugins.WorkerPlugin` is cloudpickled once (by the client)
and sent to every worker in an :class:`~localsched.transport.protocol.AddPlugin`;
the worker calls ``setup(worker)`` before it reads its next message and answers.
:class:`WorkerPluginKeeper` (an internal scheduler plugin, added with the first
worker plugin) keeps the pickles and sends them to every worker that joins
later, in the same batch as (and before) its first tasks. Clients reach it with
``AddWorkerPlugin``/``RemoveWorkerPlugin`` requests (``request_handler``).
"""

from __future__ import annotations

from concurrent.futures import Future as CellFuture
from typing import Any

from localsched.aio import new_cell
from localsched.plugins import SchedulerPlugin, WorkerPlugin, registration_name
from localsched.transport import pickling
from localsched.transport.protocol import AddPlugin

__all__ = [
    "KEEPER_NAME",
    "WorkerPluginKeeper",
    "add_message",
    "add_worker_plugin",
    "keeper_of",
]

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
            handle.outbox.append(add_message(-1, name, data, handle))

    # -- scheduler thread only -------------------------------------------------------

    def broadcast(self, make: Any) -> CellFuture[dict[str, tuple[bool, Any, str]]]:
        """Send ``make(id, handle)`` to every ready worker; a cell resolving to
        address -> (ok, payload, traceback text) once each answered or left."""
        from localsched.runtime.run_requests import PendingRun

        runtime = self.runtime
        cell: CellFuture[dict[str, tuple[bool, Any, str]]] = new_cell()
        ready = [h for h in runtime.workers.values() if h.is_ready]
        if not ready:
            cell.set_result({})
            return cell
        run_id = next(runtime.runs.ids)
        runtime.runs.pending[run_id] = PendingRun(cell, {h.address for h in ready})
        for handle in ready:
            handle.outbox.append(make(run_id, handle))
        return cell


def add_message(run_id: int, name: str, data: bytes, handle: Any) -> AddPlugin:
    return AddPlugin(
        id=run_id,
        name=name,
        plugin=data,
        address=handle.address,
        worker_name=handle.name,
    )


def keeper_of(scheduler: Any, runtime: Any) -> WorkerPluginKeeper:
    keeper = scheduler.plugins.get(KEEPER_NAME)
    if keeper is None:
        keeper = WorkerPluginKeeper(runtime)
        scheduler.add_plugin(keeper, name=KEEPER_NAME)
    return keeper


def add_worker_plugin(
    scheduler: Any, runtime: Any, plugin: WorkerPlugin, name: str | None = None
) -> None:
    """Keep a worker plugin for the workers yet to join (scheduler thread;
    ``LocalCluster(plugins=[...])`` before its workers start)."""
    keeper = keeper_of(scheduler, runtime)
    name = name or registration_name(plugin)
    keeper.worker_plugins[name] = pickling.dumps(plugin, protocol=5)
