"""State records of the scheduler core: tasks, groups, prefixes, workers, clients.

These are mutable records with dask.distributed's names and meanings. They are
correlated with each other and with the sets held by ``SchedulerState``; the only
code that changes them is the core (``state.py`` and ``transitions.py``), and
``validate.py`` checks every invariant stated in the ``#:`` comments below.

Records compare by identity: a key that is forgotten and submitted again is a
different ``TaskState``, and a set must never confuse the two. They hash by key
(address, client id), as dask's do, so that iterating a set of them does not depend
on memory addresses: the same events always give the same commands.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from collections.abc import Set as AbstractSet
from types import MappingProxyType
from typing import Any, Literal

from localsched.keys import key_split as key_split

TaskStateName = Literal[
    "released",
    "waiting",
    "no-worker",
    "queued",
    "processing",
    "memory",
    "erred",
    "forgotten",
]

ALL_TASK_STATES: tuple[TaskStateName, ...] = (
    "released",
    "waiting",
    "no-worker",
    "queued",
    "processing",
    "memory",
    "erred",
    "forgotten",
)

WorkerStatus = Literal["running", "paused", "closing_gracefully", "closed"]

Key = Hashable


def key_group_name(key: Key) -> str:
    """The task group of a key, as dask's ``key_split_group`` computes it.

    >>> key_group_name(("x-123", 0))
    'x-123'
    >>> key_group_name("inc-0f3c2b7a")
    'inc'
    """
    if type(key) is str and not key.startswith(("(", "<")):
        return key_split(key)  # the usual key, without isinstance calls
    if isinstance(key, tuple):
        return str(key[0]) if key else ""
    if isinstance(key, bytes):
        key = key.decode(errors="replace")
    if isinstance(key, str):
        if key[:1] == "(":
            return key.split(",", 1)[0].strip("()\"'")
        if key[:1] == "<":
            return key.strip("<>").split()[0].split(".")[-1]
        return key_split(key)
    return "Other"


class TaskPrefix:
    """All tasks whose keys share a prefix, like ``inc`` in ``inc-ab12``.

    Holds the duration estimate used for occupancy and placement.
    """

    __slots__ = (
        "all_durations",
        "duration_average",
        "groups",
        "max_exec_time",
        "name",
        "nbytes_total",
        "suspicious",
        "types",
    )

    def __init__(self, name: str, default_duration: float = -1.0) -> None:
        #: The prefix, e.g. ``"inc"``.
        self.name = name
        #: Moving average (alpha 0.5) of compute durations; -1 while unknown.
        self.duration_average = default_duration
        #: Longest run time seen for a task still executing (heartbeats); -1 if none.
        self.max_exec_time = -1.0
        #: Live groups of this prefix (a dict for O(1) removal, in creation order).
        self.groups: dict[TaskGroup, None] = {}
        #: Total seconds spent per action (``compute``, ...), over the prefix's life.
        self.all_durations: dict[str, float] = {}
        #: How many times a task of this prefix was executing on a worker that died.
        self.suspicious = 0
        #: Total bytes of results this prefix has produced.
        self.nbytes_total = 0
        #: Type names of the results produced by this prefix.
        self.types: set[str] = set()

    def add_duration(self, action: str, start: float, stop: float) -> None:
        """Record one action's duration; ``compute`` feeds the estimate."""
        duration = stop - start
        self.all_durations[action] = self.all_durations.get(action, 0.0) + duration
        if action == "compute":
            old = self.duration_average
            self.duration_average = duration if old < 0 else 0.5 * duration + 0.5 * old

    def add_exec_time(self, duration: float) -> None:
        """A task of this prefix has been running for ``duration`` seconds.

        A task running past twice the average makes the average unreliable, so it
        is dropped and ``2 * max_exec_time`` is used instead until a task finishes.
        """
        self.max_exec_time = max(duration, self.max_exec_time)
        if duration > 2 * self.duration_average:
            self.duration_average = -1.0

    @property
    def states(self) -> dict[str, int]:
        """Number of tasks in each state, summed over the live ``groups``.

        Computed when read, not kept per transition: the engine updates only
        the group's counts (two dict updates fewer per transition), and a
        forgotten group leaves ``groups``, which is what the sum must drop.
        """
        totals: dict[str, int] = dict.fromkeys(ALL_TASK_STATES, 0)
        for group in self.groups:
            for state, n in group.states.items():
                totals[state] += n
        return totals

    @property
    def active_states(self) -> dict[str, int]:
        return self.states

    def __repr__(self) -> str:
        return f"<TaskPrefix {self.name}: {_counts(self.states)}>"


class TaskGroup:
    """Tasks with the same group name, like ``"x-123"`` for ``("x-123", 0)``."""

    __slots__ = (
        "dependencies",
        "dependents",
        "duration",
        "last_worker",
        "last_worker_tasks_left",
        "n_tasks",
        "name",
        "nbytes_total",
        "prefix",
        "start",
        "states",
        "stop",
        "types",
    )

    def __init__(self, name: str, prefix: TaskPrefix) -> None:
        #: The group name, e.g. ``"inc-ab12"``.
        self.name = name
        #: The prefix this group belongs to; the group is in ``prefix.groups``.
        self.prefix = prefix
        #: Number of tasks in each state; sums to ``n_tasks``.
        self.states: dict[str, int] = dict.fromkeys(ALL_TASK_STATES, 0)
        #: Number of live (not forgotten) tasks in the group.
        self.n_tasks = 0
        #: Other groups this group's tasks depend on; symmetric with ``dependents``.
        self.dependencies: set[TaskGroup] = set()
        #: Other groups whose tasks depend on this group's tasks.
        self.dependents: set[TaskGroup] = set()
        #: Total bytes of results this group has produced.
        self.nbytes_total = 0
        #: Total seconds of compute spent on the group's tasks.
        self.duration = 0.0
        #: Type names of the results.
        self.types: set[str] = set()
        #: Earliest start and latest stop of any task's compute (0 if none yet).
        self.start = 0.0
        self.stop = 0.0
        #: Worker most recently given a root-ish task of this group (co-assignment
        #: without queuing); None otherwise.
        self.last_worker: WorkerState | None = None
        #: If ``last_worker`` is set, how many more tasks it should receive.
        self.last_worker_tasks_left = 0

    def __len__(self) -> int:
        return self.n_tasks

    @property
    def done(self) -> bool:
        """Every task is in memory, erred, released or forgotten."""
        states = self.states
        return (
            states["memory"]
            + states["erred"]
            + states["released"]
            + states["forgotten"]
            == self.n_tasks
        )

    def add_duration(self, action: str, start: float, stop: float) -> None:
        if action == "compute":
            self.duration += stop - start
            if not self.start or start < self.start:
                self.start = start
            self.stop = max(self.stop, stop)
        self.prefix.add_duration(action, start, stop)

    def __repr__(self) -> str:
        return f"<TaskGroup {self.name}: {_counts(self.states)}>"


#: A link set (``TaskState.dependencies`` ...): a ``set``, or a shared
#: ``frozenset`` (``EMPTY_SET`` below, or a record's ``alone``), so readers get
#: the read-only interface and writers go through ``with_link``/``without_link``.
LinkSet = AbstractSet

#: The value of a task's link sets (``dependencies``, ``dependents``,
#: ``waiting_on``, ``waiters``, ``who_has``, ``who_wants``) while they are empty
#: (see also ``with_link``).
#: Most tasks never fill most of them, and every live set is one more object for
#: the garbage collector to walk on each full collection, which dominated the cost
#: per task with 100k tasks alive. Immutable, so sharing it is safe: code that
#: adds to a link set replaces an empty one by a new ``set``, and code that
#: discards or clears does it only on a non-empty one. Readers need not care.
EMPTY_SET: frozenset[Any] = frozenset()

#: The annotations of a task submitted without any (read-only, shared).
NO_ANNOTATIONS: Mapping[str, Any] = MappingProxyType({})


def with_link(links: Any, item: Any) -> Any:
    """``links`` with ``item`` added; assign the result back to the link set.

    A link set with one member is that member's shared ``alone`` frozenset
    (``TaskState.alone``, ``WorkerState.alone``, ``ClientState.alone``) rather
    than a set of its own: most tasks are wanted by one client, held by one
    worker, and have one dependent, and every set per task was one more object
    for the garbage collector to walk on each full collection (the largest part
    of the cost per task with 100k tasks alive). A second member makes a real set.
    """
    if not links:
        alone = item.alone
        if alone is None:
            # Tasks make theirs on first use; _remove_key breaks the cycle.
            alone = item.alone = frozenset((item,))
        return alone
    if type(links) is set:
        links.add(item)
        return links
    grown = set(links)
    grown.add(item)
    return grown


def link_client(cs: ClientState, ts: TaskState) -> None:
    """``cs`` wants ``ts``: the symmetric ``wants_what`` / ``who_wants`` link."""
    cs.wants_what.add(ts)
    ts.who_wants = with_link(ts.who_wants, cs)


def without_link(links: Any, item: Any) -> Any:
    """``links`` without ``item``; assign the result back to the link set.

    A real set that shrinks stays a real set (possibly empty).
    """
    if type(links) is set:
        links.discard(item)
        return links
    # The shared empty set, or a one-member ``alone`` frozenset.
    return EMPTY_SET if item in links else links


class TaskState:
    """The scheduler's record of one task (dask's ``TaskState``)."""

    __slots__ = (
        "__weakref__",
        "_hash",
        "actor",
        "alone",
        "annotations",
        "dependencies",
        "dependents",
        "erred_on",
        "exception",
        "exception_blame",
        "exception_text",
        "group",
        "has_lost_dependencies",
        "host_restrictions",
        "key",
        "loose_restrictions",
        "metadata",
        "nbytes",
        "prefix",
        "priority",
        "processing_on",
        "queueable",
        "resource_restrictions",
        "retries",
        "run_id",
        "run_spec",
        "shared",
        "state",
        "suspicious",
        "traceback",
        "traceback_text",
        "type",
        "waiters",
        "waiting_on",
        "who_has",
        "who_wants",
        "worker_restrictions",
    )

    def __init__(
        self, key: Key, run_spec: object, group: TaskGroup, serial: int = -1
    ) -> None:
        #: The key, unique among live tasks.
        self.key = key
        # The hash: the core's serial number of the task, so that the tables
        # keyed by tasks (a client's wants, a worker's data) fill and empty in
        # the order tasks are made, one slot after the other, rather than at
        # random places; that order is the same run after run (not an
        # address). Made without one (tests): the key's hash.
        self._hash = serial if serial >= 0 else hash(key)
        #: Opaque reference to the task's function and arguments; None for data
        #: that entered through ``scatter`` (pure data cannot be recomputed).
        self.run_spec = run_spec
        #: ``(-user_priority, generation, graph order)``; lower runs first.
        self.priority: tuple[float, ...] = (0, 0, 0)
        #: Current state; the task is in exactly the state-specific sets.
        self.state: TaskStateName = "released"
        # The six link sets below start as the shared ``EMPTY_SET`` (see there).
        # ``dependencies``, ``dependents``, ``waiters``, ``who_has`` and
        # ``who_wants`` change only through ``with_link`` / ``without_link``
        # (one member: its ``alone``); ``waiting_on`` is replaced by a real set
        # by whoever adds to it, and discarded from only when non-empty.
        #: ``frozenset({self})`` once some link set holds this task alone; None
        #: before (and again once forgotten).
        self.alone: frozenset[TaskState] | None = None
        #: Tasks this task needs; symmetric with ``dependents``.
        self.dependencies: LinkSet[TaskState] = EMPTY_SET
        #: Tasks that need this one; symmetric with ``dependencies``.
        self.dependents: LinkSet[TaskState] = EMPTY_SET
        #: While waiting: the dependencies not yet in memory. Empty otherwise.
        self.waiting_on: LinkSet[TaskState] = EMPTY_SET
        #: Dependents that are waiting, queued, no-worker or processing and still
        #: need this task's data.
        self.waiters: LinkSet[TaskState] = EMPTY_SET
        #: Workers holding the result; non-empty only in memory.
        self.who_has: LinkSet[WorkerState] = EMPTY_SET
        #: The worker running the task; set iff state is processing.
        self.processing_on: WorkerState | None = None
        #: Clients that hold a future to this key.
        self.who_wants: LinkSet[ClientState] = EMPTY_SET
        #: Size of the result in bytes; -1 until known.
        self.nbytes = -1
        #: Type name of the result; None until known.
        self.type: str | None = None
        #: Opaque exception payload; set iff erred and this task raised.
        self.exception: object = None
        #: Opaque traceback payload, paired with ``exception``.
        self.traceback: object = None
        #: Exception and traceback as text, for reprs and stories.
        self.exception_text = ""
        self.traceback_text = ""
        #: The task whose failure made this one err (itself if it raised).
        self.exception_blame: TaskState | None = None
        #: Addresses of the workers on which the task erred (None until it errs;
        #: created lazily, since most tasks never err).
        self.erred_on: set[str] | None = None
        #: Times this task was executing on a worker that died unexpectedly.
        self.suspicious = 0
        #: Retries left after a failure.
        self.retries = 0
        #: Worker addresses or names (any hashable, as dask's: ``0`` is a
        #: name) the task may run on; None means any.
        self.worker_restrictions: set[Hashable] | None = None
        #: Host names the task may run on; None means any.
        self.host_restrictions: set[str] | None = None
        #: Resource name -> amount needed; None means none.
        self.resource_restrictions: dict[str, float] | None = None
        #: Restrictions are preferences: run elsewhere if no valid worker exists.
        self.loose_restrictions = False
        #: Annotations given at submission (``priority``, ``retries``, custom ...);
        #: without any, the shared read-only ``NO_ANNOTATIONS`` (a dict per task
        #: was one more allocation per task, bringing collections sooner).
        self.annotations: Mapping[str, Any] = NO_ANNOTATIONS
        #: Task group and prefix; the task is counted in ``group.states[state]``.
        self.group = group
        self.prefix = group.prefix
        #: A dependency's data was lost for good (pure data without run_spec).
        self.has_lost_dependencies = False
        #: Incremented every time the task is sent to a worker; a finished or erred
        #: message with an older run_id is stale.
        self.run_id = 0
        #: User metadata set with ``set_metadata``.
        self.metadata: dict[str, Any] | None = None
        #: The result lives in the cluster's shared store, not only inside a worker
        #: process; it survives the worker (``who_has`` may then become empty).
        self.shared = False
        #: Cached root-ish verdict at submission (used by validate and queuing).
        self.queueable = False
        #: The result is an actor: an object that lives only in the worker in
        #: ``who_has`` (never ``shared``). Losing that worker errs the task with
        #: "Worker holding Actor was lost"; it is never recomputed or stolen.
        self.actor = False

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {self.state}>"

    def __hash__(self) -> int:
        return self._hash

    def get_nbytes(self) -> int:
        nbytes = self.nbytes
        return nbytes if nbytes >= 0 else 1024  # dask's DEFAULT_DATA_SIZE

    @property
    def has_restrictions(self) -> bool:
        return bool(
            self.worker_restrictions
            or self.host_restrictions
            or self.resource_restrictions
        )


class WorkerState:
    """The scheduler's record of one worker process."""

    __slots__ = (
        "__weakref__",
        "_hash",
        "address",
        "alone",
        "executing_count",
        "has_what",
        "host",
        "last_seen",
        "long_running",
        "memory_limit",
        "metrics",
        "name",
        "nbytes",
        "nthreads",
        "occupancy",
        "pid",
        "processing",
        "resources",
        "status",
        "task_prefix_count",
        "used_resources",
    )

    def __init__(
        self,
        address: str,
        nthreads: int = 1,
        *,
        name: object = None,
        memory_limit: int = 0,
        resources: dict[str, float] | None = None,
        host: str = "127.0.0.1",
        pid: int = 0,
    ) -> None:
        #: Unique address (``"local://<pid>/<n>"`` in localsched).
        self.address = address
        self._hash = hash(address)
        #: ``frozenset({self})``: the ``who_has`` of every task held here alone.
        self.alone: frozenset[WorkerState] = frozenset((self,))
        #: User-facing name; defaults to the address.
        self.name = address if name is None else name
        #: Threads executing tasks in the worker.
        self.nthreads = nthreads
        #: Bytes this worker may use (0: no limit).
        self.memory_limit = memory_limit
        #: Host name, for host restrictions and ``workers_to_close(key=...)``.
        self.host = host
        #: Process id, for diagnostics.
        self.pid = pid
        #: One of running, paused, closing_gracefully, closed.
        self.status: WorkerStatus = "running"
        #: Tasks sent to this worker and not finished (exactly the tasks with
        #: ``processing_on is self``) -> the occupancy seconds each one added.
        self.processing: dict[TaskState, float] = {}
        #: The subset of ``processing`` that seceded (``secede()``/long-running).
        self.long_running: set[TaskState] = set()
        #: prefix -> number of non-long-running processing tasks of that prefix.
        self.task_prefix_count: dict[TaskPrefix, int] = {}
        #: Tasks whose result this worker holds; symmetric with ``who_has``.
        self.has_what: dict[TaskState, None] = {}
        #: Sum of ``get_nbytes()`` over ``has_what``.
        self.nbytes = 0
        #: Resources offered, name -> amount.
        self.resources: dict[str, float] = dict(resources or {})
        #: Resources held by processing tasks, name -> amount (never above offered).
        self.used_resources: dict[str, float] = dict.fromkeys(self.resources, 0.0)
        #: Expected seconds of work queued here: the sum over processing tasks
        #: (not long-running) of their prefix duration estimate, kept incrementally.
        self.occupancy = 0.0
        #: Number of tasks the worker reported executing (from heartbeats).
        self.executing_count = 0
        #: Latest metrics reported by the runtime (memory, cpu, ...).
        self.metrics: dict[str, Any] = {}
        #: Time of the last message from this worker.
        self.last_seen = 0.0

    def __repr__(self) -> str:
        return (
            f"<WorkerState {self.address!r}, name: {self.name}, status: {self.status},"
            f" memory: {len(self.has_what)}, processing: {len(self.processing)}>"
        )

    def __hash__(self) -> int:
        return self._hash

    def identity(self) -> dict[str, Any]:
        return {
            "type": "Worker",
            "id": self.name,
            "host": self.host,
            "resources": dict(self.resources),
            "nthreads": self.nthreads,
            "memory_limit": self.memory_limit,
            "metrics": dict(self.metrics),
            "status": self.status,
            "pid": self.pid,
        }


class ClientState:
    """A client that holds futures."""

    __slots__ = (
        "__weakref__",
        "_hash",
        "alone",
        "client_key",
        "last_seen",
        "wants_what",
    )

    def __init__(self, client: str) -> None:
        #: The client's id.
        self.client_key = client
        self._hash = hash(client)
        #: ``frozenset({self})``: the ``who_wants`` of every task wanted by it alone.
        self.alone: frozenset[ClientState] = frozenset((self,))
        #: Tasks this client holds futures for; symmetric with ``who_wants``.
        self.wants_what: set[TaskState] = set()
        #: Time of the client's last action.
        self.last_seen = 0.0

    def __hash__(self) -> int:
        return self._hash

    @property
    def id(self) -> str:
        return self.client_key

    def __repr__(self) -> str:
        return f"<Client {self.client_key!r}>"


def _counts(states: dict[str, int]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in states.items() if n)
