"""The scheduler thread's records of worker processes and clients.

A :class:`WorkerHandle` is the runtime's view of one worker process (its pipe,
process, what was sent to it, why it left); a :class:`ClientHandle` holds the
futures' states of one client, resolved by the scheduler thread. A worker's own
client (``get_client()`` in a task) is a :class:`WorkerClientHandle` whose states
stand for futures living in the worker process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from localsched.future_state import FutureState
from localsched.scheduler import events as ev
from localsched.transport import pickling
from localsched.transport.protocol import KeyUpdate, Message, TopicEvent

if TYPE_CHECKING:
    from localsched.runtime.supervision import StderrRelay
    from localsched.transport.executing import ExecutingPage

Key = Hashable


class WorkerHandle:
    """The runtime's view of one worker process."""

    __slots__ = (
        "address",
        "conn",
        "executing_at_exit",
        "executing_page",
        "exit_cause",
        "exit_reason",
        "has_forgets",
        "is_ready",
        "leases",
        "memory_limit",
        "name",
        "nthreads",
        "outbox",
        "path_len",
        "pid",
        "process",
        "resources",
        "restarting",
        "said_goodbye",
        "sent_functions",
        "started",
        "stderr_relay",
        "writer_owner",
    )

    def __init__(
        self, address: str, name: Any, process: Any, conn: Connection, nthreads: int
    ) -> None:
        self.address = address
        self.name = name
        self.process = process
        self.conn = conn
        self.nthreads = nthreads
        self.pid: int = process.pid or 0
        #: Names its result segments when it is a thread of this process (its
        #: pid is then everyone's); None: its pid does.
        self.writer_owner: str | None = None
        #: Messages to send at the end of this loop turn.
        self.outbox: list[Message] = []
        #: The outbox holds a ``ForgetKeys`` (merged before the send).
        self.has_forgets = False
        #: ``len(sys.path)`` when it was last sent ``ExtendPath`` (-1: never).
        self.path_len = -1
        #: Function tokens this worker already has.
        self.sent_functions: set[str] = set()
        self.is_ready = False
        self.said_goodbye = False
        #: The runtime stopped it to restart it (force-cancel, ``Client.restart``):
        #: its exit is expected, and the cluster starts a replacement.
        self.restarting = False
        #: Segments granted and (as far as we know) not yet used by a result.
        self.leases = 0
        #: Bytes this worker may use (``LocalCluster(memory_limit=)``; 0: none).
        self.memory_limit = 0
        #: Why it died, in words (exit code or signal, cause, last stderr lines);
        #: set by the runtime when it exits without a goodbye.
        self.exit_reason = ""
        #: Set by whoever kills it on purpose, before killing it, to explain the
        #: death in ``KilledWorker`` and the log (the memory monitor: "it used 95%
        #: of its memory budget (...) and was restarted by the memory monitor").
        self.exit_cause: str | None = None
        #: The tasks it is executing, readable after its death (None: unknown).
        self.executing_page: ExecutingPage | None = None
        #: Keys it was executing when it crashed (None: unknown or no crash).
        self.executing_at_exit: list[Hashable] | None = None
        #: Forwards its stderr and keeps the last lines (None: not captured).
        self.stderr_relay: StderrRelay | None = None
        #: time.monotonic() when it was started.
        self.started = time.monotonic()
        #: Abstract resources the worker offers (``LocalCluster(resources=)``).
        self.resources: dict[str, float] = {}

    @property
    def holder(self) -> int | str:
        """Who owns its segments for the store's ``lease``/``reclaim``."""
        return self.pid if self.writer_owner is None else self.writer_owner

    @property
    def sentinel(self) -> int | None:
        """Readable when the process exits; None: its pipe's EOF says so."""
        return self.process.sentinel


class ClientHandle:
    """Futures' states of one client, resolved by the scheduler thread."""

    def __init__(self, client_id: str) -> None:
        self.id = client_id
        #: key -> the client's ``FutureState`` (the client's own dict, shared).
        self.states: dict[Key, FutureState] = {}
        #: A weak reference to the client's restart hook (``Client._on_restart``).
        self.on_restart: Callable[[], Any] | None = None
        #: A weak reference to the client's event sink (``Client._deliver_event``).
        self.on_event: Callable[[], Any] | None = None

    def deliver(self, topic: str, event: tuple[float, Any]) -> None:
        """An event of a topic the client subscribed to (scheduler thread):
        queued for the client's own event thread, which runs its handler."""
        sink = None if self.on_event is None else self.on_event()
        if sink is not None:
            sink(topic, event)

    def watch(self, keys: Iterable[Key]) -> None:
        """The client made futures of these keys itself (their states are in
        ``states`` already): nothing to do for a client in this process."""


class _RemoteFutureState:
    """Stands for a ``FutureState`` of a worker's client: resolving it sends a
    ``KeyUpdate`` to that worker, whose control thread resolves the real one."""

    __slots__ = ("key", "worker")

    def __init__(self, worker: WorkerHandle, key: Key) -> None:
        self.worker = worker
        self.key = key

    def _send(self, status: str, payload: object) -> None:
        self.worker.outbox.append(
            KeyUpdate(key=self.key, status=status, payload=payload)
        )

    def finish(self, type_name: str | None) -> None:
        self._send("finished", type_name)

    def set_error(self, exception: BaseException, traceback_text: str) -> None:
        try:
            payload = pickling.dumps((exception, traceback_text), protocol=5)
        except Exception:
            payload = pickling.dumps(
                (RuntimeError(repr(exception)), traceback_text), protocol=5
            )
        self._send("error", payload)

    def cancel(self, reason: str) -> None:
        self._send("cancelled", reason)

    def reset(self, status: str = "pending") -> None:
        self._send("pending", None)


class WorkerClientHandle(ClientHandle):
    """The client of the tasks of one worker (``get_client()`` in a task)."""

    #: Client events a worker may send, with the client they speak for.
    EVENTS = (
        ev.UpdateGraph,
        ev.ClientReleasesKeys,
        ev.ClientDesiresKeys,
        ev.CancelRequested,
        ev.RetryRequested,
    )

    def __init__(self, worker: WorkerHandle) -> None:
        super().__init__(f"worker-client-{worker.address}")
        self.worker = worker

    def deliver(self, topic: str, event: tuple[float, Any]) -> None:
        """Send the event to the worker, whose client's handler runs there."""
        try:
            payload = pickling.dumps(event, protocol=5)
        except Exception as exc:
            payload = pickling.dumps(
                (event[0], f"<the event could not be pickled: {exc!r}>"), protocol=5
            )
        self.worker.outbox.append(TopicEvent(topic=topic, event=payload))

    def watch(self, keys: Iterable[Key]) -> None:
        """Report these keys' status changes to the worker (``KeyUpdate``)."""
        states = self.states
        for key in keys:
            if key not in states:
                states[key] = _RemoteFutureState(self.worker, key)  # type: ignore[assignment]
