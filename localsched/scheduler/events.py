"""Stimuli: the facts the scheduler core is told about (events in).

Every event is a record with a ``stimulus_id``, never changed once built. Events
are past-tense facts or requests from a client; the core never asks for anything,
it only reacts. Time is carried inside the events that need it; the core has no
clock. They are not ``frozen`` dataclasses only because frozen construction costs
three times as much (about 3 us against 1 us here), and events are built per task.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localsched.scheduler.computations import SourceCode

Key = Hashable

_KEY_ATOMS = (str, bytes, int, float)
_EXACT_ATOMS = frozenset(_KEY_ATOMS)  # ``bool`` is not among them, as it must not be


def validate_key(key: object) -> None:
    """Raise ``TypeError`` unless ``key`` is str, bytes, int, float or a tuple.

    Here, beside the events that carry keys, so that a client checks its keys
    before posting without loading the core (a task's client runs in a worker).
    """
    kind = type(key)
    if kind in _EXACT_ATOMS:
        return  # the usual key, without isinstance calls (runs per new task)
    if kind is tuple:
        for part in key:  # type: ignore[attr-defined]
            if type(part) not in _EXACT_ATOMS:
                validate_key(part)
        return
    if isinstance(key, _KEY_ATOMS) and not isinstance(key, bool):
        return
    if isinstance(key, tuple):
        for part in key:
            validate_key(part)
        return
    raise TypeError(
        f"Unexpected key type {type(key).__name__} (value: {key!r}); keys must be "
        "str, bytes, int, float or tuples of those"
    )


@dataclass(slots=True, kw_only=True)
class StateEvent:
    """Base class of all stimuli."""

    #: Why this happened; echoed in the transition log and in every command.
    stimulus_id: str


@dataclass(slots=True, kw_only=True)
class UpdateGraph(StateEvent):
    """A client submitted tasks (``submit``, ``map``, ``get``, ``compute``)."""

    client: str
    #: key -> opaque run_spec (function and arguments); the core never opens it.
    tasks: Mapping[Key, object]
    #: key -> keys it depends on (new tasks or tasks already known).
    dependencies: Mapping[Key, Collection[Key]] = field(default_factory=dict)
    #: Keys the client holds futures for.
    keys: Collection[Key] = ()
    #: key -> graph order (``dask.order``); lower runs first. Missing: submission order.
    priority: Mapping[Key, int] | None = None
    #: User priority; higher runs first. One value or a per-key mapping.
    user_priority: int | Mapping[Key, int] = 0
    #: Seconds: a graph submitted within this time of the previous one shares its
    #: generation (coarse FIFO between calls).
    fifo_timeout: float = 0.0
    #: key -> worker addresses or names the task may run on.
    restrictions: Mapping[Key, Collection[Hashable]] | None = None
    #: Keys whose restrictions are only preferences.
    loose_restrictions: Collection[Key] = ()
    #: key -> {resource: amount}.
    resources: Mapping[Key, Mapping[str, float]] | None = None
    #: key -> number of retries; or one number for all.
    retries: int | Mapping[Key, int] | None = None
    #: key -> annotation dict (``priority``, ``retries``, ``workers``, custom...).
    annotations: Mapping[Key, Mapping[str, Any]] | None = None
    #: Key of the task that submitted this graph (tasks inside tasks).
    submitting_task: Key | None = None
    #: Graph-wide annotations, for plugins (``{"annotation": {key: value}}``).
    annotations_by_type: Mapping[str, Mapping[Key, Any]] | None = None
    #: Keys whose results are actors: objects that live in their worker.
    actors: Collection[Key] = ()
    time: float = 0.0
    #: The client's code around the call: ``SourceCode`` tuples
    #: (``scheduler/computations.py``), for ``Scheduler.computations`` only.
    code: tuple[SourceCode, ...] = ()
    #: Annotations around the call (``dask.annotate``), for the same.
    global_annotations: Mapping[str, Any] | None = None


@dataclass(slots=True, kw_only=True)
class UpdateData(StateEvent):
    """Data entered the cluster from outside (``scatter``)."""

    client: str
    #: key -> address of the worker holding it, or None when it lives in the
    #: shared store only.
    who_has: Mapping[Key, str | None]
    nbytes: Mapping[Key, int] = field(default_factory=dict)
    types: Mapping[Key, str] = field(default_factory=dict)
    shared: bool = True
    time: float = 0.0


@dataclass(slots=True, kw_only=True)
class TaskFinished(StateEvent):
    """A worker finished a task and holds (or handed over) its result."""

    key: Key
    worker: str
    run_id: int = -1
    nbytes: int = -1
    type: str | None = None
    #: ((action, start, stop), ...), e.g. ``(("compute", 1.0, 1.5),)``.
    startstops: tuple[tuple[str, float, float], ...] = ()
    #: The result lives in the shared store and survives the worker.
    shared: bool = False


@dataclass(slots=True, kw_only=True)
class TaskErred(StateEvent):
    """A task raised on a worker."""

    key: Key
    worker: str
    run_id: int = -1
    exception: object = None
    traceback: object = None
    exception_text: str = ""
    traceback_text: str = ""
    startstops: tuple[tuple[str, float, float], ...] = ()


@dataclass(slots=True, kw_only=True)
class WorkerAdded(StateEvent):
    address: str
    nthreads: int = 1
    name: object = None
    memory_limit: int = 0
    resources: Mapping[str, float] | None = None
    host: str = "127.0.0.1"
    pid: int = 0
    time: float = 0.0


@dataclass(slots=True, kw_only=True)
class WorkerRemoved(StateEvent):
    """A worker left: planned (``expected``) or it died."""

    address: str
    expected: bool = False
    #: Human-readable cause (exit code, signal, memory), put in ``KilledWorker``.
    reason: str = ""
    #: Keys the worker was executing when it died (the runtime knows them): only
    #: these are counted suspicious. None: blame every processing task, as dask.
    executing: Collection[Key] | None = None
    time: float = 0.0


@dataclass(slots=True, kw_only=True)
class WorkerStatusChanged(StateEvent):
    """A worker paused or resumed (memory pressure)."""

    address: str
    status: str


@dataclass(slots=True, kw_only=True)
class WorkerHeartbeat(StateEvent):
    """Periodic report: how long each executing task has been running, metrics."""

    address: str
    executing: Mapping[Key, float] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    time: float = 0.0


@dataclass(slots=True, kw_only=True)
class ClientAdded(StateEvent):
    client: str


@dataclass(slots=True, kw_only=True)
class ClientRemoved(StateEvent):
    client: str


@dataclass(slots=True, kw_only=True)
class ClientReleasesKeys(StateEvent):
    """A client dropped its futures to these keys."""

    client: str
    keys: Collection[Key]


@dataclass(slots=True, kw_only=True)
class ClientDesiresKeys(StateEvent):
    """A client took futures to keys that already exist."""

    client: str
    keys: Collection[Key]


@dataclass(slots=True, kw_only=True)
class CancelRequested(StateEvent):
    client: str
    keys: Collection[Key]
    #: Cancel even if other clients want the keys.
    force: bool = False


@dataclass(slots=True, kw_only=True)
class RetryRequested(StateEvent):
    client: str
    keys: Collection[Key]


@dataclass(slots=True, kw_only=True)
class TaskSeceded(StateEvent):
    """A running task called ``secede()``: it no longer occupies a thread."""

    key: Key
    worker: str
    compute_duration: float | None = None
    run_id: int = -1


@dataclass(slots=True, kw_only=True)
class RescheduleRequested(StateEvent):
    """A task raised ``Reschedule``, or the runtime wants it placed again."""

    key: Key
    worker: str | None = None


@dataclass(slots=True, kw_only=True)
class MissingData(StateEvent):
    """A worker could not find a key's data on the worker that should hold it."""

    key: Key
    worker: str | None = None


@dataclass(slots=True, kw_only=True)
class ReplicasAdded(StateEvent):
    """A worker now holds copies of these keys (``add_keys``)."""

    worker: str
    keys: Collection[Key]


@dataclass(slots=True, kw_only=True)
class StealResponse(StateEvent):
    """A victim's answer to a steal request: the task's state on that worker."""

    key: Key
    worker: str
    #: ``"ready"``/``"waiting"`` (not started: the steal goes ahead), anything else
    #: (executing, memory, ...) rejects it; None: the worker no longer knows it.
    state: str | None


@dataclass(slots=True, kw_only=True)
class RetireWorkers(StateEvent):
    """Retire workers gracefully: no new work, finish, hand over data, close."""

    workers: Collection[str]
    close_workers: bool = True


@dataclass(slots=True, kw_only=True)
class RestartRequested(StateEvent):
    """Forget every task (``Client.restart``)."""

    client: str | None = None


@dataclass(slots=True, kw_only=True)
class Tick(StateEvent):
    """Timer: stealing balance, no-worker timeouts, occupancy re-alignment."""

    time: float
    #: The runtime's judgement that the scheduler has spare CPU right now.
    is_idle: bool = False
