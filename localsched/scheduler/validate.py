"""``validate_state``: every invariant stated on the state records, checked.

Slow (it walks everything); tests turn it on with ``validate=True`` so that it
runs after each ``handle`` call.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

from localsched.errors import InvalidTaskState
from localsched.scheduler.engine import story
from localsched.scheduler.placement import task_slots_available
from localsched.scheduler.tasks import ALL_TASK_STATES, EMPTY_SET, TaskState

if TYPE_CHECKING:
    from localsched.scheduler.state import SchedulerState

_IN_FLIGHT_STATES = ("waiting", "queued", "no-worker", "processing")
_LINK_SETS = (
    "dependencies",
    "dependents",
    "waiting_on",
    "waiters",
    "who_has",
    "who_wants",
)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def _fail(state: SchedulerState, ts: TaskState | None, message: str) -> None:
    entries = story(state, ts.key) if ts is not None else []
    lines = "\n".join(f"  {entry}" for entry in entries[-20:])
    raise InvalidTaskState(f"{message}\nStory:\n{lines}")


def validate_task(state: SchedulerState, ts: TaskState) -> None:
    """Check one task against the invariants of its state."""
    status = ts.state
    check = partial(_check, state)
    check(state.tasks.get(ts.key) is ts, ts, "task not registered under its key")
    check(status in ALL_TASK_STATES and status != "forgotten", ts, "bad state")
    check(
        (status == "processing") == (ts.processing_on is not None),
        ts,
        "processing_on set iff processing",
    )
    if ts.processing_on is not None:
        check(ts in ts.processing_on.processing, ts, "not in worker.processing")
    check((status == "queued") == (ts in state.queued), ts, "queued iff in queued")
    check(
        (status == "no-worker") == (ts in state.unrunnable),
        ts,
        "no-worker iff in unrunnable",
    )
    if status == "memory":
        check(bool(ts.who_has) or ts.shared, ts, "memory without a holder")
    else:
        check(not ts.who_has, ts, f"who_has set in state {status}")
    if status != "waiting":
        check(not ts.waiting_on, ts, f"waiting_on set in state {status}")
    if status == "waiting":
        for dts in ts.waiting_on:
            check(
                dts.state != "memory" or (not dts.who_has and not dts.shared),
                ts,
                f"waiting on {dts.key!r} which is in memory",
            )
        for dts in ts.dependencies:
            if dts not in ts.waiting_on:
                check(
                    dts.state == "memory",
                    ts,
                    f"not waiting on {dts.key!r} which is {dts.state}",
                )
    if status in ("processing", "queued", "no-worker"):
        for dts in ts.dependencies:
            check(
                dts.state == "memory",
                ts,
                f"{status} with dependency {dts.key!r} in {dts.state}",
            )
            check(ts in dts.waiters, ts, f"not among {dts.key!r}'s waiters")
    if status == "erred":
        check(ts.exception_blame is not None, ts, "erred without blame")
    if status in ("released", "memory", "erred"):
        for dts in ts.waiters:
            check(
                dts.state in _IN_FLIGHT_STATES,
                ts,
                f"waiter {dts.key!r} in state {dts.state}",
            )
    for dts in ts.dependencies:
        check(ts in dts.dependents, ts, f"asymmetric dependency {dts.key!r}")
        check(state.tasks.get(dts.key) is dts, ts, f"dependency {dts.key!r} gone")
    for dts in ts.dependents:
        check(ts in dts.dependencies, ts, f"asymmetric dependent {dts.key!r}")
    for dts in ts.waiters:
        check(dts in ts.dependents, ts, f"waiter {dts.key!r} is not a dependent")
    for ws in ts.who_has:
        check(ts in ws.has_what, ts, f"asymmetric who_has {ws.address}")
        check(state.workers.get(ws.address) is ws, ts, "holder not registered")
    for cs in ts.who_wants:
        check(ts in cs.wants_what, ts, f"asymmetric who_wants {cs.client_key}")
    for name in _LINK_SETS:
        # A link set is a real set, the shared empty one, or (except
        # waiting_on) its one member's ``alone``: writers rely on it.
        links = getattr(ts, name)
        check(
            type(links) is set
            or links is EMPTY_SET
            or (
                name != "waiting_on"
                and len(links) == 1
                and links is next(iter(links)).alone
            ),
            ts,
            f"{name} not a set",
        )


def _check(
    state: SchedulerState, condition: bool, ts: TaskState | None, msg: str
) -> None:
    if not condition:
        key = ts.key if ts is not None else None
        _fail(state, ts, f"{key!r}: {msg}")


def validate_state(state: SchedulerState) -> None:
    """Check every invariant of the whole state; raise ``InvalidTaskState``."""
    check = partial(_check, state)
    for ts in state.tasks.values():
        validate_task(state, ts)
    for ts in state.queued:
        check(
            state.tasks.get(ts.key) is ts and ts.state == "queued",
            ts,
            "stale entry in queued",
        )
    for ts in state.unrunnable:
        check(
            state.tasks.get(ts.key) is ts and ts.state == "no-worker",
            ts,
            "stale entry in unrunnable",
        )
    total_occupancy = 0.0
    total_nthreads = 0
    for address, ws in state.workers.items():
        check(ws.address == address, None, f"worker registered as {address}")
        check(ws.status != "closed", None, f"closed worker {address} registered")
        check(
            (ws in state.running) == (ws.status == "running"),
            None,
            f"{address}: running set vs status {ws.status}",
        )
        if ws.address in state.idle:
            check(ws.status == "running", None, f"{address} idle but {ws.status}")
        check(
            (ws in state.idle_task_count)
            == (ws.status == "running" and task_slots_available(state, ws) > 0),
            None,
            f"{address}: idle_task_count",
        )
        occ = 0.0
        prefix_counts: dict[object, int] = {}
        used: dict[str, float] = dict.fromkeys(ws.resources, 0.0)
        for ts, cost in ws.processing.items():
            check(
                ts.processing_on is ws and ts.state == "processing",
                ts,
                f"in {address}.processing but {ts.state}",
            )
            if ts not in ws.long_running:
                occ += cost
                prefix_counts[ts.prefix] = prefix_counts.get(ts.prefix, 0) + 1
            for name, amount in (ts.resource_restrictions or {}).items():
                used[name] = used.get(name, 0.0) + amount
        for ts in ws.long_running:
            check(ts in ws.processing, ts, "long-running but not processing")
        check(
            _close(occ, ws.occupancy),
            None,
            f"{address}: occupancy {ws.occupancy} != {occ}",
        )
        check(
            prefix_counts == ws.task_prefix_count,
            None,
            f"{address}: task_prefix_count",
        )
        for name, amount in used.items():
            check(
                _close(ws.used_resources.get(name, 0.0), amount),
                None,
                f"{address}: used resource {name}",
            )
        nbytes = 0
        for ts in ws.has_what:
            check(ws in ts.who_has, ts, f"asymmetric has_what on {address}")
            nbytes += ts.get_nbytes()
        check(nbytes == ws.nbytes, None, f"{address}: nbytes {ws.nbytes} != {nbytes}")
        total_occupancy += ws.occupancy
        total_nthreads += ws.nthreads
    for ws in state.running:
        check(state.workers.get(ws.address) is ws, None, "stale running worker")
    for ws in state.idle_task_count:
        check(state.workers.get(ws.address) is ws, None, "stale idle_task_count")
    if state.idle_heap is not None:
        # Each worker with a free slot has an entry at its current load.
        current = {
            id(ws)
            for load, _, _, ws in state.idle_heap
            if len(ws.processing) / ws.nthreads == load
        }
        for ws in state.idle_task_count:
            check(id(ws) in current, None, f"{ws.address}: no current idle_heap entry")
    check(
        _close(total_occupancy, state.total_occupancy),
        None,
        f"total_occupancy {state.total_occupancy} != {total_occupancy}",
    )
    check(total_nthreads == state.total_nthreads, None, "total_nthreads")
    for client, cs in state.clients.items():
        check(cs.client_key == client, None, "client key")
        for ts in cs.wants_what:
            check(cs in ts.who_wants, ts, f"asymmetric wants_what {client}")
            check(state.tasks.get(ts.key) is ts, ts, f"{client} wants a gone task")
    _validate_counters(state)
    _validate_stealing(state)


def _validate_counters(state: SchedulerState) -> None:
    check = partial(_check, state)
    recount: dict[str, dict[str, int]] = {}
    for ts in state.tasks.values():
        states = recount.setdefault(ts.group.name, dict.fromkeys(ALL_TASK_STATES, 0))
        states[ts.state] += 1
        check(state.task_groups.get(ts.group.name) is ts.group, ts, "group gone")
    for name, tg in state.task_groups.items():
        live = {s: n for s, n in tg.states.items() if s != "forgotten"}
        expected = {
            s: n
            for s, n in recount.get(name, dict.fromkeys(ALL_TASK_STATES, 0)).items()
            if s != "forgotten"
        }
        check(live == expected, None, f"group {name} counts {live} != {expected}")
        check(sum(tg.states.values()) == tg.n_tasks, None, f"group {name} n_tasks")
        check(tg in tg.prefix.groups, None, f"group {name} not in its prefix")
    for name, tp in state.task_prefixes.items():
        # ``tp.states`` sums its groups: they must be exactly the live ones.
        for tg in tp.groups:
            check(
                state.task_groups.get(tg.name) is tg,
                None,
                f"prefix {name} holds the dead group {tg.name}",
            )


def _validate_stealing(state: SchedulerState) -> None:
    stealing = state.stealing
    if not stealing.enabled:
        # Turned off while running (tests do): its records may be stale.
        return
    check = partial(_check, state)
    for ws, candidates in stealing.stealable.items():
        check(bool(candidates), None, f"empty steal candidates for {ws.address}")
        for ts in candidates:
            check(
                ts.processing_on is ws and ts not in ws.long_running,
                ts,
                f"steal candidate on {ws.address} but {ts.state}",
            )
    for ts, (victim, _thief, _) in stealing.in_flight.items():
        check(ts.processing_on is victim, ts, "steal in flight from another worker")
