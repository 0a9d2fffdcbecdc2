"""``SchedulerLink``: the one way a ``Client`` talks to the scheduler thread.

A client needs four things from the scheduler, and a link gives exactly those
(httpx's transport split is the model: the client above never knows what is on
the other side)::

    Client ──post(events)──────────▶ ┐
           ──request(Request)──▶ cell ├─ LocalLink: the runtime's inbox, same process
           ◀─load_result(key)──────── ┘  PipeLink:  the worker's pipe (task_client.py)
                                                  │
                       scheduler thread: request_handler.answer(runtime, asker, request)

- ``post(*events)``: client events for the core (a graph, keys released, ...),
  in order, without waiting.
- ``request(request)``: a typed request (``localsched.transport.requests``); the answer
  arrives in a ``concurrent.futures.Future`` (a cell). One handler on the
  scheduler thread answers every request, whichever link carried it, so a
  client behaves the same in the user's process and inside a task.
- ``load_result(key)`` / ``load_results(keys)``: deserialize finished results.
- ``serialize``/``release``: how this link moves values (shared memory for
  large ones in the user's process, inline bytes from a task).

:class:`~localsched.client.local_link.LocalLink` serves a client in the
process that runs the cluster (it lives with the runtime, the one module of it
a client imports): it
queues a call of the handler on the runtime's inbox, behind the events posted
before it, and reads results straight from the runtime's store. The tests'
``FakeLink`` (tests/test_client_link.py) answers requests from a table, so
client behaviour is testable without processes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future as CellFuture
from typing import TYPE_CHECKING, Any, Protocol

from localsched.aio import new_cell
from localsched.transport.requests import Request

if TYPE_CHECKING:
    from localsched.deploy.local import LocalCluster
    from localsched.scheduler.events import StateEvent
    from localsched.transport.protocol import Payload

Key = Hashable

__all__ = ["SchedulerLink", "settled"]


class SchedulerLink(Protocol):
    """What a :class:`~localsched.client.client.Client` needs from the scheduler."""

    @property
    def cluster(self) -> LocalCluster | None:
        """The ``LocalCluster`` in this process, or None (a task's client)."""
        ...

    @property
    def is_shared(self) -> bool:
        """The link serves every task of its process, and so does its client:
        the client's ``close()`` leaves it open (it closes with the worker)."""
        ...

    @property
    def in_process(self) -> bool:
        """The workers are threads of this process (``processes=False``): a
        call is handed to them by reference, unpickled (``transport.inproc``)."""
        ...

    @property
    def is_running(self) -> bool:
        """Whether the scheduler can still be reached."""
        ...

    @property
    def has_failed(self) -> bool:
        """Whether the scheduler stopped on an unexpected error (its futures
        then keep the error that says so, rather than being cancelled)."""
        ...

    def stopped_error(self) -> Exception:
        """What a call raises once the scheduler cannot be reached: why."""
        ...

    def connect(
        self,
        client_id: str,
        states: dict[Key, Any],
        on_restart: Callable[[], Any] | None,
        timeout: float | None,
        on_event: Callable[[], Any] | None = None,
    ) -> str:
        """Register a client whose futures' states live in ``states``; its id.

        ``on_restart`` and ``on_event`` are weak references to the client's
        hooks: called on a restart, and with ``(topic, event)`` for each event
        of a topic it subscribed to.
        """
        ...

    def disconnect(self, timeout: float | None) -> None:
        """Unregister the client: the scheduler releases its keys."""
        ...

    def post(self, *events: StateEvent) -> None:
        """Queue client events for the core; never blocks."""
        ...

    def request(self, request: Request) -> CellFuture[Any]:
        """Send one request; the cell resolves with the handler's answer."""
        ...

    def stimulus_id(self, name: str) -> str:
        """A fresh stimulus id for an event this client posts."""
        ...

    def load_result(self, key: Key) -> Any:
        """The deserialized result of a finished key (``KeyError`` if gone)."""
        ...

    def load_results(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """:meth:`load_result` for several keys, in one round trip if remote."""
        ...

    def request_results(self, keys: tuple[Key, ...]) -> CellFuture[Any]:
        """Ask for finished results without waiting (an asynchronous gather):
        the cell's answer goes to :meth:`decode_results`, in the caller's thread."""
        ...

    def decode_results(self, answer: Any) -> dict[Key, Any]:
        """The results a :meth:`request_results` cell answered, deserialized."""
        ...

    def serialize(self, value: Any) -> Payload:
        """A value as this link ships it (bytes, or a shared-memory ref)."""
        ...

    def release(self, payload: Payload) -> None:
        """Free a payload :meth:`serialize` made that was not used."""
        ...

    def current_task(self) -> Key | None:
        """The key of the task whose thread calls, if any (its subtasks then
        run ahead of its siblings)."""
        ...


def settled(cell: CellFuture[Any]) -> CellFuture[Any]:
    """A cell with ``cell``'s answer, where an answer that is itself a cell
    (the handler answers later: a wait, a run on workers) is followed."""
    out: CellFuture[Any] = new_cell()

    def copy(source: CellFuture[Any]) -> None:
        error = source.exception()
        if error is not None:
            out.set_exception(error)
            return
        result = source.result()
        if isinstance(result, CellFuture):
            result.add_done_callback(copy)
        else:
            out.set_result(result)

    cell.add_done_callback(copy)
    return out
