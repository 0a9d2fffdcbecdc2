"""The transition functions of the scheduler core and their table.

Each ``_transition_<start>_<finish>(state, ts, stimulus_id)`` function moves one
task between two states, updates every structure that depends on that state,
appends commands to ``state._commands`` and returns recommendations
``{key: next state}``. The engine (``engine.py``) runs them to a fixed point.
Semantics follow dask.distributed's scheduler (see ``shared/scheduler-notes.md``
§2.3); where localsched differs, a comment says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from math import isinf as _isinf
from operator import attrgetter
from typing import TYPE_CHECKING, Any, cast

from localsched.scheduler.builders import (
    compute_task,
    free_keys,
    key_cancelled,
    key_in_memory,
)
from localsched.scheduler.clients import client_releases_keys, key_erred
from localsched.scheduler.commands import FreeData, FreeKeys, KeyLost, KeyRetried
from localsched.scheduler.placement import (
    add_replica,
    check_idle_saturated,
    decide_worker_non_rootish,
    decide_worker_rootish_queuing_disabled,
    decide_worker_rootish_queuing_enabled,
    deps_nbytes,
    get_comm_cost,
    get_prefix_duration,
    is_rootish,
    realign_unknown,
    set_nbytes,
    update_extra_slots,
)
from localsched.scheduler.stealing import add_candidate
from localsched.scheduler.tasks import (
    ALL_TASK_STATES,
    EMPTY_SET,
    Key,
    LinkSet,
    TaskState,
    WorkerState,
    with_link,
    without_link,
)

if TYPE_CHECKING:
    from localsched.scheduler.state import SchedulerState

Recs = dict[Key, str]

#: Why an actor task errs when its worker is gone (dask's words; tests match).
ACTOR_LOST = "Worker holding Actor was lost"


# -- released -> waiting ----------------------------------------------------


def _transition_released_waiting(
    state: SchedulerState, ts: TaskState, stimulus_id: str
) -> Recs:
    if ts.has_lost_dependencies:
        return {ts.key: "forgotten"}
    if not ts.dependencies and not ts.dependents and not ts.waiting_on:
        # A lone task (a map's): nothing to wait on, no one waiting.
        ts.state = "waiting"
        ts.waiters = EMPTY_SET
        return {ts.key: "processing"}
    recs: Recs = {}
    for dts in ts.dependencies:
        if dts.exception_blame is not None:
            # A dependency already failed: fail without running.
            ts.exception_blame = dts.exception_blame
            return {ts.key: "erred"}
    ts.state = "waiting"
    waiting_on = ts.waiting_on
    if ts.dependencies and type(waiting_on) is not set:
        # The shared EMPTY_SET (a non-empty waiting_on is always a real set).
        waiting_on = ts.waiting_on = set()
    for dts in ts.dependencies:
        if not dts.who_has and not (dts.state == "memory" and dts.shared):
            cast("set[TaskState]", waiting_on).add(dts)  # a real set: above
        if dts.state == "released":
            recs[dts.key] = "waiting"
        else:
            dts.waiters = with_link(dts.waiters, ts)
    # A loop, not a comprehension: most tasks have zero or one dependent.
    waiters: LinkSet[TaskState] = EMPTY_SET
    for dts in ts.dependents:
        if dts.state == "waiting":
            if waiters:
                waiters = with_link(waiters, dts)
            else:
                # with_link(EMPTY_SET, dts), inlined: the usual single waiter.
                alone = dts.alone
                if alone is None:
                    alone = dts.alone = frozenset((dts,))
                waiters = alone
    ts.waiters = waiters
    if not waiting_on:
        recs[ts.key] = "processing"
    return recs


# -- placement ----------------------------------------------------------------


def _transition_waiting_processing(
    state: SchedulerState, ts: TaskState, stimulus_id: str
) -> Recs:
    if is_rootish(state, ts):
        if not _isinf(state.worker_saturation):  # queuing_enabled, inlined
            ws = decide_worker_rootish_queuing_enabled(state)
            if ws is None:
                return {ts.key: "queued"}
        else:
            ws = decide_worker_rootish_queuing_disabled(state, ts)
            if ws is None:
                return {ts.key: "no-worker"}
    else:
        ws = decide_worker_non_rootish(state, ts)
        if ws is None:
            return {ts.key: "no-worker"}
    return add_to_processing(state, ts, ws, stimulus_id)


def _transition_waiting_queued(
    state: SchedulerState, ts: TaskState, stimulus_id: str
) -> Recs:
    ts.state = "queued"
    state.queued.add(ts)
    return {}


def _transition_waiting_no_worker(
    state: SchedulerState, ts: TaskState, stimulus_id: str
) -> Recs:
    ts.state = "no-worker"
    state.unrunnable[ts] = state.now
    return {}


def _transition_queued_processing(
    state: SchedulerState, ts: TaskState, stimulus_id: str
) -> Recs:
    ws = decide_worker_rootish_queuing_enabled(state)
    if ws is None:
        return {}
    state.queued.discard(ts)
    return add_to_processing(state, ts, ws, stimulus_id)


def _transition_no_worker_processing(
    state: SchedulerState, ts: TaskState, stimulus_id: str
) -> Recs:
    ws = decide_worker_non_rootish(state, ts)
    if ws is None:
        return {}
    # Leave unrunnable only once placed: a task refused for oversized inputs
    # is still no-worker when its no-worker->erred runs.
    recs = add_to_processing(state, ts, ws, stimulus_id)
    if ts.state == "processing":
        del state.unrunnable[ts]
    return recs


def add_to_processing(
    state: SchedulerState, ts: TaskState, ws: WorkerState, stimulus_id: str
) -> Recs:
    prefix = ts.prefix
    duration = prefix.duration_average
    if duration < 0:
        duration = get_prefix_duration(state, prefix)
        unknown = state._unknown_durations.get(prefix)
        if unknown is None:
            unknown = state._unknown_durations[prefix] = set()
        unknown.add(ts)
    dependencies = ts.dependencies
    if dependencies:
        cost = duration + get_comm_cost(state, ts, ws)
        if ws.memory_limit and deps_nbytes(state, ts) > ws.memory_limit:
            return _refuse_oversized(state, ts, ws)
    else:
        cost = duration + 0.0
    ws.processing[ts] = cost
    ws.occupancy += cost
    state.total_occupancy += cost
    counts = ws.task_prefix_count
    counts[prefix] = counts.get(prefix, 0) + 1
    ts.processing_on = ws
    ts.state = "processing"
    resource_restrictions = ts.resource_restrictions
    if resource_restrictions:
        used = ws.used_resources
        for name, amount in resource_restrictions.items():
            used[name] = used.get(name, 0.0) + amount
    check_idle_saturated(state, ws)
    state.n_tasks += 1
    run_id = state._run_id = state._run_id + 1
    ts.run_id = run_id
    if state.stealing.enabled:
        add_candidate(state, ts, ws)
    state._commands.append(
        compute_task(
            stimulus_id,
            ws.address,
            ts.key,
            ts.run_spec,
            ts.priority,
            tuple([dts.key for dts in dependencies]) if dependencies else (),
            resource_restrictions,
            ts.annotations,
            run_id,
        )
    )
    return {}


def _refuse_oversized(state: SchedulerState, ts: TaskState, ws: WorkerState) -> Recs:
    """dask's safety valve: fail a task whose inputs cannot fit the worker."""
    nbytes = deps_nbytes(state, ts)
    ts.exception = MemoryError(
        f"Task {ts.key!r} has {nbytes} bytes of dependencies, more than the "
        f"{ws.memory_limit} bytes of memory of worker {ws.address}"
    )
    ts.exception_text = str(ts.exception)
    ts.exception_blame = ts
    return {ts.key: "erred"}


def exit_processing_common(state: SchedulerState, ts: TaskState) -> WorkerState | None:
    ws = ts.processing_on
    assert ws is not None
    ts.processing_on = None
    processing = ws.processing
    cost = processing.pop(ts)
    # Guards on emptiness before membership tests: hashing a task or a
    # worker is a Python-level call, and these are usually empty.
    long_running = ws.long_running
    if long_running and ts in long_running:
        long_running.discard(ts)
    else:
        ws.occupancy -= cost
        state.total_occupancy -= cost
        counts = ws.task_prefix_count
        prefix = ts.prefix
        n = counts[prefix] - 1
        if n:
            counts[prefix] = n
        else:
            del counts[prefix]
    if not processing:
        # Drop float residue so an idle worker reads exactly zero.
        state.total_occupancy -= ws.occupancy
        ws.occupancy = 0.0
    if ts.resource_restrictions:
        used = ws.used_resources
        for name, amount in ts.resource_restrictions.items():
            used[name] -= amount
    if state._unknown_durations:
        unknown = state._unknown_durations.get(ts.prefix)
        if unknown is not None:
            unknown.discard(ts)
    stealing = state.stealing
    if stealing.enabled:
        # WorkStealing.discard, inlined (this runs once per task): one hash
        # of the task per structure, and none for an empty one.
        stealable = stealing.stealable
        if stealable:
            per_worker = stealable.get(ws)
            if per_worker is not None:
                per_worker.pop(ts, None)
                if not per_worker:
                    del stealable[ws]
        if stealing.in_flight:
            request = stealing.in_flight.pop(ts, None)
            if request is not None:
                stealing.undo_in_flight(ts, request[0], request[1])
    if ws.status == "closed":
        return None
    check_idle_saturated(state, ws)
    return ws


# -- finishing ----------------------------------------------------------------


def _transition_processing_memory(
    state: SchedulerState,
    ts: TaskState,
    stimulus_id: str,
    *,
    worker: str,
    nbytes: int = -1,
    type: str | None = None,
    startstops: tuple[tuple[str, float, float], ...] = (),
    shared: bool = False,
    **kwargs: Any,
) -> Recs:
    ws = state.workers.get(worker)
    if ws is None or ts.processing_on is not ws:
        # A stale answer from a worker we no longer trust with this task.
        return {ts.key: "released"}
    return processing_to_memory(
        state, ts, ws, nbytes, type, startstops, shared, stimulus_id
    )


def processing_to_memory(
    state: SchedulerState,
    ts: TaskState,
    ws: WorkerState,
    nbytes: int,
    typename: str | None,
    startstops: tuple[tuple[str, float, float], ...],
    shared: bool,
    stimulus_id: str,
) -> Recs:
    """processing -> memory on ``ws``, which is ``ts.processing_on``.

    Positional, so that ``TaskFinished``'s fast path in ``stimuli.py`` calls it
    without packing keyword arguments (this runs once per task).
    """
    group = ts.group
    for action, start, stop in startstops:
        if action == "compute":
            # TaskGroup.add_duration and TaskPrefix.add_duration, inlined
            # for the one action every result reports.
            duration = stop - start
            group.duration += duration
            if not group.start or start < group.start:
                group.start = start
            if stop > group.stop:
                group.stop = stop
            prefix = group.prefix
            all_durations = prefix.all_durations
            all_durations["compute"] = all_durations.get("compute", 0.0) + duration
            old = prefix.duration_average
            prefix.duration_average = (
                duration if old < 0 else 0.5 * duration + 0.5 * old
            )
        else:
            group.add_duration(action, start, stop)
    exit_processing_common(state, ts)
    if startstops:
        if state.fast_task_slots:
            update_extra_slots(state, ts.prefix)
        if state._unknown_durations and ts.prefix in state._unknown_durations:
            realign_unknown(state, ts.prefix)
    recs: Recs = {}
    _add_to_memory(state, ts, ws, recs, nbytes, typename, shared, stimulus_id)
    return recs


def _add_to_memory(
    state: SchedulerState,
    ts: TaskState,
    ws: WorkerState | None,
    recs: Recs,
    nbytes: int,
    typename: str | None,
    shared: bool,
    stimulus_id: str,
) -> None:
    ts.shared = shared
    if ws is not None and not ts.who_has:
        # _set_nbytes then add_replica, inlined for the usual first result.
        if nbytes >= 0:
            diff = nbytes - ts.nbytes if ts.nbytes >= 0 else nbytes
            ts.group.nbytes_total += diff
            ts.prefix.nbytes_total += diff
            ts.nbytes = nbytes
        # A one-member link set is that member's ``alone`` frozenset (tasks.py,
        # ``with_link``).
        ts.who_has = ws.alone
        ws.has_what[ts] = None
        ws.nbytes += nbytes if nbytes >= 0 else ts.get_nbytes()
    else:
        if nbytes >= 0:
            set_nbytes(state, ts, nbytes)
        if ws is not None:
            add_replica(state, ts, ws)
    dependents = ts.dependents
    if dependents:
        ordered: Iterable[TaskState]
        if len(dependents) > 1:
            ordered = sorted(dependents, key=_priority_of, reverse=True)
        else:
            ordered = dependents
        for dts in ordered:
            waiting_on = dts.waiting_on
            if waiting_on and ts in waiting_on:
                # Non-empty: a real set (tasks.TaskState.waiting_on).
                waiting_on = cast("set[TaskState]", waiting_on)
                waiting_on.discard(ts)
                if not waiting_on:
                    recs[dts.key] = "processing"
    for dts in ts.dependencies:
        waiters = dts.waiters
        if waiters:
            # without_link, inlined (per dependency of every result).
            if type(waiters) is set:
                waiters.discard(ts)
            elif ts in waiters:
                waiters = dts.waiters = EMPTY_SET
        if not waiters and not dts.who_wants:
            recs[dts.key] = "released"
    ts.state = "memory"
    ts.type = typename
    if typename is not None:
        ts.group.types.add(typename)
        ts.prefix.types.add(typename)
    who_wants = ts.who_wants
    if not ts.waiters and not who_wants:
        recs[ts.key] = "released"
    else:
        commands = state._commands
        for cs in who_wants:
            commands.append(key_in_memory(stimulus_id, cs.client_key, ts.key, typename))
    faf = state.clients.get("fire-and-forget")
    if faf is not None and faf.wants_what and ts in faf.wants_what:
        client_releases_keys(state, (ts.key,), faf, recs)


def _transition_waiting_memory(
    state: SchedulerState, ts: TaskState, stimulus_id: str, **kwargs: Any
) -> Recs:
    # A benign race: a result arrived for a task we had sent back to waiting.
    # The data is dropped; the task will run again where we place it.
    return {}


# -- errors -------------------------------------------------------------------


def _transition_processing_erred(
    state: SchedulerState,
    ts: TaskState,
    stimulus_id: str,
    *,
    worker: str | None = None,
    cause: Key | None = None,
    exception: object = None,
    traceback: object = None,
    exception_text: str = "",
    traceback_text: str = "",
    startstops: tuple[tuple[str, float, float], ...] = (),
    **kwargs: Any,
) -> Recs:
    for action, start, stop in startstops:
        ts.group.add_duration(action, start, stop)
    exit_processing_common(state, ts)
    return _propagate_erred(
        state,
        ts,
        stimulus_id,
        worker=worker,
        cause=cause,
        exception=exception,
        traceback=traceback,
        exception_text=exception_text,
        traceback_text=traceback_text,
    )


def _transition_no_worker_erred(
    state: SchedulerState, ts: TaskState, stimulus_id: str, **kwargs: Any
) -> Recs:
    del state.unrunnable[ts]
    return _propagate_erred(state, ts, stimulus_id, **kwargs)


def _transition_queued_erred(
    state: SchedulerState, ts: TaskState, stimulus_id: str, **kwargs: Any
) -> Recs:
    state.queued.discard(ts)
    return _propagate_erred(state, ts, stimulus_id, **kwargs)


def _propagate_erred(
    state: SchedulerState,
    ts: TaskState,
    stimulus_id: str,
    *,
    worker: str | None = None,
    cause: Key | None = None,
    exception: object = None,
    traceback: object = None,
    exception_text: str = "",
    traceback_text: str = "",
) -> Recs:
    ts.state = "erred"
    if worker is not None:
        if ts.erred_on is None:
            ts.erred_on = set()
        ts.erred_on.add(worker)
    if exception is not None:
        ts.exception = exception
        ts.exception_text = exception_text or ts.exception_text
    if traceback is not None:
        ts.traceback = traceback
    if traceback_text:
        ts.traceback_text = traceback_text
    if cause is not None:
        failing = state.tasks[cause]
        ts.exception_blame = failing
    else:
        failing = ts.exception_blame or ts
        ts.exception_blame = failing
    state.erred_tasks.appendleft(
        (ts.key, state.now, tuple(ts.erred_on or ()), ts.exception_text)
    )
    recs: Recs = {}
    for dts in ts.waiters:
        dts.exception_blame = failing
        recs[dts.key] = "erred"
    for dts in ts.dependencies:
        waiters = dts.waiters
        if waiters:
            waiters = dts.waiters = without_link(waiters, ts)
        if not waiters and not dts.who_wants:
            recs[dts.key] = "released"
    ts.waiters = EMPTY_SET
    _report_erred(state, ts, failing, stimulus_id)
    faf = state.clients.get("fire-and-forget")
    if faf is not None and ts in faf.wants_what:
        client_releases_keys(state, (ts.key,), faf, recs)
    return recs


def _report_erred(
    state: SchedulerState, ts: TaskState, failing: TaskState, stimulus_id: str
) -> None:
    for cs in ts.who_wants:
        state._commands.append(key_erred(ts, failing, cs.client_key, stimulus_id))


def _transition_released_erred(
    state: SchedulerState, ts: TaskState, stimulus_id: str, **kwargs: Any
) -> Recs:
    failing = ts.exception_blame
    if failing is None:
        # Erred from released without a cause: the task itself is to blame
        # (exception passed in, e.g. KilledWorker or a refused placement).
        failing = ts
        ts.exception_blame = ts
        if kwargs.get("exception") is not None:
            ts.exception = kwargs["exception"]
            ts.exception_text = kwargs.get("exception_text", "")
    recs: Recs = {}
    for dts in ts.dependents:
        if not dts.who_has and dts.state not in ("erred", "memory"):
            dts.exception_blame = failing
            recs[dts.key] = "erred"
    ts.state = "erred"
    _report_erred(state, ts, failing, stimulus_id)
    return recs


def _transition_erred_released(
    state: SchedulerState, ts: TaskState, stimulus_id: str
) -> Recs:
    ts.exception = None
    ts.exception_blame = None
    ts.traceback = None
    ts.exception_text = ts.traceback_text = ""
    recs: Recs = {}
    for dts in ts.dependents:
        if dts.state == "erred":
            recs[dts.key] = "waiting"
    for address in ts.erred_on or ():
        ws = state.workers.get(address)
        if ws is not None and ws.status != "closed":  # not one being removed
            state._commands.append(
                FreeKeys(stimulus_id=stimulus_id, worker=address, keys=(ts.key,))
            )
    ts.erred_on = None
    for cs in ts.who_wants:
        state._commands.append(
            KeyRetried(stimulus_id=stimulus_id, client=cs.client_key, key=ts.key)
        )
    ts.state = "released"
    return recs


# -- releasing ----------------------------------------------------------------


def _transition_waiting_released(
    state: SchedulerState, ts: TaskState, stimulus_id: str
) -> Recs:
    recs: Recs = {}
    for dts in ts.dependencies:
        waiters = dts.waiters
        if ts in waiters:
            waiters = dts.waiters = without_link(waiters, ts)
            if not waiters and not dts.who_wants:
                recs[dts.key] = "released"
    ts.waiting_on = EMPTY_SET
    ts.state = "released"
    if ts.has_lost_dependencies:
        recs[ts.key] = "forgotten"
    elif ts.exception_blame is None and (ts.who_wants or ts.waiters):
        recs[ts.key] = "waiting"
    else:
        ts.waiters = EMPTY_SET
    return recs


def _transition_queued_released(
    state: SchedulerState, ts: TaskState, stimulus_id: str
) -> Recs:
    state.queued.discard(ts)
    recs: Recs = {}
    _propagate_released(state, ts, recs)
    return recs


def _transition_no_worker_released(
    state: SchedulerState, ts: TaskState, stimulus_id: str
) -> Recs:
    del state.unrunnable[ts]
    recs: Recs = {}
    _propagate_released(state, ts, recs)
    return recs


def _transition_processing_released(
    state: SchedulerState, ts: TaskState, stimulus_id: str
) -> Recs:
    ws = exit_processing_common(state, ts)
    if ws is not None:
        state._commands.append(free_keys(stimulus_id, ws.address, (ts.key,)))
    recs: Recs = {}
    _propagate_released(state, ts, recs)
    return recs


def _propagate_released(state: SchedulerState, ts: TaskState, recs: Recs) -> None:
    ts.state = "released"
    ts.waiting_on = EMPTY_SET
    key = ts.key
    if ts.has_lost_dependencies:
        recs[key] = "forgotten"
    elif ts.waiters or ts.who_wants:
        recs[key] = "waiting"
    if recs.get(key) != "waiting":
        for dts in ts.dependencies:
            if dts.state != "released":
                waiters = dts.waiters
                if waiters:
                    waiters = dts.waiters = without_link(waiters, ts)
                if not waiters and not dts.who_wants:
                    recs[dts.key] = "released"
        ts.waiters = EMPTY_SET


def _transition_memory_released(
    state: SchedulerState, ts: TaskState, stimulus_id: str
) -> Recs:
    key = ts.key
    who_has = ts.who_has
    if who_has:
        commands = state._commands
        nbytes = ts.get_nbytes()
        for ws in who_has:
            commands.append(free_keys(stimulus_id, ws.address, (key,)))
            # remove_all_replicas, inlined
            del ws.has_what[ts]
            ws.nbytes -= nbytes
        ts.who_has = EMPTY_SET
    if ts.shared or ts.actor:
        _free_data(state, ts, stimulus_id)
    ts.state = "released"
    if ts.actor and ts.who_wants:
        # As dask: the actor's state lived in its worker only; a new object
        # would silently lose it, so the task errs instead of rerunning.
        ts.exception_blame = ts
        ts.exception = RuntimeError(ACTOR_LOST)
        ts.exception_text = repr(ts.exception)
        return {key: "erred"}
    for cs in ts.who_wants:
        state._commands.append(
            KeyLost(stimulus_id=stimulus_id, client=cs.client_key, key=key)
        )
    recs: Recs = {}
    if ts.run_spec is None or ts.has_lost_dependencies:
        recs[key] = "forgotten"
    elif ts.who_wants or ts.waiters:
        # released->waiting errs at once if a dependency erred. dask keeps the
        # key released then, and a future that heard "lost" waits forever.
        recs[key] = "waiting"
    for dts in ts.waiters:
        if dts.state in ("no-worker", "processing", "queued"):
            recs[dts.key] = "waiting"
        elif dts.state == "waiting":
            waiting_on = dts.waiting_on
            if type(waiting_on) is not set:  # the shared EMPTY_SET
                waiting_on = dts.waiting_on = set()
            waiting_on.add(ts)
    return recs


def _free_data(state: SchedulerState, ts: TaskState, stimulus_id: str) -> None:
    # An actor's stored result is its handle, freed with the task too.
    if ts.shared or ts.actor:
        ts.shared = False
        state._commands.append(FreeData(stimulus_id=stimulus_id, key=ts.key))


# -- forgetting ---------------------------------------------------------------


def _transition_released_forgotten(
    state: SchedulerState, ts: TaskState, stimulus_id: str
) -> Recs:
    recs: Recs = {}
    _propagate_forgotten(state, ts, recs, stimulus_id)
    _remove_key(state, ts, stimulus_id)
    return recs


def _transition_memory_forgotten(
    state: SchedulerState, ts: TaskState, stimulus_id: str
) -> Recs:
    recs: Recs = {}
    _propagate_forgotten(state, ts, recs, stimulus_id)
    _remove_key(state, ts, stimulus_id)
    return recs


def _propagate_forgotten(
    state: SchedulerState, ts: TaskState, recs: Recs, stimulus_id: str
) -> None:
    ts.state = "forgotten"
    for dts in ts.dependents:
        dts.has_lost_dependencies = True
        dts.dependencies = without_link(dts.dependencies, ts)
        if dts.waiting_on:
            # Non-empty: a real set (tasks.TaskState.waiting_on).
            cast("set[TaskState]", dts.waiting_on).discard(ts)
        if dts.state not in ("memory", "erred"):
            recs[dts.key] = "forgotten"
    ts.dependents = EMPTY_SET
    ts.waiters = EMPTY_SET
    for dts in ts.dependencies:
        dts.dependents = without_link(dts.dependents, ts)
        if dts.waiters:
            dts.waiters = without_link(dts.waiters, ts)
        if not dts.dependents and not dts.who_wants:
            recs[dts.key] = "forgotten"
    ts.dependencies = EMPTY_SET
    ts.waiting_on = EMPTY_SET
    who_has = ts.who_has
    if who_has:
        nbytes = ts.get_nbytes()
        for ws in who_has:
            if ws.status != "closed":
                state._commands.append(free_keys(stimulus_id, ws.address, (ts.key,)))
            # remove_all_replicas, inlined (this runs once per task)
            del ws.has_what[ts]
            ws.nbytes -= nbytes
        ts.who_has = EMPTY_SET
    if ts.shared or ts.actor:
        _free_data(state, ts, stimulus_id)


def _remove_key(state: SchedulerState, ts: TaskState, stimulus_id: str) -> None:
    del state.tasks[ts.key]
    if state.unrunnable:
        state.unrunnable.pop(ts, None)
    for cs in ts.who_wants:
        cs.wants_what.discard(ts)
        state._commands.append(
            key_cancelled(stimulus_id, cs.client_key, ts.key, "forgotten")
        )
    ts.who_wants = EMPTY_SET
    # Nothing holds its ``alone`` any more: break the reference cycle, so
    # the record is freed now rather than by a full collection.
    ts.alone = None
    ts.processing_on = None
    ts.exception_blame = ts.exception = ts.traceback = None
    if state.task_metadata:
        state.task_metadata.pop(ts.key, None)


# C-level key function: much cheaper than a Python one per sorted task.
_priority_of = attrgetter("priority")


TransitionFunc = Callable[..., Recs]

TRANSITIONS_TABLE: dict[tuple[str, str], TransitionFunc] = {
    ("released", "waiting"): _transition_released_waiting,
    ("waiting", "released"): _transition_waiting_released,
    ("waiting", "processing"): _transition_waiting_processing,
    ("waiting", "no-worker"): _transition_waiting_no_worker,
    ("waiting", "queued"): _transition_waiting_queued,
    ("waiting", "memory"): _transition_waiting_memory,
    ("queued", "released"): _transition_queued_released,
    ("queued", "processing"): _transition_queued_processing,
    ("queued", "erred"): _transition_queued_erred,
    ("processing", "released"): _transition_processing_released,
    ("processing", "memory"): _transition_processing_memory,
    ("processing", "erred"): _transition_processing_erred,
    ("no-worker", "released"): _transition_no_worker_released,
    ("no-worker", "processing"): _transition_no_worker_processing,
    ("no-worker", "erred"): _transition_no_worker_erred,
    ("released", "forgotten"): _transition_released_forgotten,
    ("memory", "forgotten"): _transition_memory_forgotten,
    ("erred", "released"): _transition_erred_released,
    ("memory", "released"): _transition_memory_released,
    ("released", "erred"): _transition_released_erred,
}

#: The same edges by start state, then finish state, for the engine's loop:
#: two lookups of interned strings cost less than building and hashing a
#: ``(start, finish)`` tuple per transition. Every state has an entry.
TRANSITIONS_FROM: dict[str, dict[str, TransitionFunc]] = {
    name: {} for name in ALL_TASK_STATES
}
for (_start, _finish), _func in TRANSITIONS_TABLE.items():
    TRANSITIONS_FROM[_start][_finish] = _func
