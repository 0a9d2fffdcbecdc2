"""``SchedulerState``: the sans-IO scheduler core.

Theory of operation
-------------------
The only way in is ``handle(*events) -> list[Command]``. Each event is dispatched
to its ``_on_<event>`` handler (``stimuli.py``), which turns the fact into
*recommendations* ``{key: desired state}``; ``_transitions`` then runs the
transition functions (``transitions.py``) until no recommendation is left. Every
transition appends to the bounded ``transition_log`` with the event's
``stimulus_id`` and is reported, in order, to the transition hook (plugins).
Commands for workers, clients and the data store accumulate in ``_commands`` and
are returned to the caller, which performs the IO.

After the transitions of a stimulus, queued root-ish tasks are released into the
worker slots that opened, so downstream work always goes out before new roots.

Nothing here reads a clock, the environment or global configuration, nor touches
a thread, a pipe or pickle: time arrives in events, configuration in the
constructor. That is what makes the exhaustive tests in ``tests/scheduler`` cheap.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Protocol

from localsched.errors import InvalidTransition
from localsched.scheduler import events as ev
from localsched.scheduler.commands import Command
from localsched.scheduler.graphs import GraphsMixin
from localsched.scheduler.heapset import HeapSet
from localsched.scheduler.placement import PlacementMixin
from localsched.scheduler.policies import STEAL_LATENCY, PoliciesMixin
from localsched.scheduler.stimuli import StimuliMixin
from localsched.scheduler.tasks import (
    EMPTY_SET,
    ClientState,
    Key,
    TaskGroup,
    TaskPrefix,
    TaskState,
    Transition,
    TransitionLog,
    WorkerState,
    as_transition,
    key_group_name,
    key_split,
    recommended_keys,
)
from localsched.scheduler.transitions import TRANSITIONS_TABLE, TransitionsMixin
from localsched.scheduler.validate import ValidateMixin

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


class SchedulerState(
    TransitionsMixin,
    PlacementMixin,
    GraphsMixin,
    StimuliMixin,
    PoliciesMixin,
    ValidateMixin,
):
    """dask.distributed's scheduler state machine, without any IO.

    Attributes are correlated; change them only through ``handle`` (or
    ``transitions`` for plugins that recommend transitions, as in dask).

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
    """

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
        transition_log_length: int = 100_000,
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
        self._workers_by_name: dict[object, WorkerState] = {}
        #: Workers whose status is running (they may receive tasks).
        self.running: set[WorkerState] = set()
        #: address -> worker, for running workers that are not fully occupied.
        self.idle: dict[str, WorkerState] = {}
        #: Running workers with at least one free root-ish task slot.
        self.idle_task_count: set[WorkerState] = set()
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
        #: prefix name -> TaskPrefix, kept for the scheduler's life (estimates).
        self.task_prefixes: dict[str, TaskPrefix] = {}
        #: Sum of nthreads over all workers.
        self.total_nthreads = 0
        #: Sum of ``ws.occupancy`` over all workers.
        self.total_occupancy = 0.0
        #: Bounded log of transitions, oldest first.
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
        #: dask's behaviour); see ``_update_extra_slots``.
        self.fast_task_slots = fast_task_slots
        #: Fixed cost counted for moving a task with dependencies (dask: 0.1 s,
        #: a network round trip; a local runtime passes its own, far smaller).
        self.steal_latency = steal_latency
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
        self._run_id = 0
        self._next_order = 0
        self._unknown_durations: dict[TaskPrefix, set[TaskState]] = {}
        self._commands: list[Command] = []
        self._stealing_enabled = work_stealing
        self._init_stealing()
        #: address -> close_workers, for workers retiring gracefully.
        self._retiring: dict[str, bool] = {}
        #: retiring address -> key asked of another worker -> that worker's address.
        self._requested_replicas: dict[str, dict[Key, str]] = {}
        #: Receives the hooks other than ``transition`` (add_worker, update_graph...).
        self.hooks = hooks
        #: Called as ``hook(key, start, finish, stimulus_id, kwargs)`` after every
        #: transition, in order; None when no plugin listens (then it costs nothing).
        self.transition_hook: TransitionHook | None = None
        self._handling = False

    # -- the one way in ------------------------------------------------------------

    def handle(self, *events: ev.StateEvent) -> list[Command]:
        """Apply events in order; return the commands they call for."""
        if self._handling:
            # Re-entered from a plugin hook: the outer call collects the commands.
            start = len(self._commands)
            self._apply(events)
            return self._commands[start:]
        commands = self._commands = []
        self._handling = True
        try:
            self._apply(events)
        finally:
            self._handling = False
            self._commands = []
        if self.validate:
            self.validate_state()
        return commands

    def _apply(self, events: tuple[ev.StateEvent, ...]) -> None:
        dispatch = _DISPATCH
        for event in events:
            dispatch[type(event)](self, event)
            if self._retiring:
                # Any event may empty a retiring worker (release, cancel, restart,
                # steal...) or bring a recipient for its data, not only results.
                self._check_retirements(event.stimulus_id)
            # The C-level set first: the HeapSet's truth test is a Python call.
            if self.idle_task_count and self.queued:
                self._queue_slots_maybe_opened(event.stimulus_id)

    # -- transition engine ---------------------------------------------------------

    def _transition(
        self, key: Key, finish: str, stimulus_id: str, **kwargs: Any
    ) -> dict[Key, str]:
        ts = self.tasks.get(key)
        if ts is None:
            return {}
        start = ts.state
        if start == finish:
            return {}
        self.transition_counter += 1
        if self.transition_counter_max and (
            self.transition_counter > self.transition_counter_max
        ):
            raise RuntimeError(
                f"transition_counter_max={self.transition_counter_max} exceeded"
            )
        func = TRANSITIONS_TABLE.get((start, finish))
        hook = self.transition_hook
        if func is None or hook is not None:
            return self._transition_observed(
                ts, start, finish, func, stimulus_id, kwargs
            )
        recs = (
            func(self, ts, stimulus_id, **kwargs)
            if kwargs
            else func(self, ts, stimulus_id)
        )
        self._record_transition(ts, start, recs, stimulus_id)
        return recs

    def _record_transition(
        self, ts: TaskState, start: str, recs: dict[Key, str], stimulus_id: str
    ) -> None:
        """The engine's bookkeeping once a transition function has run.

        Counts the move in the group and prefix, logs it, and drops a group whose
        last task was forgotten. ``_transitions`` inlines the same steps.
        """
        actual = ts.state
        if actual != start:
            states = ts.group.states
            states[start] -= 1
            states[actual] += 1
        # TransitionLog.record, inlined (one flat tuple of atoms).
        self.transition_log.append(
            (ts.key, start, actual, stimulus_id, self.now, *recs, *recs.values())
            if recs
            else (ts.key, start, actual, stimulus_id, self.now)
        )
        if actual == "forgotten":
            self._forget_group_member(ts)

    def _transition_observed(
        self,
        ts: TaskState,
        start: str,
        finish: str,
        func: Callable[..., dict[Key, str]] | None,
        stimulus_id: str,
        kwargs: dict[str, Any],
    ) -> dict[Key, str]:
        """``_transition`` with a plugin hook or through released (slow path)."""
        key = ts.key
        hook = self.transition_hook
        if hook is not None and (func is None or finish == "forgotten"):
            # Plugins may read a forgotten task's links, as in dask.
            dependents = set(ts.dependents)
            dependencies = set(ts.dependencies)
        if func is not None:
            recs = func(self, ts, stimulus_id, **kwargs)
            self._count_state_change(ts, start)
        elif "released" not in (start, finish):
            # No direct edge: go through released, then where that step points.
            first = self._transition(key, "released", stimulus_id)
            target = first.get(key, finish)
            second = TRANSITIONS_TABLE.get(("released", target))
            if second is None or ts.state != "released":
                return first
            recs = dict(first)
            recs.update(second(self, ts, stimulus_id, **kwargs))
            start = "released"
            self._count_state_change(ts, start)
        else:
            raise InvalidTransition(key, start, finish, self.story(key))
        actual = ts.state
        self.transition_log.record(key, start, actual, recs, stimulus_id, self.now)
        if hook is not None:
            if actual == "forgotten":
                ts.dependents = dependents
                ts.dependencies = dependencies
                self.tasks[key] = ts
            hook(key, start, actual, stimulus_id, kwargs)
            if actual == "forgotten":
                del self.tasks[key]
                ts.dependents = EMPTY_SET
                ts.dependencies = EMPTY_SET
        if actual == "forgotten":
            self._forget_group_member(ts)
        return recs

    def _count_state_change(self, ts: TaskState, start: str) -> None:
        finish = ts.state
        if finish != start:
            group_states = ts.group.states
            group_states[start] -= 1
            group_states[finish] += 1

    def _transitions(self, recommendations: dict[Key, str], stimulus_id: str) -> None:
        """Run recommendations to a fixed point (LIFO, as dask's ``popitem``)."""
        # Copy: the caller's dict is not ours to empty.
        recommendations = dict(recommendations)
        transition = self._transition
        tasks = self.tasks
        table = TRANSITIONS_TABLE
        log = self.transition_log
        # Transition functions run no plugin code: without a hook now, none
        # appears during this loop (a hook may add one: then check each time).
        observed = self.transition_hook is not None or self.transition_counter_max
        while recommendations:
            key, finish = recommendations.popitem()
            # Chained: a transition's single follow-up for a key not already
            # recommended runs next without a trip through the dict, exactly as
            # update() then popitem() would order it.
            while True:
                ts = tasks.get(key)
                if ts is None:
                    break
                start = ts.state
                if start == finish:
                    break
                func = table.get((start, finish))
                if func is None or observed:
                    new = transition(key, finish, stimulus_id)
                    observed = (
                        self.transition_hook is not None or self.transition_counter_max
                    )
                else:
                    # ``_transition``'s fast path and ``_record_transition``,
                    # inlined: a call per transition is a measurable part of the
                    # engine's cost. Keep the three in step.
                    self.transition_counter += 1
                    new = func(self, ts, stimulus_id)
                    actual = ts.state
                    if actual != start:
                        states = ts.group.states
                        states[start] -= 1
                        states[actual] += 1
                    log.append(
                        (key, start, actual, stimulus_id, self.now, *new, *new.values())
                        if new
                        else (key, start, actual, stimulus_id, self.now)
                    )
                    if actual == "forgotten":
                        group = ts.group
                        if group.states["forgotten"] == group.n_tasks:
                            self._forget_group_member(ts)
                if not new:
                    break
                if len(new) == 1:
                    ((key, finish),) = new.items()
                    if key not in recommendations:
                        continue
                recommendations.update(new)
                break

    def transition(
        self, key: Key, finish: str, *args: Any, stimulus_id: str, **kwargs: Any
    ) -> dict[Key, str]:
        """Move one key to ``finish``; return the follow-up recommendations.

        Commands produced are kept for the current ``handle`` call.
        """
        return self._transition(key, finish, stimulus_id, **kwargs)

    def transitions(self, recommendations: dict[Key, str], stimulus_id: str) -> None:
        """Process recommendations until none are left."""
        self._transitions(dict(recommendations), stimulus_id)

    def _queue_slots_maybe_opened(self, stimulus_id: str) -> None:
        saturation = self.worker_saturation
        if math.isinf(saturation):
            # Queuing disabled: every running worker has room (never here, as
            # nothing is queued then, unless the setting changed).
            slots = sys.maxsize if self.idle_task_count else 0
        else:
            # ``_task_slots_available`` summed, inlined (this runs per event).
            slots = 0
            extra = self.extra_slots_per_thread
            for ws in self.idle_task_count:
                nthreads = ws.nthreads
                base = math.ceil(saturation * nthreads)
                if base < 1:
                    base = 1
                running = len(ws.processing)
                if ws.long_running:
                    running -= len(ws.long_running)
                slots += base + extra * nthreads - running
        if slots <= 0:
            return
        if slots == 1:
            # The common case: one task finished, one slot opened. What
            # ``_transitions`` would do with this one recommendation.
            recs = self._transition(self.queued.peek().key, "processing", stimulus_id)
            if recs:
                self._transitions(recs, stimulus_id)
            return
        recs = {ts.key: "processing" for ts in reversed(self.queued.peekn(slots))}
        self._transitions(recs, stimulus_id)

    # -- creating tasks --------------------------------------------------------------

    def new_task(self, key: Key, spec: object, state: str = "released") -> TaskState:
        """Create a task in ``released`` and count it in its group and prefix."""
        group_name = key_group_name(key)
        tg = self.task_groups.get(group_name)
        if tg is None:
            prefix_name = key_split(key)
            tp = self.task_prefixes.get(prefix_name)
            if tp is None:
                tp = self.task_prefixes[prefix_name] = TaskPrefix(
                    prefix_name, self.default_task_durations.get(prefix_name, -1.0)
                )
            tg = self.task_groups[group_name] = TaskGroup(group_name, tp)
            tp.groups[tg] = None
        ts = TaskState(key, spec, tg)
        tg.n_tasks += 1
        tg.states["released"] += 1
        self.tasks[key] = ts
        return ts

    def _forget_group_member(self, ts: TaskState) -> None:
        tg = ts.group
        if tg.states["forgotten"] == tg.n_tasks and self.task_groups.get(tg.name) is tg:
            del self.task_groups[tg.name]
            del tg.prefix.groups[tg]
            for other in tg.dependents:
                other.dependencies.discard(tg)
            for other in tg.dependencies:
                other.dependents.discard(tg)
            tg.dependents = set()
            tg.dependencies = set()

    # -- observability -----------------------------------------------------------------

    def story(self, *keys_or_stimuli: Hashable) -> list[Transition]:
        """Every logged transition that touches one of the keys or stimulus ids."""
        wanted = set(keys_or_stimuli)
        return [
            as_transition(entry)
            for entry in self.transition_log.entries()
            if entry[0] in wanted
            or entry[3] in wanted
            or any(key in wanted for key in recommended_keys(entry))
        ]

    @property
    def task_duration(self) -> dict[str, float]:
        """prefix -> expected seconds per task (dask's ``task_duration``)."""
        return {
            name: self._get_prefix_duration(tp)
            for name, tp in self.task_prefixes.items()
        }

    def workers_list(self, workers: Iterable[str] | None) -> list[str]:
        """Addresses of the workers matching addresses, names or hosts."""
        if workers is None:
            return list(self.workers)
        out: list[str] = []
        for w in workers:
            if w in self.workers:
                out.append(w)
            elif w in self._workers_by_name:
                out.append(self._workers_by_name[w].address)
            else:
                out.extend(ws.address for ws in self.workers.values() if ws.host == w)
        return out

    def _notify(self, hook: str, **kwargs: Any) -> None:
        if self.hooks is not None:
            self.hooks.notify(hook, **kwargs)


_DISPATCH: dict[type, Callable[[SchedulerState, Any], None]] = {
    ev.UpdateGraph: GraphsMixin._on_update_graph,
    ev.UpdateData: StimuliMixin._on_update_data,
    ev.TaskFinished: StimuliMixin._on_task_finished,
    ev.TaskErred: StimuliMixin._on_task_erred,
    ev.WorkerAdded: StimuliMixin._on_worker_added,
    ev.WorkerRemoved: StimuliMixin._on_worker_removed,
    ev.WorkerStatusChanged: StimuliMixin._on_worker_status_changed,
    ev.WorkerHeartbeat: StimuliMixin._on_worker_heartbeat,
    ev.ClientAdded: StimuliMixin._on_client_added,
    ev.ClientRemoved: StimuliMixin._on_client_removed,
    ev.ClientReleasesKeys: StimuliMixin._on_client_releases_keys,
    ev.ClientDesiresKeys: StimuliMixin._on_client_desires_keys,
    ev.CancelRequested: StimuliMixin._on_cancel_requested,
    ev.RetryRequested: StimuliMixin._on_retry_requested,
    ev.TaskSeceded: StimuliMixin._on_task_seceded,
    ev.RescheduleRequested: StimuliMixin._on_reschedule_requested,
    ev.MissingData: StimuliMixin._on_missing_data,
    ev.ReplicasAdded: StimuliMixin._on_replicas_added,
    ev.StealResponse: PoliciesMixin._on_steal_response,
    ev.RetireWorkers: StimuliMixin._on_retire_workers,
    ev.RestartRequested: StimuliMixin._on_restart_requested,
    ev.Tick: StimuliMixin._on_tick,
}
