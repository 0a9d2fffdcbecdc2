"""Stimulus handlers: each turns one event into recommendations and runs them.

One ``on_<event>(state, event)`` per event class; ``state.py`` dispatches on the
event type. Handlers validate what they are told first and change nothing when
it is wrong. Graphs (``UpdateGraph``) are taken in by ``graphs.py``.
"""

from __future__ import annotations

from collections.abc import Collection
from operator import attrgetter
from typing import TYPE_CHECKING, Any, cast

from localsched.errors import KilledWorker, NoValidWorkerError
from localsched.scheduler import events as ev
from localsched.scheduler.clients import (
    client_releases,
    client_releases_keys,
    ensure_client,
    report_on_key,
)
from localsched.scheduler.commands import (
    AcquireReplicas,
    CloseWorker,
    FreeData,
    FreeKeys,
    KeyCancelled,
    KeyInMemory,
    RetirementFailed,
)
from localsched.scheduler.engine import (
    count_state_change,
    new_task,
    notify,
    record_transition,
    run_lone_transitions,
    run_transitions,
    transition,
)
from localsched.scheduler.events import validate_key as validate_key
from localsched.scheduler.placement import (
    add_replica,
    check_idle_saturated,
    get_prefix_duration,
    realign_occupancy,
    remove_replica,
    set_nbytes,
    valid_workers,
)
from localsched.scheduler.stealing import (
    STEALABLE_WORKER_STATES,
    balance,
    hand_off_unstarted,
)
from localsched.scheduler.tasks import (
    ClientState,
    Key,
    TaskState,
    WorkerState,
    link_client,
)
from localsched.scheduler.transitions import (
    add_to_processing,
    exit_processing_common,
    processing_to_memory,
)

if TYPE_CHECKING:
    from localsched.scheduler.state import SchedulerState

Recs = dict[Key, str]


# -- data ------------------------------------------------------------------


def on_update_data(state: SchedulerState, event: ev.UpdateData) -> None:
    state.now = max(state.now, event.time)
    cs = ensure_client(state, event.client)
    for key in event.who_has:
        validate_key(key)
    stimulus_id = event.stimulus_id
    for key, address in event.who_has.items():
        ts = state.tasks.get(key)
        recs: Recs = {}
        if ts is not None and ts.state not in ("memory", "released"):
            # The scattered value replaces the computation: stop it, without
            # following the recommendation to compute it again.
            recs = dict(transition(state, key, "released", stimulus_id))
            recs.pop(key, None)
            ts = state.tasks.get(key)
        if ts is None:
            ts = new_task(state, key, None)
            ts.priority = (0, state.generation, state._next_order)
            state._next_order += 1
        if ts not in cs.wants_what:
            link_client(cs, ts)
        nbytes = event.nbytes.get(key, -1)
        if ts.state == "released":
            set_nbytes(state, ts, nbytes)
            ts.shared = event.shared
            ts.state = "memory"
            count_state_change(ts, "released")
            state.transition_log.record(
                key, "released", "memory", {}, stimulus_id, state.now
            )
            ts.type = event.types.get(key)
            if ts.type:
                ts.group.types.add(ts.type)
        ws = state.workers.get(address) if address is not None else None
        if ws is not None:
            add_replica(state, ts, ws)
        for waiter in list(ts.waiters):
            if ts in waiter.waiting_on:
                # Non-empty: a real set (tasks.TaskState.waiting_on).
                cast("set[TaskState]", waiter.waiting_on).discard(ts)
                if not waiter.waiting_on:
                    recs[waiter.key] = "processing"
        state._commands.append(
            KeyInMemory(
                stimulus_id=stimulus_id, client=cs.client_key, key=key, type=ts.type
            )
        )
        run_transitions(state, recs, stimulus_id)


# -- results ------------------------------------------------------------------


def on_task_finished(state: SchedulerState, event: ev.TaskFinished) -> None:
    ts = state.tasks.get(event.key)
    ws = state.workers.get(event.worker)
    stimulus_id = event.stimulus_id
    startstops = event.startstops
    if startstops:
        stop = startstops[-1][2]
        if stop > state.now:  # max(), without the builtin's call
            state.now = stop
    stale = ts is not None and 0 <= event.run_id != ts.run_id
    if (
        ts is not None
        and ws is not None
        and ts.state == "processing"
        and ts.processing_on is ws
        and not stale
    ):
        if state.transition_hook is None and not state.transition_counter_max:
            # The engine's fast path without packing keyword arguments: the
            # checks above are exactly processing->memory's own.
            state.transition_counter += 1
            recs = processing_to_memory(
                state,
                ts,
                ws,
                event.nbytes,
                event.type,
                startstops,
                event.shared,
                stimulus_id,
            )
            record_transition(state, ts, "processing", recs, stimulus_id)
        else:
            recs = transition(
                state,
                event.key,
                "memory",
                stimulus_id,
                worker=event.worker,
                nbytes=event.nbytes,
                type=event.type,
                startstops=event.startstops,
                shared=event.shared,
            )
        if recs:  # often empty: a wanted result with no waiting dependent
            run_transitions(state, recs, stimulus_id)
        if state._retiring:
            check_retirements(state, stimulus_id)
        return
    if ts is not None and ws is not None and ts.state == "memory" and not stale:
        # A second copy (e.g. a steal that raced): keep the first result.
        if event.shared:
            return
        add_replica(state, ts, ws)
        return
    # Stale: the task moved on. Tell the worker to drop it.
    if ts is not None and ws is not None and ts.processing_on is ws:
        # An older run's answer from the worker now running a newer one: a
        # FreeKeys would cancel the new run too (it names keys, not runs).
        # Place the task again, as dask does.
        run_transitions(state, {event.key: "released"}, stimulus_id)
    elif ws is not None and (ts is None or ws not in ts.who_has):
        state._commands.append(
            FreeKeys(stimulus_id=stimulus_id, worker=ws.address, keys=(event.key,))
        )
    if event.shared and (ts is None or ts.state != "memory"):
        state._commands.append(FreeData(stimulus_id=stimulus_id, key=event.key))


def on_task_erred(state: SchedulerState, event: ev.TaskErred) -> None:
    ts = state.tasks.get(event.key)
    ws = state.workers.get(event.worker)
    if (
        ts is None
        or ws is None
        or ts.state != "processing"
        or ts.processing_on is not ws
        or (event.run_id >= 0 and event.run_id != ts.run_id)
    ):
        return
    stimulus_id = event.stimulus_id
    if ts.retries > 0:
        ts.retries -= 1
        recs = transition(state, event.key, "waiting", stimulus_id)
    else:
        recs = transition(
            state,
            event.key,
            "erred",
            stimulus_id,
            worker=event.worker,
            exception=event.exception,
            traceback=event.traceback,
            exception_text=event.exception_text,
            traceback_text=event.traceback_text,
            startstops=event.startstops,
        )
    run_transitions(state, recs, stimulus_id)
    if state._retiring:
        check_retirements(state, stimulus_id)


# -- workers --------------------------------------------------------------------


def on_worker_added(state: SchedulerState, event: ev.WorkerAdded) -> None:
    state.now = max(state.now, event.time)
    if event.address in state.workers:
        return
    ws = WorkerState(
        event.address,
        event.nthreads,
        name=event.name,
        memory_limit=event.memory_limit,
        resources=dict(event.resources or {}),
        host=event.host,
        pid=event.pid,
    )
    ws.last_seen = event.time
    state.workers[ws.address] = ws
    state._workers_by_name[ws.name] = ws
    state.running.add(ws)
    state.total_nthreads += ws.nthreads
    info = state.host_info.setdefault(ws.host, {"addresses": set(), "nthreads": 0})
    info["addresses"].add(ws.address)
    info["nthreads"] += ws.nthreads
    for other in state.workers.values():
        check_idle_saturated(state, other)
    notify(state, "add_worker", worker=ws.address)
    _schedule_unrunnable(state, ws, event.stimulus_id)


def _schedule_unrunnable(
    state: SchedulerState, ws: WorkerState, stimulus_id: str
) -> None:
    if not state.unrunnable:
        return
    recs: Recs = {}
    for ts in sorted(state.unrunnable, key=_priority, reverse=True):
        valid = valid_workers(state, ts)
        if valid is None or ws in valid or ts.loose_restrictions:
            recs[ts.key] = "processing"
    run_transitions(state, recs, stimulus_id)


def on_worker_removed(state: SchedulerState, event: ev.WorkerRemoved) -> None:
    state.now = max(state.now, event.time)
    ws = state.workers.get(event.address)
    if ws is None:
        return
    _remove_worker(
        state,
        ws,
        event.stimulus_id,
        expected=event.expected,
        reason=event.reason,
        executing=event.executing,
    )


def _remove_worker(
    state: SchedulerState,
    ws: WorkerState,
    stimulus_id: str,
    *,
    expected: bool,
    reason: str = "",
    executing: Collection[Key] | None = None,
) -> None:
    address = ws.address
    ws.status = "closed"
    state.running.discard(ws)
    state.idle.pop(address, None)
    state.idle_task_count.discard(ws)
    state.saturated.discard(ws)
    state.total_nthreads -= ws.nthreads
    state._retiring.pop(address, None)
    info = state.host_info.get(ws.host)
    if info is not None:
        info["addresses"].discard(address)
        info["nthreads"] -= ws.nthreads
        if not info["addresses"]:
            del state.host_info[ws.host]
    recs: Recs = {}
    killed: list[TaskState] = []
    executing_keys = None if executing is None else set(executing)
    for ts in sorted(ws.processing, key=_priority, reverse=True):
        recs[ts.key] = "released"
        if expected:
            continue
        if executing_keys is not None and ts.key not in executing_keys:
            continue
        ts.suspicious += 1
        ts.prefix.suspicious += 1
        if ts.suspicious > state.allowed_failures:
            del recs[ts.key]
            killed.append(ts)
    for ts in list(ws.has_what):
        remove_replica(state, ts, ws)
        if not ts.who_has and not ts.shared:
            recs[ts.key] = "released" if ts.run_spec is not None else "forgotten"
    for ts in killed:
        error = KilledWorker(ts.key, ws, state.allowed_failures, reason)
        run_transitions(
            state,
            transition(
                state,
                ts.key,
                "erred",
                stimulus_id,
                worker=address,
                exception=error,
                exception_text=str(error),
                cause=ts.key,
            ),
            stimulus_id,
        )
    run_transitions(state, recs, stimulus_id)
    assert not ws.processing, ws.processing
    del state.workers[address]
    if state._workers_by_name.get(ws.name) is ws:
        del state._workers_by_name[ws.name]
    if state.total_nthreads:
        for other in state.workers.values():
            check_idle_saturated(state, other)
    notify(state, "remove_worker", worker=address, stimulus_id=stimulus_id)


def on_worker_status_changed(
    state: SchedulerState, event: ev.WorkerStatusChanged
) -> None:
    ws = state.workers.get(event.address)
    if ws is None or ws.status == event.status or ws.status == "closing_gracefully":
        return
    if event.status == "paused":
        ws.status = "paused"
        state.running.discard(ws)
        state.idle.pop(ws.address, None)
        state.idle_task_count.discard(ws)
        state.saturated.discard(ws)
    elif event.status == "running":
        ws.status = "running"
        state.running.add(ws)
        check_idle_saturated(state, ws)
        _schedule_unrunnable(state, ws, event.stimulus_id)
    else:
        raise ValueError(f"Unknown worker status {event.status!r}")


def on_worker_heartbeat(state: SchedulerState, event: ev.WorkerHeartbeat) -> None:
    state.now = max(state.now, event.time)
    ws = state.workers.get(event.address)
    if ws is None:
        return
    ws.last_seen = event.time
    ws.metrics = dict(event.metrics)
    ws.executing_count = len(event.executing)
    changed = False
    for key, elapsed in event.executing.items():
        ts = state.tasks.get(key)
        if ts is not None and ts.processing_on is ws:
            before = get_prefix_duration(state, ts.prefix)
            ts.prefix.add_exec_time(elapsed)
            changed |= get_prefix_duration(state, ts.prefix) != before
    if changed:
        # A task running longer than expected makes its worker busier than
        # the occupancy says; stealing and placement must see that now (dask
        # recomputes occupancy from its prefix counts on every read).
        realign_occupancy(state)


def on_task_seceded(state: SchedulerState, event: ev.TaskSeceded) -> None:
    handle_long_running(state, event.key, event.worker, event.compute_duration)


def handle_long_running(
    state: SchedulerState,
    key: Key,
    worker: str,
    compute_duration: float | None = None,
) -> None:
    """A task seceded: it stops counting against its worker's threads."""
    ts = state.tasks.get(key)
    ws = state.workers.get(worker)
    if ts is None or ws is None or ts.processing_on is not ws:
        return
    if ts in ws.long_running:
        return
    if compute_duration is not None:
        old = ts.prefix.duration_average
        ts.prefix.duration_average = (
            compute_duration if old < 0 else (old + compute_duration) / 2
        )
    cost = ws.processing[ts]
    ws.occupancy -= cost
    state.total_occupancy -= cost
    counts = ws.task_prefix_count
    counts[ts.prefix] -= 1
    if not counts[ts.prefix]:
        del counts[ts.prefix]
    ws.long_running.add(ts)
    if state.stealing.enabled:
        state.stealing.discard(ts, ws)
    check_idle_saturated(state, ws)


# -- clients ----------------------------------------------------------------------


def on_client_added(state: SchedulerState, event: ev.ClientAdded) -> None:
    ensure_client(state, event.client)


def on_client_removed(state: SchedulerState, event: ev.ClientRemoved) -> None:
    cs = state.clients.get(event.client)
    if cs is None or event.client == "fire-and-forget":
        return
    recs: Recs = {}
    client_releases_keys(state, [ts.key for ts in cs.wants_what], cs, recs)
    del state.clients[event.client]
    run_transitions(state, recs, event.stimulus_id)
    notify(state, "remove_client", client=event.client)


def on_client_releases_keys(
    state: SchedulerState, event: ev.ClientReleasesKeys
) -> None:
    cs = state.clients.get(event.client)
    if cs is None:
        return
    released: list[TaskState] = []
    finishes: list[str] = []
    client_releases(state, event.keys, cs, released, finishes)
    for ts in released:
        if ts.dependencies or ts.dependents:
            break
    else:
        # Every one is forgotten (it has no dependents) and none links to
        # another task: a map's results.
        run_lone_transitions(state, released, "forgotten", event.stimulus_id)
        return
    recs = {ts.key: finish for ts, finish in zip(released, finishes, strict=True)}
    released.clear()  # a task forgotten below is freed at once, not on return
    run_transitions(state, recs, event.stimulus_id)


def on_client_desires_keys(state: SchedulerState, event: ev.ClientDesiresKeys) -> None:
    cs = ensure_client(state, event.client)
    recs: Recs = {}
    for key in event.keys:
        ts = state.tasks.get(key)
        if ts is None:
            # dask warns and leaves the future pending forever; here whoever
            # waits on it learns at once that the data is gone.
            state._commands.append(
                KeyCancelled(
                    stimulus_id=event.stimulus_id,
                    client=event.client,
                    key=key,
                    reason="lost dependencies",
                )
            )
            continue
        if ts not in cs.wants_what:
            link_client(cs, ts)
        if ts.state in ("memory", "erred"):
            report_on_key(state, ts, cs, event.stimulus_id)
        elif ts.state == "released" and ts.run_spec is not None:
            # dask leaves this future pending forever; compute the key, as
            # submitting it again would.
            recs[key] = "waiting"
    run_transitions(state, recs, event.stimulus_id)


def on_cancel_requested(state: SchedulerState, event: ev.CancelRequested) -> None:
    cs = state.clients.get(event.client)
    if cs is None:
        return
    recs: Recs = {}
    for key in event.keys:
        _cancel_key(state, key, cs, event.force, recs, event.stimulus_id, set())
    run_transitions(state, recs, event.stimulus_id)


def _cancel_key(
    state: SchedulerState,
    key: Key,
    cs: ClientState,
    force: bool,
    recs: Recs,
    stimulus_id: str,
    seen: set[Key],
) -> None:
    if key in seen:
        return
    seen.add(key)
    ts = state.tasks.get(key)
    if ts is None or not ts.who_wants:
        return
    if not (force or ts.who_wants == {cs}):
        return
    for dts in list(ts.dependents):
        _cancel_key(state, dts.key, cs, force, recs, stimulus_id, seen)
    for client in list(ts.who_wants):
        state._commands.append(
            KeyCancelled(
                stimulus_id=stimulus_id,
                client=client.client_key,
                key=key,
                reason="cancelled",
            )
        )
        client_releases_keys(state, (key,), client, recs)


def cancel_key(
    state: SchedulerState,
    key: Key,
    client: str,
    force: bool = False,
    *,
    stimulus_id: str = "cancel",
) -> None:
    """Cancel ``key`` and its dependents for ``client`` (dask's ``cancel_key``)."""
    on_cancel_requested(
        state,
        ev.CancelRequested(
            stimulus_id=stimulus_id, client=client, keys=(key,), force=force
        ),
    )


def on_retry_requested(state: SchedulerState, event: ev.RetryRequested) -> None:
    stack = [k for k in event.keys if k in state.tasks]
    seen: set[Key] = set()
    roots: list[Key] = []
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        ts = state.tasks[key]
        erred_deps = [dts.key for dts in ts.dependencies if dts.state == "erred"]
        if erred_deps:
            stack.extend(erred_deps)
        elif ts.state == "erred":
            roots.append(key)
    run_transitions(state, dict.fromkeys(roots, "waiting"), event.stimulus_id)


def on_reschedule_requested(
    state: SchedulerState, event: ev.RescheduleRequested
) -> None:
    ts = state.tasks.get(event.key)
    if ts is None or ts.state != "processing":
        return
    assert ts.processing_on is not None
    if event.worker is not None and ts.processing_on.address != event.worker:
        return
    run_transitions(state, {event.key: "released"}, event.stimulus_id)


def on_missing_data(state: SchedulerState, event: ev.MissingData) -> None:
    ts = state.tasks.get(event.key)
    if ts is None or ts.state != "memory":
        return
    if event.worker is None:
        # The shared store lost it: every copy is gone.
        for ws in list(ts.who_has):
            remove_replica(state, ts, ws)
        ts.shared = False
    else:
        holder = state.workers.get(event.worker)
        if holder is not None:
            remove_replica(state, ts, holder)
    if not ts.who_has and not ts.shared:
        target = "released" if ts.run_spec is not None else "forgotten"
        run_transitions(state, {event.key: target}, event.stimulus_id)


def on_replicas_added(state: SchedulerState, event: ev.ReplicasAdded) -> None:
    ws = state.workers.get(event.worker)
    if ws is None:
        return
    stale: list[Key] = []
    for key in event.keys:
        ts = state.tasks.get(key)
        if ts is not None and ts.state == "memory":
            add_replica(state, ts, ws)
        else:
            stale.append(key)
    if stale:
        state._commands.append(
            FreeKeys(
                stimulus_id=event.stimulus_id, worker=ws.address, keys=tuple(stale)
            )
        )
    if state._retiring:
        check_retirements(state, event.stimulus_id)


def on_steal_response(state: SchedulerState, event: ev.StealResponse) -> None:
    ts = state.tasks.get(event.key)
    if ts is None:
        return
    request = state.stealing.settle(ts, event.worker)
    if request is None:
        return
    victim, thief, _ = request
    stimulus_id = event.stimulus_id
    if ts.state != "processing" or ts.processing_on is not victim:
        return
    if event.state is None:
        # The victim no longer knows the task: place it again.
        run_transitions(state, {ts.key: "released"}, stimulus_id)
        return
    if event.state not in STEALABLE_WORKER_STATES:
        return
    if thief.status != "running" or state.workers.get(thief.address) is not thief:
        return
    exit_processing_common(state, ts)
    state._commands.append(
        FreeKeys(stimulus_id=stimulus_id, worker=victim.address, keys=(ts.key,))
    )
    add_to_processing(state, ts, thief, stimulus_id)
    state.transition_log.record(
        ts.key, "processing", "processing", {}, stimulus_id, state.now
    )


# -- retirement and restart -----------------------------------------------------


def on_retire_workers(state: SchedulerState, event: ev.RetireWorkers) -> None:
    addresses = state.workers_list(event.workers)
    retiring = [state.workers[a] for a in addresses if a in state.workers]
    staying = [
        ws
        for ws in state.workers.values()
        if ws not in retiring and ws.status == "running"
    ]
    needs_recipient = any(
        ts.who_has == {ws} and not ts.shared and not ts.actor
        for ws in retiring
        for ts in ws.has_what
    )
    if needs_recipient and not staying:
        state._commands.append(
            RetirementFailed(
                stimulus_id=event.stimulus_id,
                workers=tuple(addresses),
                reason="no other running worker can take their data",
            )
        )
        return
    for ws in retiring:
        ws.status = "closing_gracefully"
        state.running.discard(ws)
        state.idle.pop(ws.address, None)
        state.idle_task_count.discard(ws)
        state.saturated.discard(ws)
        state._retiring[ws.address] = event.close_workers
    for ws in retiring:
        hand_off_unstarted(state, ws, event.stimulus_id)
    check_retirements(state, event.stimulus_id)


def check_retirements(state: SchedulerState, stimulus_id: str) -> None:
    requested = state._requested_replicas
    for address, close in list(state._retiring.items()):
        ws = state.workers[address]
        if ws.processing:
            continue
        # An actor cannot move: it is lost with the worker, as in dask.
        unique = [
            ts
            for ts in ws.has_what
            if ts.who_has == {ws} and not ts.shared and not ts.actor
        ]
        if unique:
            pending = requested.setdefault(address, {})
            for key, recipient_address in list(pending.items()):
                if recipient_address not in state.workers:
                    del pending[key]  # it left before copying: ask another
            todo = [ts for ts in unique if ts.key not in pending]
            if todo:
                recipients = sorted(
                    (w for w in state.running if w.address not in state._retiring),
                    key=lambda w: w.nbytes,
                )
                if not recipients:
                    continue
                recipient = recipients[0]
                keys = tuple(ts.key for ts in todo)
                pending.update(dict.fromkeys(keys, recipient.address))
                state._commands.append(
                    AcquireReplicas(
                        stimulus_id=stimulus_id,
                        worker=recipient.address,
                        keys=keys,
                        source=address,
                    )
                )
            continue
        requested.pop(address, None)
        _remove_worker(state, ws, stimulus_id, expected=True)
        if close:
            state._commands.append(
                CloseWorker(stimulus_id=stimulus_id, worker=address, reason="retired")
            )


def on_restart_requested(state: SchedulerState, event: ev.RestartRequested) -> None:
    stimulus_id = event.stimulus_id
    recs: Recs = {}
    for cs in list(state.clients.values()):
        for ts in list(cs.wants_what):
            state._commands.append(
                KeyCancelled(
                    stimulus_id=stimulus_id,
                    client=cs.client_key,
                    key=ts.key,
                    reason="scheduler-restart",
                )
            )
        client_releases_keys(state, [ts.key for ts in cs.wants_what], cs, recs)
    run_transitions(state, recs, stimulus_id)
    leftover = dict.fromkeys(state.tasks, "forgotten")
    run_transitions(state, leftover, stimulus_id)
    notify(state, "restart")


# -- timers ------------------------------------------------------------------------


def on_tick(state: SchedulerState, event: ev.Tick) -> None:
    state.now = max(state.now, event.time)
    if state.no_workers_timeout is not None and state.unrunnable:
        _check_no_workers(state, event.stimulus_id)
    if state._retiring:
        # Poll, as dask's retire loop does: a retiring worker's tasks may also
        # leave through release, cancel, reschedule or restart.
        check_retirements(state, event.stimulus_id)
    if state.stealing.enabled and state.idle and len(state.idle) < len(state.running):
        balance(state, event.stimulus_id)
    if event.is_idle:
        realign_occupancy(state)
    if not state.tasks:
        _release_empty_tables(state)


def _release_empty_tables(state: SchedulerState) -> None:
    """Every task is gone: give the per-task tables back to the allocator.

    A dict or set keeps its largest table until it is cleared, so after a
    million tasks the core would keep ~40 MB per table with nothing in it.
    Clearing an empty container changes nothing else.
    """
    state.tasks.clear()
    for ws in state.workers.values():
        for table in (ws.has_what, ws.processing):
            if not table and type(table) in (dict, set):
                table.clear()
    for cs in state.clients.values():
        if not cs.wants_what and type(cs.wants_what) is set:
            cs.wants_what.clear()


def _check_no_workers(state: SchedulerState, stimulus_id: str) -> None:
    timeout = state.no_workers_timeout
    assert timeout is not None
    recs: dict[Key, dict[str, Any]] = {}
    for ts, since in state.unrunnable.items():
        if state.now - since > timeout:
            error = NoValidWorkerError(
                ts.key,
                ts.host_restrictions,
                ts.worker_restrictions,
                ts.resource_restrictions,
                timeout,
            )
            recs[ts.key] = {"exception": error, "exception_text": str(error)}
    for key, kwargs in recs.items():
        run_transitions(
            state,
            transition(state, key, "erred", stimulus_id, cause=key, **kwargs),
            stimulus_id,
        )


# C-level key function (sorting 100k tasks by a Python function costs ~1 us each).
_priority = attrgetter("priority")
