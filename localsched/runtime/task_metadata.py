"""``get_task_metadata``'s collector: a scheduler plugin per open block.

``StartTaskMetadata(name)`` adds a :class:`CollectTaskMetadata` plugin under
``name``; it notes the keys of every graph submitted while it is there, and
the metadata and final state (``"memory"`` or ``"erred"``) of those keys as
they finish. ``StopTaskMetadata(name)`` removes it and answers what it saw (as
dask's ``Scheduler.start_task_metadata``/``stop_task_metadata``). Both handlers
run on the scheduler thread (``request_handler.py`` merges :data:`HANDLERS`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from localsched.plugins import SchedulerPlugin
from localsched.runtime.handles import ClientHandle
from localsched.transport import requests as rq

if TYPE_CHECKING:
    from localsched.runtime.scheduler_thread import SchedulerRuntime

Key = Hashable

__all__ = ["HANDLERS", "CollectTaskMetadata"]


class CollectTaskMetadata(SchedulerPlugin):
    """Metadata and final state of the tasks submitted while it is added
    (dask's ``CollectTaskMetaDataPlugin``)."""

    def __init__(self, scheduler: Any, name: str) -> None:
        self.scheduler = scheduler
        self.name = name
        self.keys: set[Key] = set()
        self.metadata: dict[Key, Any] = {}
        self.state: dict[Key, str] = {}

    def update_graph(self, scheduler: Any, *, keys: set[Key], **kwargs: Any) -> None:
        self.keys.update(keys)

    def transition(
        self, key: Key, start: str, finish: str, *args: Any, **kwargs: Any
    ) -> None:
        if finish in ("memory", "erred") and key in self.keys:
            ts = self.scheduler.tasks.get(key)
            if ts is not None:
                self.metadata[key] = ts.metadata
                self.state[key] = finish


def _start(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.StartTaskMetadata
) -> None:
    scheduler = runtime.scheduler
    scheduler.add_plugin(CollectTaskMetadata(scheduler, r.name), name=r.name)


def _stop(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.StopTaskMetadata
) -> dict[str, dict[Key, Any]]:
    scheduler = runtime.scheduler
    plugin = scheduler.plugins.get(r.name)
    if not isinstance(plugin, CollectTaskMetadata):
        raise ValueError(
            "Expected to find exactly one CollectTaskMetaDataPlugin "
            f"with name {r.name} but found 0."
        )
    scheduler.remove_plugin(r.name)
    return {"metadata": plugin.metadata, "state": plugin.state}


HANDLERS: dict[type[rq.Request], Callable[[Any, Any, Any], Any]] = {
    rq.StartTaskMetadata: _start,
    rq.StopTaskMetadata: _stop,
}
