"""What a client asks the scheduler thread: typed requests, one class each.

A :class:`~localsched.client.link.SchedulerLink` carries these from a
:class:`~localsched.client.client.Client` to the one request handler on the scheduler
thread (``localsched.runtime.request_handler``), which answers each with one value or
one exception. In the user's process the request object itself reaches the
handler; from inside a task (``get_client()``) it is cloudpickled into a
``LinkRequest`` wire message and answered by a ``LinkReply``. Either way the
same handler runs, so a ``Client`` behaves the same in both places.

This module imports nothing of the runtime or the scheduler core: a worker
process reads it without loading either. Every request is a frozen, slotted,
keyword-only dataclass; its docstring says what the answer is. A field that
holds user objects (a plugin, a function) is pickled with the request when it
crosses the pipe.

Client *events* (a graph to compute, keys released, desired, cancelled or
retried) are not requests: nobody waits for an answer, so a link posts them
(``SchedulerLink.post``) in order with the requests.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Key = Hashable

__all__ = [
    "ActorCall",
    "AddSchedulerPlugin",
    "AddWorkerPlugin",
    "CallStack",
    "CancelPending",
    "ClusterDump",
    "ConnectClient",
    "Coordinate",
    "DisconnectClient",
    "ForceCancel",
    "Gather",
    "GetEvents",
    "GetMetadata",
    "HasWhat",
    "LogEvent",
    "NBytes",
    "NThreads",
    "Operation",
    "Ping",
    "Processing",
    "Profile",
    "RecordingData",
    "RemoveSchedulerPlugin",
    "RemoveWorkerPlugin",
    "Replicate",
    "Request",
    "Restart",
    "RestartWorkers",
    "RetireWorkers",
    "RunOnScheduler",
    "RunOnWorkers",
    "Scatter",
    "SchedulerInfo",
    "SchedulerLogs",
    "SetMetadata",
    "StartRecording",
    "StartTaskMetadata",
    "StopRecording",
    "StopTaskMetadata",
    "Story",
    "SubscribeTopic",
    "TaskRunSpecs",
    "TaskStream",
    "TaskStreamIndex",
    "WaitFor",
    "WhoHas",
    "WorkerLogs",
    "WorkerStatus",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """Base class of every request; not sent itself."""


# -- the client's own lifecycle ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectClient(Request):
    """Register the asking client with the scheduler; answers None.

    In-process only: the scheduler thread resolves the client's futures' states
    in place and calls ``on_restart()()`` on a restart. A task's client is
    registered by its first message instead.
    """

    #: A weak reference to the client's restart hook, or None.
    on_restart: Callable[[], Any] | None = None
    #: A weak reference to the client's ``(topic, event)`` sink, or None: the
    #: client is then subscribed to ``"print"`` and ``"warn"`` (as dask's is).
    on_event: Callable[[], Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DisconnectClient(Request):
    """Forget the asking client: every key it holds is released; answers None."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Request):
    """A round trip; answers None once the scheduler has handled every event
    the client posted before it (a barrier)."""


# -- data -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Gather(Request):
    """Answers key -> serialized result (inline bytes or a ``BlobRef``).

    Raises ``KeyError`` naming the keys that have no result (released).
    """

    keys: tuple[Key, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Scatter(Request):
    """Install serialized values as results held by the asking client; None.

    A key that has a result already keeps it (the new payload is freed).
    """

    data: tuple[tuple[Key, Any], ...]
    #: Worker addresses or names to record as holders (round robin); None: the
    #: asking task's worker, or every worker for an in-process client.
    workers: tuple[Any, ...] | None = None
    #: Record every target worker as a holder of every value (dask's
    #: ``broadcast=True``; the values are in shared memory, readable by all).
    broadcast: bool = False
    #: key -> the value's size in memory (dask's ``sizeof``); missing keys
    #: count their serialized size.
    nbytes: Mapping[Key, int] = field(default_factory=dict)
    #: key -> qualified name of the value's type (``TaskState.type``).
    types: Mapping[Key, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ForceCancel(Request):
    """``Client.cancel(force=True)``: cancel the keys and restart the workers
    still running them; answers the restarted workers' addresses."""

    keys: tuple[Key, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelPending(Request):
    """``concurrent.futures``' cancel (``client.get_executor()``): cancel those
    keys whose tasks have not started; answers the keys left alone.

    Left alone: a task executing on a worker, or next in line for a free thread
    of the worker it was sent to (as a process pool's call queue), and a key
    that is done or unknown. Everything else is cancelled as by ``cancel()``.
    """

    keys: tuple[Key, ...]


# -- introspection ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerInfo(Request):
    """Answers ``Client.scheduler_info()``'s dict."""

    #: Workers to describe (-1: all).
    n_workers: int = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class NThreads(Request):
    """Answers address -> threads, of every worker or of those named."""

    workers: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WhoHas(Request):
    """Answers key -> addresses of the workers holding its result (every key in
    memory, or the keys given)."""

    keys: tuple[Key, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HasWhat(Request):
    """Answers address -> keys whose results the worker holds."""

    workers: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Processing(Request):
    """Answers address -> keys the worker runs or has queued."""

    workers: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Story(Request):
    """Answers every logged transition of these keys or stimulus ids."""

    keys: tuple[Any, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class NBytes(Request):
    """Answers result sizes by key (``summary``: summed by key prefix)."""

    keys: tuple[Key, ...] | None = None
    summary: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStatus(Request):
    """Answers address -> status (``"running"``, ``"closing_gracefully"``, ...)
    of every worker the scheduler knows."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStream(Request):
    """Answers task stream records (see ``Client.get_task_stream``)."""

    start: float | str | None = None
    stop: float | str | None = None
    count: int | None = None
    #: Records from this buffer position on (the ``get_task_stream`` block).
    start_index: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStreamIndex(Request):
    """Answers how many task stream records were ever appended (a cursor)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StartRecording(Request):
    """Start recording tasks, memory and cluster events (``performance_report``,
    ``get_task_stream(plot=...)``); answers the session's id."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StopRecording(Request):
    """End a recording session; answers what it saw, a :class:`RecordingData`.
    Raises ``KeyError`` for a session that is not open."""

    session: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StartTaskMetadata(Request):
    """Start collecting the metadata and final state of the tasks submitted
    from now on, under ``name`` (``get_task_metadata``); None."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StopTaskMetadata(Request):
    """Stop the collection ``name``; answers ``{"metadata": {key: ...},
    "state": {key: "memory" | "erred"}}``. Raises ``ValueError`` for a name
    that is not collecting."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingData:
    """What a session saw, as plain tuples (``StopRecording``'s answer).

    ``tasks``: ``(key, worker address, thread, load_start, start, stop, nbytes,
    type, error text or None)``, one per run that ended (``load_start`` 0.0:
    no dependencies to load). ``memory``: ``(time, managed, spilled, {address:
    unmanaged})``. ``events``: ``(time, kind, worker address, detail)`` where
    kind is ``added``, ``removed``, ``died``, ``restarted``, ``paused``,
    ``resumed``, ``terminated``, ``restarting`` (the memory monitor restarts
    it) or ``spilled``. ``workers``: address ->
    ``{"name", "nthreads", "memory_limit"}`` of every worker seen.
    """

    start: float
    stop: float
    tasks: list[tuple[Any, ...]] = field(default_factory=list)
    memory: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The memory budget (sum of the limits, capped by the machine); 0: none.
    budget: int = 0
    #: Task entries of this session dropped to stay within ``MAX_ENTRIES``.
    dropped: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class GetMetadata(Request):
    """Answers the value ``SetMetadata`` stored at ``keys``, else ``default``
    (``...``: raise ``KeyError``)."""

    keys: tuple[Any, ...]
    default: Any = ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SetMetadata(Request):
    """Store ``value`` at ``keys`` (nested dicts made on demand); None."""

    keys: tuple[Any, ...]
    value: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRunSpecs(Request):
    """Answers key -> ``(run_spec, blamed key)`` of each known task: what it
    runs (its ``TaskSpec``) and the key whose error it carries (None unless it
    erred). ``Client.recreate_error_locally`` and ``recreate_task_locally``."""

    keys: tuple[Key, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterDump(Request):
    """Answers the scheduler's state as plain data (str keys, lists, numbers):
    ``{"scheduler": ..., "workers": {address: ...}}`` for
    ``Client.dump_cluster_state``."""

    #: Task attributes left out (dask's ``exclude``).
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Replicate(Request):
    """Record ``n`` holders (None: every worker) of each finished key, chosen
    among ``workers``; None. Results live in shared memory, so every worker
    reads the one copy: a holder is a worker the scheduler may count on."""

    keys: tuple[Key, ...]
    n: int | None = None
    workers: tuple[Any, ...] | None = None


# -- events and logs ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEvent(Request):
    """Record ``msg`` under each topic (``Client.log_event``); None. Subscribers
    receive ``(time, msg)``, and plugins' ``log_event`` hooks run."""

    topics: tuple[str, ...]
    msg: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class GetEvents(Request):
    """Answers the topic's ``((time, msg), ...)``, or of every topic a dict
    topic -> events (``topic`` None), oldest first."""

    topic: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeTopic(Request):
    """Send the asking client every event later logged under ``topic``
    (``subscribe=False``: stop); None."""

    topic: str
    subscribe: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerLogs(Request):
    """Answers the scheduler process's recent log records, newest first, as
    ``(level, text)`` (``timestamps``: ``(time, level, text)``)."""

    n: int | None = None
    timestamps: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerLogs(Request):
    """Answers address -> that worker's recent log records, as
    :class:`SchedulerLogs`; every worker, or those named."""

    n: int | None = None
    workers: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStack(Request):
    """Answers address -> key -> the call stack (lines, outermost first) of
    each task executing now: of these keys (or those they wait for), or all."""

    keys: tuple[Key, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile(Request):
    """Answers the statistical profile of work done between ``start`` and
    ``stop`` (``time.time()``): merged, or address -> profile."""

    #: A key prefix (``"inc"``); None: every task.
    key: str | None = None
    start: float | None = None
    stop: float | None = None
    workers: tuple[Any, ...] | None = None
    merge_workers: bool = True


# -- running things -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOnScheduler(Request):
    """Answers ``function(*args, **kwargs)`` run on the scheduler thread (a
    ``dask_scheduler`` parameter receives the ``Scheduler``)."""

    function: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOnWorkers(Request):
    """``Client.run``: answers address -> (ok, pickled result or exception,
    traceback text) once every ready worker answered or left."""

    #: Cloudpickled function and ``(args, kwargs)``.
    function: bytes
    args: bytes
    workers: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Restart(Request):
    """Restart every worker and forget every task; answers the old workers'
    addresses. Refused from inside a task (its own worker would be killed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartWorkers(Request):
    """Restart these workers' processes (replacements start); answers
    name-as-given -> old address, or None for a worker that is not there.
    Refused from inside a task for its own worker."""

    workers: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RetireWorkers(Request):
    """Start retiring workers; answers address -> identity of each one retired."""

    workers: tuple[Any, ...] | None = None
    close_workers: bool = True
    #: ``Scheduler.workers_to_close`` options, used without ``workers``.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorCall(Request):
    """Call a method of (or read an attribute of) the actor of ``key`` on the
    worker that keeps it; answers ``(ok, payload)``: the cloudpickled result,
    or the cloudpickled exception if not ``ok``.

    Raises ``RuntimeError`` if the actor is gone (released, or its worker lost).
    """

    key: Key
    #: Method or attribute name.
    name: str
    #: Cloudpickled ``(args, kwargs)`` of a method call; None: read the attribute.
    args: bytes | None = None


# -- plugins ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AddSchedulerPlugin(Request):
    """Add a ``SchedulerPlugin`` (its ``start`` hook runs); None."""

    plugin: Any
    name: str
    idempotent: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveSchedulerPlugin(Request):
    """Remove the scheduler plugin ``name``; None."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AddWorkerPlugin(Request):
    """Keep a ``WorkerPlugin`` for every worker and set it up on the present
    ones; answers as ``RunOnWorkers``, or None if ``idempotent`` and one of
    that name exists."""

    #: The cloudpickled plugin.
    plugin: bytes
    name: str
    idempotent: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveWorkerPlugin(Request):
    """Tear down the worker plugin ``name`` everywhere; answers as
    ``RunOnWorkers``. Raises ``ValueError`` if there is no such plugin."""

    name: str


# -- coordination primitives and datasets -------------------------------------------


class Operation(StrEnum):
    """The operations on coordination state (``Event``, ``Lock``/``Semaphore``,
    ``Variable``, ``Queue``, published datasets); each names the method of
    ``localsched.runtime.coordination_state.Coordination`` that performs it."""

    EVENT_SET = "event_set"
    EVENT_CLEAR = "event_clear"
    EVENT_IS_SET = "event_is_set"
    SEMAPHORE_CREATE = "semaphore_create"
    SEMAPHORE_ACQUIRE = "semaphore_acquire"
    SEMAPHORE_RELEASE = "semaphore_release"
    SEMAPHORE_VALUE = "semaphore_value"
    SEMAPHORE_CLOSE = "semaphore_close"
    MULTILOCK_ACQUIRE = "multilock_acquire"
    MULTILOCK_RELEASE = "multilock_release"
    VARIABLE_SET = "variable_set"
    VARIABLE_GET = "variable_get"
    VARIABLE_DELETE = "variable_delete"
    QUEUE_CREATE = "queue_create"
    QUEUE_PUT = "queue_put"
    QUEUE_GET = "queue_get"
    QUEUE_QSIZE = "queue_qsize"
    QUEUE_CLOSE = "queue_close"
    PUBLISH_PUT = "publish_put"
    PUBLISH_GET = "publish_get"
    PUBLISH_LIST = "publish_list"
    PUBLISH_DELETE = "publish_delete"
    HANDOFF_DONE = "handoff_done"
    WAIT_CANCEL = "wait_cancel"


@dataclass(frozen=True, slots=True, kw_only=True)
class Coordinate(Request):
    """Perform one coordination operation now; answers its result."""

    operation: Operation
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitFor(Request):
    """Answers the operation's result once it is truthy (an event set, a lease
    free, a value there). ``Coordinate(WAIT_CANCEL, (wait_id,))`` withdraws
    it; the withdrawn wait then fails with ``WaitCancelled``."""

    wait_id: str
    operation: Operation
    args: tuple[Any, ...] = ()


class WaitCancelled(Exception):
    """A :class:`WaitFor` was withdrawn before its condition held."""
