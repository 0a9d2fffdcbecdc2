"""The wire protocol between the scheduler process and its worker processes.

Messages are small slotted dataclasses (not frozen: frozen construction costs
three times as much, and a message is built per task at each end, as the
core's events are). They travel in batches: one ``Connection.send_bytes``
carries one pickled ``list`` of messages, so a loop turn costs one system call
per worker however many tasks it moves::

    scheduler thread                                   worker process
    RunTask, ForgetKeys, StealQuery,
    GrantSegments, Shutdown, RunFunction, CallActor, Inspect,
    WorkerInfo, LinkReply, KeyUpdate, TopicEvent ────▶  control thread ─▶ task threads
    Hello, TaskDone, TaskFailed, StealAnswer, FunctionResult, Heartbeat,
    LinkRequest, LinkEvents, LongRunning, ActorAnswer,
    Goodbye ◀────────────────────────────────────────────────────── (any thread)

What the scheduler never looks into stays opaque bytes: a task's function and
arguments (cloudpickled once, in the client), results and exceptions (cloudpickled
in the worker). Values at or above :data:`~localsched.transport.shm.INLINE_THRESHOLD`
travel as a :class:`~localsched.transport.shm.BlobRef` instead, and
:func:`~localsched.transport.shm.load` reads either form.

A function is sent to a worker once: :class:`RunTask` always names it by
``function_token`` and carries its bytes in ``function`` only the first time the
scheduler sends that token to that worker; the worker caches it by token.

The envelope is plain pickle (protocol 5), read back by an unpickler that resolves
only the classes of this module, ``BlobRef`` and ``SegmentLease``. So a corrupt
or hostile batch cannot import or call anything: :func:`decode_batch` returns a
list of complete messages or raises :class:`ProtocolError`. (Field values are
not type-checked: the other end of the pipe is our own process.)

These messages are the wire format, not the scheduler core's commands and
events; the runtime maps between the two.
"""

from __future__ import annotations

import hashlib
import io
import operator
import pickle
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, TypeAlias

from localsched.transport import pickling
from localsched.transport.inproc import LocalRef
from localsched.transport.shm import BlobRef, SegmentLease

__all__ = [
    "PROTOCOL_VERSION",
    "ActorAnswer",
    "AddPlugin",
    "CallActor",
    "ForgetKeys",
    "FunctionResult",
    "Goodbye",
    "GrantSegments",
    "Heartbeat",
    "Hello",
    "Inspect",
    "KeyUpdate",
    "LinkEvents",
    "LinkReply",
    "LinkRequest",
    "LongRunning",
    "Message",
    "Payload",
    "ProtocolError",
    "RemovePlugin",
    "RunFunction",
    "RunTask",
    "Shutdown",
    "StealAnswer",
    "StealQuery",
    "Stored",
    "TaskDone",
    "TaskFailed",
    "TaskRef",
    "TopicEvent",
    "WorkerInfo",
    "decode_batch",
    "dumps_function",
    "encode_batch",
]

#: Bumped on any incompatible change; a worker announces it in :class:`Hello`.
PROTOCOL_VERSION = 1

Key: TypeAlias = Hashable
#: A serialized value: an inline pickle, or where it lives in shared memory; or,
#: for a task's call on an in-process worker, the call itself by reference.
#: A value as the store keeps it: inline bytes or a shared-memory segment.
Stored: TypeAlias = bytes | BlobRef
#: A task's function call as sent: stored, or kept in-process (transport/inproc).
Payload: TypeAlias = bytes | BlobRef | LocalRef


class ProtocolError(Exception):
    """Bytes that are not a batch of messages, or messages that cannot be encoded."""


@dataclass(frozen=True, slots=True)
class TaskRef:
    """Stands for a dependency's value inside a task's pickled arguments.

    The worker replaces every ``TaskRef`` found in the arguments (also inside
    lists, tuples, sets and dict values) by the value of ``key`` from
    :attr:`RunTask.dependencies`, as dask's ``TaskRef`` is substituted.
    """

    key: Key


@dataclass(slots=True, kw_only=True)
class Message:
    """Base class of every wire message."""


# --- scheduler -> worker -------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class RunTask(Message):
    """Run ``function(*args, **kwargs)`` and report :class:`TaskDone` or
    :class:`TaskFailed` with the same ``key`` and ``run_id``."""

    key: Key
    #: Echoed in the reply, so a stale reply of an earlier run can be told apart.
    run_id: int
    #: Names the function; the worker caches functions by token.
    function_token: str
    #: Cloudpickled function: set the first time this token goes to this worker.
    function: bytes | None = None
    #: Cloudpickled ``(args, kwargs)`` tuple, possibly holding :class:`TaskRef`;
    #: or, on an in-process worker, a ``LocalRef`` to ``(function, args, kwargs)``.
    args: Payload
    #: key -> serialized value of each dependency the arguments refer to.
    dependencies: dict[Key, Stored] = field(default_factory=dict)
    #: Smaller runs first among tasks queued on the worker (dask's priority).
    priority: tuple[float, ...] = ()
    #: Abstract resources the task holds while it runs, e.g. ``{"GPU": 1}``; the
    #: worker starts it only when its own resources have that much free.
    resource_restrictions: dict[str, float] | None = None
    #: ``submit(..., actor=True)``: the worker keeps the result object and
    #: answers with an ``Actor`` handle to it (``localsched.worker.actors``).
    actor: bool = False


@dataclass(slots=True, kw_only=True)
class ForgetKeys(Message):
    """Drop these tasks if they have not started; discard their results if they
    are running; forget that they finished."""

    keys: tuple[Key, ...]


@dataclass(slots=True, kw_only=True)
class StealQuery(Message):
    """Give ``key`` up if it has not started; answered by :class:`StealAnswer`."""

    key: Key


@dataclass(slots=True, kw_only=True)
class GrantSegments(Message):
    """Free segments of the scheduler's store (``BlobStore.lease``) for the
    worker's ``BlobWriter`` to write results into: reused pages are written
    about ten times faster than fresh ones (DESIGN.md, "Data plane")."""

    leases: tuple[SegmentLease, ...]


@dataclass(slots=True, kw_only=True)
class ExtendPath(Message):
    """The cluster process's ``sys.path``: the worker appends the entries it
    lacks (dask passes the client's ``sys.path``), so a module directory added
    at run time is importable by tasks, ``Client.run`` functions and plugins."""

    entries: tuple[str, ...]


@dataclass(slots=True, kw_only=True)
class SetPaused(Message):
    """Stop starting queued tasks (``paused=True``: the memory monitor's pause,
    as a dask worker past its pause threshold) or start them again. Running
    tasks go on; queued ones wait, and may still be stolen."""

    paused: bool


@dataclass(slots=True, kw_only=True)
class Shutdown(Message):
    """Exit now: queued tasks are dropped, running ones abandoned; the worker
    sends :class:`Goodbye` first."""

    reason: str = "shutdown"


@dataclass(slots=True, kw_only=True)
class AddPlugin(Message):
    """Set up a worker plugin (``Client.register_plugin``): unpickle ``plugin``,
    replace (tear down) one of the same ``name``, call its ``setup(worker)``.
    The control thread does it before reading on, so tasks sent after it see the
    plugin. Answered by :class:`FunctionResult` with the same ``id`` (nobody
    waits for a negative ``id``)."""

    id: int
    name: str
    #: Cloudpickled ``WorkerPlugin``.
    plugin: bytes
    #: The worker's address and name, for the plugin's ``worker`` object.
    address: str = ""
    worker_name: object = None


@dataclass(slots=True, kw_only=True)
class RemovePlugin(Message):
    """Tear down and forget the worker plugin ``name``
    (``Client.unregister_worker_plugin``); answered like :class:`AddPlugin`."""

    id: int
    name: str


@dataclass(slots=True, kw_only=True)
class RunFunction(Message):
    """Call a function outside task scheduling (``Client.run``); answered by
    :class:`FunctionResult` with the same ``id``."""

    id: int
    #: Cloudpickled function.
    function: bytes
    #: Cloudpickled ``(args, kwargs)`` tuple.
    args: bytes
    #: The worker's address and name, for a ``dask_worker`` argument.
    address: str
    name: object = None


@dataclass(slots=True, kw_only=True)
class CallActor(Message):
    """Call a method of, or read an attribute of, the actor object the worker
    keeps for ``key``; answered by :class:`ActorAnswer` with the same ``id``."""

    id: int
    key: Key
    #: The method or attribute name.
    name: str
    #: Cloudpickled ``(args, kwargs)`` of a method call; None: read the attribute.
    args: bytes | None = None


@dataclass(slots=True, kw_only=True)
class Inspect(Message):
    """Ask the worker about itself (``Client.call_stack``, ``profile``,
    ``get_worker_logs``); answered by :class:`FunctionResult` with the same
    ``id`` (``localsched.worker.diagnostics.inspect`` names the questions)."""

    id: int
    #: ``"logs"``, ``"call_stack"`` or ``"profile"``.
    what: str
    #: Keyword arguments of the question (plain data).
    args: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class TopicEvent(Message):
    """An event logged under a topic the worker's client subscribed to:
    ``event`` is the cloudpickled ``(time, msg)``."""

    topic: str
    event: bytes


@dataclass(slots=True, kw_only=True)
class WorkerInfo(Message):
    """Sent once after :class:`Hello`: the worker's address and name, for
    ``get_worker()`` in its tasks."""

    address: str
    name: object = None


@dataclass(slots=True, kw_only=True)
class LinkReply(Message):
    """Answer to the :class:`LinkRequest` with the same ``id``: ``payload`` is
    the cloudpickled answer if ``ok``, else the cloudpickled exception."""

    id: int
    ok: bool
    payload: bytes


@dataclass(slots=True, kw_only=True)
class KeyUpdate(Message):
    """A key the worker's client (``get_client()`` in a task) holds futures for
    changed status: ``"finished"`` (``payload``: type name), ``"error"``
    (cloudpickled ``(exception, traceback text)``), ``"cancelled"`` (the reason)
    or ``"pending"`` (lost or retried: it will be computed again)."""

    key: Key
    status: str
    payload: object = None


# --- worker -> scheduler -------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Hello(Message):
    """First message of every worker: it is ready for tasks."""

    pid: int
    nthreads: int
    version: int = PROTOCOL_VERSION


@dataclass(slots=True, kw_only=True)
class TaskDone(Message):
    """A task returned; ``payload`` is its result, owned by the receiver from now on
    (a ``BlobRef`` must be adopted by the scheduler's ``BlobStore``)."""

    key: Key
    run_id: int
    payload: Stored
    #: Bytes the result occupies in memory, as dask's ``sizeof`` counts
    #: (``transport/sizeof.py``); the payload knows its own serialized size.
    nbytes: int
    #: Qualified type name of the result, e.g. ``"numpy.ndarray"``.
    type: str
    #: Wall-clock ``time.time()`` when the function started and returned.
    start: float
    stop: float
    #: ``threading.get_ident()`` of the task thread that ran it (the task
    #: stream's row).
    thread: int = 0
    #: ``time.time()`` when loading its dependencies' values began (they end
    #: at ``start``); 0.0: it had none.
    load_start: float = 0.0


@dataclass(slots=True, kw_only=True)
class TaskFailed(Message):
    """A task raised, or its function, arguments or result could not be moved."""

    key: Key
    run_id: int
    #: Cloudpickled exception of the original type (a ``RuntimeError`` with its
    #: repr if it could not be pickled); None only if even that failed.
    exception: bytes | None
    exception_text: str
    traceback_text: str
    start: float
    stop: float
    #: The traceback as tblib's plain-data dict, pickled; None without tblib.
    #: ``localsched.transport.pickling.loads_traceback`` rebuilds a traceback object.
    traceback: bytes | None = None
    #: As :attr:`TaskDone.thread` and :attr:`TaskDone.load_start`.
    thread: int = 0
    load_start: float = 0.0
    #: The task raised :class:`localsched.errors.Reschedule`: the scheduler
    #: places it again instead of marking it erred.
    reschedule: bool = False


@dataclass(slots=True, kw_only=True)
class StealAnswer(Message):
    """Reply to :class:`StealQuery`.

    ``"ready"``: the task had not started and the worker dropped it; the steal
    goes ahead. ``"executing"``: it is running. ``"memory"``: it finished (its
    :class:`TaskDone` was sent before this answer). None: unknown to the worker.
    """

    key: Key
    state: str | None


@dataclass(slots=True, kw_only=True)
class FunctionResult(Message):
    """Reply to :class:`RunFunction`: ``payload`` is the cloudpickled return value
    (``ok``) or exception (not ``ok``)."""

    id: int
    ok: bool
    payload: bytes
    traceback_text: str = ""


@dataclass(slots=True, kw_only=True)
class ActorAnswer(Message):
    """Reply to :class:`CallActor`: ``payload`` is the cloudpickled return value
    or attribute (``ok``), or the exception (not ``ok``)."""

    id: int
    ok: bool
    payload: bytes


@dataclass(slots=True, kw_only=True)
class Heartbeat(Message):
    """Sent periodically while tasks run: how long each has been executing.

    The scheduler raises a running prefix's duration estimate from it (dask's
    ``max_exec_time`` rule), so work queued behind a long task can be stolen.
    """

    #: key -> seconds the task has been executing so far.
    executing: dict[Key, float]


@dataclass(slots=True, kw_only=True)
class LinkRequest(Message):
    """A request of the worker's client (``get_client()`` in a task): one
    ``localsched.transport.requests.Request``, answered by :class:`LinkReply` with the
    same ``id``.

    The request is cloudpickled (it may hold user objects: a function to run on
    the scheduler, a plugin; the scheduler trusts its own workers), so this
    module's restricted unpickler never resolves a request class.
    """

    id: int
    #: The cloudpickled request.
    request: bytes


@dataclass(slots=True, kw_only=True)
class LinkEvents(Message):
    """Client events of the worker's client for the scheduler core (a graph,
    keys released or desired, cancel, retry), in order, unanswered."""

    #: The cloudpickled list of events (graphs hold task specs).
    events: bytes


@dataclass(slots=True, kw_only=True)
class LongRunning(Message):
    """A running task seceded (``secede()``): it no longer counts against the
    worker's threads (dask's ``long-running`` message)."""

    key: Key
    run_id: int
    #: Seconds the task had run when it seceded.
    compute_duration: float | None = None


@dataclass(slots=True, kw_only=True)
class Goodbye(Message):
    """Last message of a planned exit; a process that exits without it crashed."""

    reason: str


_MESSAGE_TYPES: tuple[type[Message], ...] = (
    RunTask,
    ForgetKeys,
    StealQuery,
    GrantSegments,
    SetPaused,
    ExtendPath,
    AddPlugin,
    RemovePlugin,
    Shutdown,
    RunFunction,
    CallActor,
    Inspect,
    TopicEvent,
    WorkerInfo,
    LinkReply,
    KeyUpdate,
    Hello,
    TaskDone,
    TaskFailed,
    StealAnswer,
    FunctionResult,
    Heartbeat,
    LinkRequest,
    LinkEvents,
    LongRunning,
    ActorAnswer,
    Goodbye,
)
_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in _MESSAGE_TYPES}


def merge_forgets(batch: list[Message]) -> list[Message]:
    """``batch`` with each run of consecutive ``ForgetKeys`` as one message.

    The core frees keys one command at a time; a worker then reads, and the
    scheduler thread pickles, one message per turn instead of one per task.
    Only consecutive ones merge: a key forgotten and then run again in one
    turn must still reach the worker in that order.
    """
    out: list[Message] = []
    run: list[Key] = []
    for message in batch:
        if type(message) is ForgetKeys:
            run.extend(message.keys)
            continue
        if run:
            out.append(ForgetKeys(keys=tuple(run)))
            run = []
        out.append(message)
    if run:
        out.append(ForgetKeys(keys=tuple(run)))
    return out


def _install_pickling(cls: type[Message]) -> None:
    # dataclass's own __getstate__/__setstate__ for slots classes call fields()
    # on every message; precomputed names, and a __setstate__ written out field
    # by field (as dataclass writes its __init__), make decoding a TaskDone
    # three times cheaper than a loop over the names (0.6 against 1.9 us), on
    # the hot path of every task, at both ends of the pipe.
    names = _FIELDS[cls]
    get = operator.attrgetter(*names)

    if len(names) == 1:

        def __getstate__(self: Message) -> tuple[object, ...]:
            return (get(self),)

    else:

        def __getstate__(self: Message) -> tuple[object, ...]:
            return get(self)

    cls.__getstate__ = __getstate__  # type: ignore[method-assign,assignment]
    cls.__setstate__ = _make_setstate(names)  # type: ignore[attr-defined]


def _make_setstate(names: tuple[str, ...]) -> Callable[[Message, object], None]:
    """``__setstate__`` for a class with fields ``names``: the state must be a
    tuple of exactly one value per field (the unpacking raises otherwise), so
    a decoded message has either every field set or none (no BUILD at all),
    which is what lets :func:`decode_batch` check one field per message."""
    # The names are our own dataclass fields (identifiers), never wire data.
    source = (
        "def __setstate__(self, state):\n"
        f"    ({', '.join(names)},) = state\n"
        + "".join(f"    self.{name} = {name}\n" for name in names)
    )
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # as dataclass builds its __init__
    setstate: Callable[[Message, object], None] = namespace["__setstate__"]
    return setstate


for _cls in _MESSAGE_TYPES:
    _install_pickling(_cls)
_ALLOWED_GLOBALS = {
    (cls.__module__, cls.__qualname__): cls
    for cls in (
        *_MESSAGE_TYPES,
        BlobRef,
        SegmentLease,
        LocalRef,
        complex,
        frozenset,
        set,
    )
}


def encode_batch(messages: Iterable[Message]) -> bytes:
    """Serialize messages into the bytes of one ``Connection.send_bytes``.

    Raises
    ------
    ProtocolError
        A message holds a value plain pickle cannot serialize (keys must be
        built from str, bytes, numbers and tuples, as dask's are).
    """
    try:
        return pickle.dumps(list(messages), protocol=5)
    except Exception as exc:
        raise ProtocolError(f"cannot encode messages: {exc!r}") from exc


def decode_batch(data: bytes | bytearray | memoryview) -> list[Message]:
    """Read what :func:`encode_batch` wrote.

    Returns
    -------
    list of Message
        Every message has all its fields set.

    Raises
    ------
    ProtocolError
        ``data`` is not an encoded batch. Decoding never imports or calls anything
        outside this module's message classes, whatever the bytes.
    """
    try:
        batch = _MessageUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise ProtocolError(f"undecodable batch: {exc!r}") from exc
    if type(batch) is not list:
        raise ProtocolError(f"a batch is a list, got {type(batch).__name__}")
    fields_of = _FIELDS
    for message in batch:
        names = fields_of.get(type(message))
        if names is None:
            raise ProtocolError(f"not a message: {type(message).__name__}")
        # __setstate__ sets every field or raises (_make_setstate): one
        # field tells whether it ran.
        if not hasattr(message, names[0]):
            raise ProtocolError(f"{type(message).__name__} without {names[0]}")
    return batch


def dumps_function(function: object) -> tuple[str, bytes]:
    """Cloudpickle ``function`` once; return ``(token, bytes)`` for :class:`RunTask`.

    The token is a digest of the bytes, so equal pickles share one cache entry.
    """
    data = pickling.dumps(function, protocol=5)
    return hashlib.blake2b(data, digest_size=16).hexdigest(), data


class _MessageUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise ProtocolError(f"forbidden global {module}.{name}") from None
