"""``SchedulerState``: the sans-IO scheduler core, one record of correlated data.

Theory of operation
-------------------
The only way in is ``handle(*events) -> list[Command]``. Each event is dispatched
to its handler, a plain function ``on_<event>(state, event)`` (``stimuli.py``,
``graphs.py``), which turns the fact into *recommendations* ``{key: desired
state}``; the engine (``engine.py``) then runs the transition functions
(``transitions.py``) until no recommendation is left. Every transition appends to
the bounded ``transition_log`` with the event's ``stimulus_id`` and is reported, in
order, to the transition hook (plugins). Commands for workers, clients and the
data store accumulate in ``_commands`` and are returned to the caller, which
performs the IO.

::

    handle(*events) ── _DISPATCH ──▶ stimuli.on_<event>(state, event)
                                        │ recommendations {key: state}
                                        ▼
                                     engine.run_transitions ──▶ transitions.*
                                        │                        placement.*
                                        ▼                        stealing.*
                                     state._commands ──▶ returned to the runtime

``SchedulerState`` itself holds the data (slots, every field documents its
invariant) and only the methods its callers outside the core use; the behaviour
is in the modules named above, as functions taking the state first. Work stealing
keeps its own fields in ``state.stealing`` (``stealing.WorkStealing``).

After the transitions of a stimulus, queued root-ish tasks are released into the
worker slots that opened, so downstream work always goes out before new roots.

Nothing here reads a clock, the environment or global configuration, nor touches
a thread, a pipe or pickle: time arrives in events, configuration in the
constructor. That is what makes the exhaustive tests in ``tests/scheduler`` cheap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Protocol

from localsched.scheduler import engine, graphs, stimuli
from localsched.scheduler import events as ev
from localsched.scheduler import validate as checks
from localsched.scheduler.commands import Command
from localsched.scheduler.engine import queue_slots_maybe_opened
from localsched.scheduler.heapset import HeapSet
from localsched.scheduler.placement import get_prefix_duration
from localsched.scheduler.stealing import STEAL_LATENCY, WorkStealing
from localsched.scheduler.tasks import (
    ClientState,
    Key,
    TaskGroup,
    TaskPrefix,
    TaskState,
    WorkerState,
)
from localsched.scheduler.transition_log import Transition, TransitionLog

#: Known fast prefixes (dask's ``scheduler.default-task-durations``), in seconds.
DEFAULT_TASK_DURATIONS: dict[str, float] = {
    "rechunk-split": 1e-6,
    "split-shuffle": 1e-6,
    "split-taskshuffle": 1e-6,
    "split-stage": 1e-6,
}


TransitionHook = Callable[[Key, str, str, str, dict[str, Any]], None]


class SchedulerHooks(Protocol):
    """Where the core reports lifecycle events for plugins, synchronously."""

    def notify(self, hook: str, **kwargs: Any) -> None: ...


class SchedulerState:
    """dask.distributed's scheduler state machine, without any IO.

    One record of correlated fields: change them only through ``handle`` (or
    ``transitions`` for plugins that recommend transitions, as in dask). The
    behaviour lives in the modules of ``localsched.scheduler`` as functions that
    take the state first.

    Parameters
    ----------
    allowed_failures
        How many workers may die while running a task before it errs with
        ``KilledWorker``.
    validate
        Check every invariant after each ``handle`` call (tests).
    worker_saturation
        Root-ish tasks per thread sent ahead; ``inf`` disables queuing.
    unknown_task_duration
        Seconds assumed for a task whose prefix has no estimate yet.
    bandwidth
        Bytes per second for data that must be copied between workers.
    shm_bandwidth
        Bytes per second for reading data from the shared store.
    work_stealing
        Move queued tasks from saturated workers to idle ones.
    steal_latency
        Fixed seconds counted for moving a task with dependencies.
    """

    __slots__ = (
        "_commands",
        "_handling",
        "_last_generation_time",
        "_next_order",
        "_next_task_serial",
        "_requested_replicas",
        "_retiring",
        "_run_id",
        "_unknown_durations",
        "_workers_by_name",
        "allowed_failures",
        "bandwidth",
        "clients",
        "created_groups",
        "default_task_durations",
        "dispatch_latency",
        "erred_tasks",
        "extra_slots_per_thread",
        "fast_task_slots",
        "generation",
        "hooks",
        "host_info",
        "idle",
        "idle_heap",
        "idle_task_count",
        "n_tasks",
        "no_workers_timeout",
        "now",
        "queued",
        "rootish_taskgroup",
        "rootish_taskgroup_dependencies",
        "running",
        "saturated",
        "shm_bandwidth",
        "stealing",
        "task_groups",
        "task_metadata",
        "task_prefixes",
        "tasks",
        "total_nthreads",
        "total_occupancy",
        "transition_counter",
        "transition_counter_max",
        "transition_hook",
        "transition_log",
        "unknown_task_duration",
        "unrunnable",
        "validate",
        "worker_saturation",
        "workers",
    )

    def __init__(
        self,
        *,
        allowed_failures: int = 3,
        validate: bool = False,
        worker_saturation: float = 1.1,
        unknown_task_duration: float = 0.5,
        default_task_durations: Mapping[str, float] | None = None,
        bandwidth: float = 100e6,
        shm_bandwidth: float = 5e9,
        transition_log_length: int = 1000,
        transition_counter_max: int = 0,
        rootish_taskgroup: int = 5,
        rootish_taskgroup_dependencies: int = 5,
        work_stealing: bool = True,
        fast_task_slots: int = 0,
        steal_latency: float = STEAL_LATENCY,
        dispatch_latency: float = 1e-3,
        no_workers_timeout: float | None = None,
        hooks: SchedulerHooks | None = None,
    ) -> None:
        #: key -> TaskState for every task not forgotten.
        self.tasks: dict[Key, TaskState] = {}
        #: address -> WorkerState for every worker not removed.
        self.workers: dict[str, WorkerState] = {}
        #: worker name -> WorkerState, for the workers in ``workers``.
        self._workers_by_name: dict[object, WorkerState] = {}
        #: Workers whose status is running (they may receive tasks).
        self.running: set[WorkerState] = set()
        #: address -> worker, for running workers that are not fully occupied.
        self.idle: dict[str, WorkerState] = {}
        #: Running workers with at least one free root-ish task slot.
        self.idle_task_count: set[WorkerState] = set()
        #: While ``idle_task_count`` is large: a heap of ``(processing tasks per
        #: thread, address, push number, worker)`` with a current entry for each of its
        #: workers and stale ones dropped lazily (``placement``); else None.
        self.idle_heap: list[tuple[float, str, int, WorkerState]] | None = None
        #: Workers with more expected work than their share.
        self.saturated: set[WorkerState] = set()
        #: Exactly the tasks in state queued, by priority.
        self.queued = HeapSet()
        #: Exactly the tasks in state no-worker -> time they got there.
        self.unrunnable: dict[TaskState, float] = {}
        #: client id -> ClientState.
        self.clients: dict[str, ClientState] = {
            "fire-and-forget": ClientState("fire-and-forget")
        }
        #: group name -> TaskGroup, for groups with a task not forgotten.
        self.task_groups: dict[str, TaskGroup] = {}
        #: While not None, every task group created is appended to it (the
        #: ``Scheduler`` facade collects the groups of a computation this way).
        self.created_groups: list[TaskGroup] | None = None
        #: prefix name -> TaskPrefix, kept for the scheduler's life (estimates).
        self.task_prefixes: dict[str, TaskPrefix] = {}
        #: Sum of nthreads over all workers.
        self.total_nthreads = 0
        #: Sum of ``ws.occupancy`` over all workers.
        self.total_occupancy = 0.0
        #: Bounded log of transitions, oldest first: dask's length by default
        #: (``distributed.admin.low-level-log-length``, 1000). Longer, each entry
        #: dropped is a cold tuple to free (0.3 us per task at 100k tasks).
        self.transition_log = TransitionLog(maxlen=transition_log_length)
        #: Most recent erred tasks (key, time, workers, exception text).
        self.erred_tasks: deque[tuple[Any, ...]] = deque(maxlen=100)
        #: key -> metadata set by clients.
        self.task_metadata: dict[Key, Any] = {}
        #: Information about hosts (one here).
        self.host_info: dict[str, dict[str, Any]] = {}
        self.allowed_failures = allowed_failures
        self.validate = validate
        self.worker_saturation = worker_saturation
        self.unknown_task_duration = unknown_task_duration
        self.default_task_durations = dict(
            DEFAULT_TASK_DURATIONS
            if default_task_durations is None
            else default_task_durations
        )
        self.bandwidth = bandwidth
        self.shm_bandwidth = shm_bandwidth
        self.rootish_taskgroup = rootish_taskgroup
        self.rootish_taskgroup_dependencies = rootish_taskgroup_dependencies
        self.transition_counter = 0
        self.transition_counter_max = transition_counter_max
        self.no_workers_timeout = no_workers_timeout
        #: Cap on extra root-ish slots per thread for very short tasks (0: off,
        #: dask's behaviour); see ``placement.update_extra_slots``.
        self.fast_task_slots = fast_task_slots
        #: Seconds of queued work a worker should hold when tasks are short.
        self.dispatch_latency = dispatch_latency
        #: Current extra slots per thread (0 unless fast_task_slots is set).
        self.extra_slots_per_thread = 0
        #: Tasks sent to workers, ever (round-robin cursor and statistics).
        self.n_tasks = 0
        #: Current FIFO generation and the time it started.
        self.generation = 0
        self._last_generation_time = float("-inf")
        #: Latest time seen in an event.
        self.now = 0.0
        #: Last run id handed out (each ComputeTask gets a new one).
        self._run_id = 0
        #: Next graph order for a task submitted without one.
        self._next_order = 0
        #: The next task's serial number: its hash (``TaskState``).
        self._next_task_serial = 0
        #: prefix without a duration estimate -> its tasks processing on a guess.
        self._unknown_durations: dict[TaskPrefix, set[TaskState]] = {}
        #: Commands of the ``handle`` call under way, in order.
        self._commands: list[Command] = []
        #: Work stealing's own record (candidates, requests in flight).
        self.stealing = WorkStealing(enabled=work_stealing, latency=steal_latency)
        #: address -> close_workers, for workers retiring gracefully.
        self._retiring: dict[str, bool] = {}
        #: retiring address -> key asked of another worker -> that worker's address.
        self._requested_replicas: dict[str, dict[Key, str]] = {}
        #: Receives the hooks other than ``transition`` (add_worker, update_graph...).
        self.hooks = hooks
        #: Called as ``hook(key, start, finish, stimulus_id, kwargs)`` after every
        #: transition, in order; None when no plugin listens (then it costs nothing).
        self.transition_hook: TransitionHook | None = None
        #: True while ``handle`` runs (a nested call joins its commands).
        self._handling = False

    # -- the one way in ------------------------------------------------------------

    def handle(self, *events: ev.StateEvent) -> list[Command]:
        """Apply events in order; return the commands they call for."""
        if self._handling:
            # Re-entered from a plugin hook: the outer call collects the commands.
            start = len(self._commands)
            _apply(self, events)
            return self._commands[start:]
        commands: list[Command] = []
        self._commands = commands
        self._handling = True
        try:
            _apply(self, events)
        finally:
            self._handling = False
            self._commands = []
        if self.validate:
            checks.validate_state(self)
        return commands

    # -- for plugins and the ``Scheduler`` facade (dask's names) --------------------

    def transition(
        self, key: Key, finish: str, *args: object, stimulus_id: str, **kwargs: Any
    ) -> dict[Key, str]:
        """Move one key to ``finish``; return the follow-up recommendations.

        Commands produced are kept for the current ``handle`` call.
        """
        return engine.transition(self, key, finish, stimulus_id, **kwargs)

    def transitions(self, recommendations: dict[Key, str], stimulus_id: str) -> None:
        """Process recommendations until none are left."""
        # A copy: the engine empties the dict it is given.
        engine.run_transitions(self, dict(recommendations), stimulus_id)

    def new_task(self, key: Key, spec: object) -> TaskState:
        """Create a task in ``released`` and count it in its group and prefix."""
        return engine.new_task(self, key, spec)

    def story(self, *keys_or_stimuli: Hashable) -> list[Transition]:
        """Every logged transition that touches one of the keys or stimulus ids."""
        return engine.story(self, *keys_or_stimuli)

    def validate_state(self) -> None:
        """Check every invariant of the whole state; raise ``InvalidTaskState``."""
        checks.validate_state(self)

    @property
    def task_duration(self) -> dict[str, float]:
        """prefix -> expected seconds per task (dask's ``task_duration``)."""
        return {
            name: get_prefix_duration(self, tp)
            for name, tp in self.task_prefixes.items()
        }

    def workers_list(self, workers: Iterable[Hashable] | None) -> list[str]:
        """Addresses of the workers matching addresses, names (any hashable, as
        dask's) or hosts."""
        if workers is None:
            return list(self.workers)
        out: list[str] = []
        for w in workers:
            if isinstance(w, str) and w in self.workers:
                out.append(w)
            elif w in self._workers_by_name:
                out.append(self._workers_by_name[w].address)
            else:
                out.extend(ws.address for ws in self.workers.values() if ws.host == w)
        return out


def _apply(state: SchedulerState, events: tuple[ev.StateEvent, ...]) -> None:
    dispatch = _DISPATCH
    for event in events:
        dispatch[type(event)](state, event)
        if state._retiring:
            # Any event may empty a retiring worker (release, cancel, restart,
            # steal...) or bring a recipient for its data, not only results.
            stimuli.check_retirements(state, event.stimulus_id)
        # The C-level set first: the HeapSet's truth test is a Python call.
        if state.idle_task_count and state.queued:
            queue_slots_maybe_opened(state, event.stimulus_id)


# Each handler takes its own event type: ``Any`` is the one parameter type they
# all accept (a callable taking ``StateEvent`` would be wider than each of them).
_DISPATCH: dict[type[ev.StateEvent], Callable[[SchedulerState, Any], None]] = {
    ev.UpdateGraph: graphs.on_update_graph,
    ev.UpdateData: stimuli.on_update_data,
    ev.TaskFinished: stimuli.on_task_finished,
    ev.TaskErred: stimuli.on_task_erred,
    ev.WorkerAdded: stimuli.on_worker_added,
    ev.WorkerRemoved: stimuli.on_worker_removed,
    ev.WorkerStatusChanged: stimuli.on_worker_status_changed,
    ev.WorkerHeartbeat: stimuli.on_worker_heartbeat,
    ev.ClientAdded: stimuli.on_client_added,
    ev.ClientRemoved: stimuli.on_client_removed,
    ev.ClientReleasesKeys: stimuli.on_client_releases_keys,
    ev.ClientDesiresKeys: stimuli.on_client_desires_keys,
    ev.CancelRequested: stimuli.on_cancel_requested,
    ev.RetryRequested: stimuli.on_retry_requested,
    ev.TaskSeceded: stimuli.on_task_seceded,
    ev.RescheduleRequested: stimuli.on_reschedule_requested,
    ev.MissingData: stimuli.on_missing_data,
    ev.ReplicasAdded: stimuli.on_replicas_added,
    ev.StealResponse: stimuli.on_steal_response,
    ev.RetireWorkers: stimuli.on_retire_workers,
    ev.RestartRequested: stimuli.on_restart_requested,
    ev.Tick: stimuli.on_tick,
}
