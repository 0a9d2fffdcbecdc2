"""``SchedulerLink``: the one way a ``Client`` talks to the scheduler thread.

A client needs four things from the scheduler, and a link gives exactly those
(httpx's transport split is the model: the client above never knows what is on
the other side)::

    Client ──post(events)──────────▶ ┐
           ──request(Request)──▶ cell ├─ LocalLink: the runtime's inbox, same process
           ◀─load_result(key)──────── ┘  PipeLink:  the worker's pipe (worker/link.py)
                                                  │
                       scheduler thread: request_handler.answer(runtime, asker, request)

- ``post(*events)``: client events for the core (a graph, keys released, ...),
  in order, without waiting.
- ``request(request)``: a typed request (``localsched.requests``); the answer
  arrives in a ``concurrent.futures.Future`` (a cell). One handler on the
  scheduler thread answers every request, whichever link carried it, so a
  client behaves the same in the user's process and inside a task.
- ``load_result(key)`` / ``load_results(keys)``: deserialize finished results.
- ``serialize``/``release``: how this link moves values (shared memory for
  large ones in the user's process, inline bytes from a task).

:class:`LocalLink` serves a client in the process that runs the cluster: it
queues a call of the handler on the runtime's inbox, behind the events posted
before it, and reads results straight from the runtime's store. The tests'
``FakeLink`` (tests/test_client_link.py) answers requests from a table, so
client behaviour is testable without processes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future as CellFuture
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from localsched.requests import ConnectClient, DisconnectClient, Request
from localsched.transport.shm import BlobRef

if TYPE_CHECKING:
    from localsched.cluster import LocalCluster
    from localsched.graph import TaskSpec
    from localsched.scheduler.events import StateEvent
    from localsched.transport.protocol import Payload

Key = Hashable

__all__ = ["LocalLink", "SchedulerLink", "settled"]


class SchedulerLink(Protocol):
    """What a :class:`~localsched.client.Client` needs from the scheduler."""

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
    ) -> str:
        """Register a client whose futures' states live in ``states``; its id."""
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

    def serialize(self, value: Any) -> Payload:
        """A value as this link ships it (bytes, or a shared-memory ref)."""
        ...

    def release(self, payload: Payload) -> None:
        """Free a payload :meth:`serialize` made that was not used."""
        ...

    def track_arguments(self, key: Key, spec: TaskSpec) -> None:
        """The task's arguments are in shared memory: free them once it is gone."""
        ...

    def current_task(self) -> Key | None:
        """The key of the task whose thread calls, if any (its subtasks then
        run ahead of its siblings)."""
        ...


def settled(cell: CellFuture[Any]) -> CellFuture[Any]:
    """A cell with ``cell``'s answer, where an answer that is itself a cell
    (the handler answers later: a wait, a run on workers) is followed."""
    out: CellFuture[Any] = CellFuture()

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


class LocalLink:
    """A link to the scheduler thread of a ``LocalCluster`` in this process.

    Posting appends to the runtime's inbox; a request queues the handler's call
    there, behind the events posted before it; results are read from the
    runtime's store in the calling thread (zero-copy for arrays).
    """

    is_shared = False

    def __init__(self, cluster: LocalCluster) -> None:
        from localsched.request_handler import answer
        from localsched.runtime_handles import ClientHandle

        self.cluster = cluster
        runtime = self._runtime = cluster.runtime
        store = cluster.store
        self._answer = answer
        self._handle_type = ClientHandle
        self._handle: Any = None
        # Bound once: submit and map call these per task.
        self.post = runtime.post
        self.stimulus_id = runtime.stimulus_id
        self.load_result = runtime.load_result
        self.serialize = store.serialize
        self._store = store
        self._arg_blobs = runtime.arg_blobs_pending

    @property
    def is_running(self) -> bool:
        return self._runtime.is_running

    @property
    def has_failed(self) -> bool:
        return self._runtime.failure is not None

    def stopped_error(self) -> Exception:
        return self._runtime.stopped_error()

    def connect(
        self,
        client_id: str,
        states: dict[Key, Any],
        on_restart: Callable[[], Any] | None,
        timeout: float | None,
    ) -> str:
        self._handle = self._handle_type(client_id)
        self._handle.states = states
        self.request(ConnectClient(on_restart=on_restart)).result(timeout=timeout)
        return client_id

    def disconnect(self, timeout: float | None) -> None:
        self.request(DisconnectClient()).result(timeout=timeout)

    def request(self, request: Request) -> CellFuture[Any]:
        if self._handle is None:
            raise RuntimeError("connect() the link before sending requests")
        call = partial(self._answer, self._runtime, self._handle, request)
        return settled(self._runtime.call(call))

    def release(self, payload: Payload) -> None:
        if isinstance(payload, BlobRef):  # inline bytes own nothing
            self._store.release(payload)

    def load_results(self, keys: Iterable[Key]) -> dict[Key, Any]:
        load = self.load_result
        return {key: load(key) for key in keys}

    def track_arguments(self, key: Key, spec: TaskSpec) -> None:
        self._arg_blobs.append((key, spec))  # deque appends are atomic

    def current_task(self) -> Key | None:
        return None  # the user's process runs no tasks
