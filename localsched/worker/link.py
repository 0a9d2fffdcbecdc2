"""``PipeLink``: the worker's link to the scheduler thread, over its own pipe.

The client a task gets is a plain :class:`~localsched.client.client.Client` on this
link, one per worker (``worker-client-<address>``), shared by its tasks. The
link speaks over the worker's own pipe::

    task thread ── post(events) ─────▶ LinkEvents  ──┐
                ── request(Request) ─▶ LinkRequest ──┼─▶ sender thread ─▶ pipe
                   cell ◀── answered() ◀── LinkReply ┐
    futures' states ◀── on_key_update() ◀── KeyUpdate ┤
    the client's topic handlers ◀── on_topic_event() ◀┴── control thread ◀─ pipe
                                         (TopicEvent)

On the scheduler's side the same request handler answers as for a client in
the user's process (``localsched.runtime.request_handler``), so the client behaves the
same. Differences: values travel inline (``scatter`` and task arguments are
for small values here), and a result is fetched with a ``Gather`` request.

The worker owns it (``Worker.pipe_link()``): it logs events through it, and
the client of its tasks, built by :mod:`localsched.client.task_client` on
first ``get_client()``, talks through it. This module imports neither the
client, the runtime nor the scheduler core.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future as CellFuture
from typing import TYPE_CHECKING, Any

import cloudpickle

from localsched.errors import ClosedClientError
from localsched.transport import pickling
from localsched.transport.protocol import (
    KeyUpdate,
    LinkEvents,
    LinkRequest,
    TopicEvent,
)
from localsched.transport.requests import Gather, Ping, Request
from localsched.transport.shm import load
from localsched.worker.context import thread_state

if TYPE_CHECKING:
    from localsched.scheduler.events import StateEvent
    from localsched.transport.protocol import Payload
    from localsched.worker.main import Worker

Key = Hashable

__all__ = ["PipeLink"]

logger = logging.getLogger("localsched.worker")


class PipeLink:
    """A :class:`~localsched.client.link.SchedulerLink` over a worker's pipe."""

    cluster = None
    is_shared = True
    #: A task's calls are pickled: its worker may be another process.
    in_process = False

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._ids = itertools.count(1)
        self._stimuli = itertools.count()
        self._lock = threading.Lock()
        #: request id -> the cell its ``LinkReply`` resolves.
        self._replies: dict[int, CellFuture[Any]] = {}
        self._states: dict[Key, Any] = {}
        self._closed_reason: str | None = None
        #: A weak reference to the client's event sink (``connect``).
        self._on_event: Callable[[], Any] | None = None
        self.client_id = f"worker-client-{worker.address}"

    @property
    def is_running(self) -> bool:
        return self._closed_reason is None

    #: A worker's link stops only when its worker does.
    has_failed = False

    def stopped_error(self) -> Exception:
        return ClosedClientError(
            f"The worker's link to the scheduler is closed: {self._closed_reason}"
        )

    def connect(
        self,
        client_id: str,
        states: dict[Key, Any],
        on_restart: Callable[[], Any] | None,
        timeout: float | None,
        on_event: Callable[[], Any] | None = None,
    ) -> str:
        # The scheduler registers the worker's client on its first message, and
        # names it after the worker (one per worker): ``client_id`` is not used.
        self._states = states
        self._on_event = on_event
        if timeout is not None:
            # As dask's worker client, which connects within ``timeout``: the
            # first message makes the round trip now.
            try:
                self.request(Ping()).result(timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"Timed out trying to connect to the scheduler after {timeout} s"
                ) from None
        return self.client_id

    def disconnect(self, timeout: float | None) -> None:
        raise RuntimeError("A task's client closes with its worker")

    def post(self, *events: StateEvent) -> None:
        self._send(LinkEvents(events=pickling.dumps(list(events), protocol=5)))

    def request(self, request: Request) -> CellFuture[Any]:
        cell: CellFuture[Any] = CellFuture()
        # Running from birth (as ``localsched.aio.new_cell``, not imported in
        # workers): a task's coroutine that stops awaiting it (wrap_future)
        # cannot cancel it, so the reply never meets a cancelled cell.
        cell.set_running_or_notify_cancel()
        request_id = next(self._ids)
        with self._lock:
            if self._closed_reason is not None:
                cell.set_exception(RuntimeError(self._closed_reason))
                return cell
            self._replies[request_id] = cell
        payload = pickling.dumps(request, protocol=5)
        self._send(LinkRequest(id=request_id, request=payload))
        return cell

    def _send(self, message: LinkEvents | LinkRequest) -> None:
        # The sender thread writes: a message may come from the control thread
        # (a future garbage collected there), which must never block on the pipe.
        self._worker._outbox.post_nowait(message)

    def stimulus_id(self, name: str) -> str:
        return f"{name}-w{next(self._stimuli)}"  # renumbered by the scheduler

    def load_result(self, key: Key) -> Any:
        return self.load_results([key])[key]

    def load_results(self, keys: Iterable[Key]) -> dict[Key, Any]:
        return self.decode_results(self.request_results(tuple(keys)).result())

    def request_results(self, keys: tuple[Key, ...]) -> CellFuture[Any]:
        return self.request(Gather(keys=keys))

    @staticmethod
    def decode_results(answer: Any) -> dict[Key, Any]:
        return {key: load(payload) for key, payload in answer.items()}

    @staticmethod
    def serialize(value: Any) -> Payload:
        data: bytes = pickling.dumps(value, protocol=5)
        return data

    @staticmethod
    def release(payload: Payload) -> None:
        pass  # inline bytes own nothing

    def current_task(self) -> Key | None:
        return getattr(thread_state, "key", None)

    # -- the worker's control thread -----------------------------------------------

    def answered(self, request_id: int, ok: bool, payload: bytes) -> None:
        """A ``LinkReply`` arrived: resolve its request's cell."""
        with self._lock:
            cell = self._replies.pop(request_id, None)
        if cell is None:
            return
        try:
            value = cloudpickle.loads(payload)
        except Exception as exc:
            cell.set_exception(
                RuntimeError(f"the scheduler's answer could not be read: {exc!r}")
            )
            return
        if ok:
            cell.set_result(value)
        else:
            cell.set_exception(value)

    def on_key_update(self, message: KeyUpdate) -> None:
        """The scheduler reports a new status of a key of this client."""
        state = self._states.get(message.key)
        if state is None:
            return
        status = message.status
        if status == "finished":
            state.finish(message.payload)
        elif status == "error":
            try:
                exception, text = cloudpickle.loads(message.payload)
            except Exception as exc:
                exception, text = RuntimeError(f"the task failed: {exc!r}"), ""
            state.set_error(exception, text)
        elif status == "cancelled":
            state.cancel(str(message.payload))
        else:
            state.reset()

    def on_topic_event(self, message: TopicEvent) -> None:
        """An event of a topic the client subscribed to: hand it over (the
        client's handlers run on a thread of its own, never this one)."""
        sink = None if self._on_event is None else self._on_event()
        if sink is None:
            return
        try:
            event = cloudpickle.loads(message.event)
        except Exception:
            logger.warning("An event of %r could not be read", message.topic)
            return
        sink(message.topic, event)

    def close(self, reason: str) -> None:
        """The worker is going: fail what waits for the scheduler."""
        with self._lock:
            self._closed_reason = reason
            replies, self._replies = self._replies, {}
        for cell in replies.values():
            cell.set_exception(RuntimeError(reason))
        for state in list(self._states.values()):
            state.cancel("worker-closed")
