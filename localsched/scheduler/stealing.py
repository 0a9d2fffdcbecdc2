"""Work stealing: moving queued tasks from saturated workers to idle ones.

A component with its own record, as dask's ``WorkStealing`` extension is:
``WorkStealing`` owns the candidates (processing tasks by worker, with their
cost level), the steal requests awaiting an answer and the occupancy they move.
The state holds one as ``state.stealing``; the functions here decide, over the
whole state, what to steal. Stealing follows dask's cost levels and
transactional protocol (``shared/scheduler-notes.md`` §2.8): a steal is a
request to the victim, which answers with the task's local state
(``StealResponse``, handled in ``stimuli.py``); only a task that has not
started moves.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from localsched.scheduler.commands import StealRequest
from localsched.scheduler.placement import (
    get_comm_cost,
    get_prefix_duration,
    valid_workers,
)
from localsched.scheduler.tasks import TaskState, WorkerState

if TYPE_CHECKING:
    from localsched.scheduler.state import SchedulerState

#: Extra cost allowed per level: level 0 is free to steal (no dependencies).
COST_MULTIPLIERS = (1.0, *(1 + 2 ** (i - 6) for i in range(1, 15)))
#: Fixed latency counted for every stolen task that has dependencies (dask).
STEAL_LATENCY = 0.1  # dask's default for SchedulerState(steal_latency=)
#: Worker-side states in which a task has not started: a steal may go ahead.
STEALABLE_WORKER_STATES = frozenset({"ready", "waiting", "constrained", "queued"})

#: A steal request awaiting its answer: victim, thief, the request's stimulus id.
StealInFlight = tuple[WorkerState, WorkerState, str]


class WorkStealing:
    """Work stealing's own fields; the state holds one as ``state.stealing``.

    Parameters
    ----------
    enabled
        Whether processing tasks are recorded as candidates and balanced.
    latency
        Fixed cost counted for moving a task with dependencies (dask: 0.1 s,
        a network round trip; a local runtime passes its own, far smaller).
    """

    __slots__ = (
        "counter",
        "enabled",
        "in_flight",
        "in_flight_occupancy",
        "latency",
        "stealable",
    )

    def __init__(self, *, enabled: bool = True, latency: float = STEAL_LATENCY) -> None:
        self.enabled = enabled
        self.latency = latency
        #: worker -> {processing task: cost level}; tasks that may be stolen.
        #: A worker without candidates has no entry.
        self.stealable: dict[WorkerState, dict[TaskState, int]] = {}
        #: task -> (victim, thief, stimulus id) for steal requests awaiting an
        #: answer; the task is processing on the victim.
        self.in_flight: dict[TaskState, StealInFlight] = {}
        #: worker -> occupancy moving in (+) or out (-) through in-flight steals.
        self.in_flight_occupancy: dict[WorkerState, float] = {}
        #: Steal requests sent, ever (their stimulus ids).
        self.counter = 0

    def add(self, ts: TaskState, ws: WorkerState, level: int) -> None:
        """Record ``ts``, processing on ``ws``, as a candidate at cost ``level``."""
        per_worker = self.stealable.get(ws)
        if per_worker is None:
            per_worker = self.stealable[ws] = {}
        per_worker[ts] = level

    def discard(self, ts: TaskState, ws: WorkerState) -> None:
        """``ts`` leaves processing on ``ws``: no candidate, no steal in flight."""
        per_worker = self.stealable.get(ws)
        if per_worker is not None:
            per_worker.pop(ts, None)
            if not per_worker:
                del self.stealable[ws]
        request = self.in_flight.pop(ts, None)
        if request is not None:
            self.undo_in_flight(ts, request[0], request[1])

    def book(self, ts: TaskState, victim: WorkerState, thief: WorkerState) -> str:
        """Note a steal request of ``ts`` from ``victim``; return its stimulus id."""
        self.counter += 1
        steal_id = f"steal-{self.counter}"
        self.in_flight[ts] = (victim, thief, steal_id)
        cost = victim.processing[ts]
        occ = self.in_flight_occupancy
        occ[victim] = occ.get(victim, 0.0) - cost
        occ[thief] = occ.get(thief, 0.0) + cost
        return steal_id

    def settle(self, ts: TaskState, victim_address: str) -> StealInFlight | None:
        """The victim answered the request for ``ts``: forget it and return it.

        None if no request for ``ts`` to that worker is in flight.
        """
        request = self.in_flight.get(ts)
        if request is None or request[0].address != victim_address:
            return None
        self.undo_in_flight(ts, request[0], request[1])
        del self.in_flight[ts]
        return request

    def undo_in_flight(
        self, ts: TaskState, victim: WorkerState, thief: WorkerState
    ) -> None:
        """Give back the occupancy a request for ``ts`` moved."""
        occ = self.in_flight_occupancy
        cost = victim.processing.get(ts, 0.0) if ts.processing_on is victim else 0.0
        for ws, delta in ((victim, cost), (thief, -cost)):
            value = occ.get(ws, 0.0) + delta
            if abs(value) < 1e-12:
                occ.pop(ws, None)
            else:
                occ[ws] = value

    def combined_occupancy(self, ws: WorkerState) -> float:
        """``ws``'s occupancy once the steals in flight are done."""
        return ws.occupancy + self.in_flight_occupancy.get(ws, 0.0)


def steal_time_ratio(state: SchedulerState, ts: TaskState) -> int | None:
    """Cost level of stealing ``ts`` (0 cheapest), or None if never worth it."""
    prefix = ts.prefix
    default = state.default_task_durations.get(prefix.name)
    if default is not None and default < 0.001:
        return None
    if not ts.dependencies:
        return 0
    compute = get_prefix_duration(state, prefix)
    if compute <= 0:
        return None
    # Data in the shared store is read, not sent: price it at memory speed.
    transfer = state.stealing.latency
    for dts in ts.dependencies:
        bandwidth = state.shm_bandwidth if dts.shared else state.bandwidth
        nbytes = dts.nbytes  # get_nbytes(), inlined (per dependency)
        transfer += (nbytes if nbytes >= 0 else 1024) / bandwidth
    ratio = transfer / compute
    level = max(1, round(math.log2(ratio) + 6)) if ratio > 0 else 1
    if level >= len(COST_MULTIPLIERS):
        return None
    return level


def add_candidate(state: SchedulerState, ts: TaskState, ws: WorkerState) -> None:
    """``ts`` started processing on ``ws``: a candidate if ever worth stealing."""
    if ts.actor or (ts.worker_restrictions and not ts.loose_restrictions):
        return
    if ts.dependencies:
        level = steal_time_ratio(state, ts)
        if level is None:
            return
    else:
        # steal_time_ratio's answer without dependencies, inlined (per task).
        default = state.default_task_durations.get(ts.prefix.name)
        if default is not None and default < 0.001:
            return
        level = 0
    # WorkStealing.add, inlined (per task).
    stealable = state.stealing.stealable
    per_worker = stealable.get(ws)
    if per_worker is None:
        per_worker = stealable[ws] = {}
    per_worker[ts] = level


def hand_off_unstarted(
    state: SchedulerState, ws: WorkerState, stimulus_id: str
) -> None:
    """Ask a retiring worker to hand the tasks it has not started to others.

    Graceful retirement waits for the tasks a worker executes; those queued
    behind them would keep it (and its place in the pool) for as long as the
    whole queue takes, while the workers that stay sit idle. The steal
    protocol moves only tasks the worker has not started, at any cost level.
    """
    thieves = [w for w in state.running if w.address not in state._retiring]
    if not thieves:
        return
    in_flight = state.stealing.in_flight
    for ts in list(ws.processing):
        if ts in in_flight or ts.actor:
            continue
        thief = _pick_thief(state, ts, thieves)
        if thief is not None:
            request_steal(state, ts, ws, thief, stimulus_id)


def balance(
    state: SchedulerState, stimulus_id: str
) -> list[tuple[TaskState, WorkerState, WorkerState]]:
    """Ask saturated workers to hand queued tasks to idle ones.

    Returns the (task, victim, thief) requests sent.
    """
    stealing = state.stealing
    combined_occupancy = stealing.combined_occupancy
    thieves = [ws for ws in state.idle.values() if ws.status == "running"]
    if not thieves or len(thieves) == len(state.running):
        return []
    victims = list(state.saturated)
    if not victims:
        busy = sorted(
            (
                ws
                for ws in state.running
                if combined_occupancy(ws) > 0.2 and len(ws.processing) > ws.nthreads
            ),
            key=combined_occupancy,
            reverse=True,
        )
        victims = busy[:10]
    sent: list[tuple[TaskState, WorkerState, WorkerState]] = []
    for victim in victims:
        candidates = stealing.stealable.get(victim)
        if not candidates:
            continue
        for ts, level in sorted(candidates.items(), key=lambda item: item[1]):
            if not thieves:
                return sent
            if ts in stealing.in_flight or ts.processing_on is not victim:
                continue
            thief = _pick_thief(state, ts, thieves)
            if thief is None:
                continue
            compute = get_prefix_duration(state, ts.prefix) * COST_MULTIPLIERS[level]
            occ_thief = combined_occupancy(thief) / thief.nthreads
            occ_victim = combined_occupancy(victim) / victim.nthreads
            comm_thief = get_comm_cost(state, ts, thief)
            comm_victim = get_comm_cost(state, ts, victim)
            if (
                occ_thief + comm_thief + compute
                <= occ_victim - (comm_victim + compute) / 2
            ):
                request_steal(state, ts, victim, thief, stimulus_id)
                sent.append((ts, victim, thief))
                busy_now = combined_occupancy(thief)
                if (
                    busy_now
                    >= thief.nthreads
                    * max(state.total_occupancy / max(state.total_nthreads, 1), 1e-9)
                    / 2
                    and len(thief.processing) + 1 >= thief.nthreads
                ):
                    thieves.remove(thief)
    return sent


def _pick_thief(
    state: SchedulerState, ts: TaskState, thieves: list[WorkerState]
) -> WorkerState | None:
    valid = valid_workers(state, ts)
    pool = thieves if valid is None else [ws for ws in thieves if ws in valid]
    if not pool and ts.loose_restrictions:
        pool = thieves
    if not pool:
        return None
    combined_occupancy = state.stealing.combined_occupancy
    return min(
        pool,
        key=lambda ws: (
            combined_occupancy(ws) / ws.nthreads + get_comm_cost(state, ts, ws),
            ws.nbytes,
        ),
    )


def request_steal(
    state: SchedulerState,
    ts: TaskState,
    victim: WorkerState,
    thief: WorkerState,
    stimulus_id: str,
) -> None:
    """Ask ``victim`` to give ``ts`` up for ``thief`` (the answer decides)."""
    steal_id = state.stealing.book(ts, victim, thief)
    state._commands.append(
        StealRequest(
            stimulus_id=steal_id,
            worker=victim.address,
            key=ts.key,
            thief=thief.address,
        )
    )
