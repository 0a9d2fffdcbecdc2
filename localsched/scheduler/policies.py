"""Pure policies over the scheduler state: adaptive sizing and work stealing.

``adaptive_target`` and ``workers_to_close`` follow dask's rules exactly
(``shared/scheduler-notes.md`` §2.9-2.10). Stealing follows dask's cost levels
and transactional protocol (§2.8): a steal is a request to the victim, which
answers with the task's local state; only a task that has not started moves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from localsched.scheduler import events as ev
from localsched.scheduler.commands import FreeKeys, StealRequest
from localsched.scheduler.tasks import TaskState, WorkerState

if TYPE_CHECKING:
    from localsched.scheduler.state import SchedulerState

#: Extra cost allowed per level: level 0 is free to steal (no dependencies).
COST_MULTIPLIERS = (1.0, *(1 + 2 ** (i - 6) for i in range(1, 15)))
#: Fixed latency counted for every stolen task that has dependencies (dask).
STEAL_LATENCY = 0.1  # dask's default for SchedulerState(steal_latency=)
#: Worker-side states in which a task has not started: a steal may go ahead.
STEALABLE_WORKER_STATES = frozenset({"ready", "waiting", "constrained", "queued"})


class PoliciesMixin:
    """Adaptive and stealing policies; mixed into ``SchedulerState``."""

    # -- adaptive -----------------------------------------------------------------

    def adaptive_target(
        self: SchedulerState, target_duration: float | None = None
    ) -> int:
        """Desired number of workers for the current workload (dask's rule).

        Parameters
        ----------
        target_duration
            Seconds in which the current work should complete (default 5).
        """
        if target_duration is None:
            target_duration = 5.0
        n_workers = len(self.workers)
        queued_and_unrunnable = list(self.queued) + list(self.unrunnable)
        tasks_ready = len(queued_and_unrunnable)
        sample = queued_and_unrunnable[:100]
        queued_occupancy = sum(self._get_prefix_duration(ts.prefix) for ts in sample)
        if tasks_ready > 100:
            queued_occupancy *= tasks_ready / 100
        cpu = math.ceil((self.total_occupancy + queued_occupancy) / target_duration)
        tasks_processing = 0
        for ws in self.workers.values():
            tasks_processing += len(ws.processing)
            if tasks_processing > cpu:
                break
        else:
            cpu = min(tasks_ready + tasks_processing, cpu)
        if self.total_nthreads and n_workers:
            cpu = math.ceil(cpu / self.total_nthreads * n_workers)
        if (self.unrunnable or self.queued) and not self.workers:
            cpu = max(1, cpu)
        limit_bytes = sum(ws.memory_limit for ws in self.workers.values())
        total_bytes = sum(ws.nbytes for ws in self.workers.values())
        memory = 0
        if limit_bytes and total_bytes > 0.6 * limit_bytes:
            memory = 2 * n_workers
        target = max(memory, cpu)
        if target >= n_workers:
            return target
        return n_workers - len(self.workers_to_close())

    def workers_to_close(
        self: SchedulerState,
        memory_ratio: float | None = None,
        n: int | None = None,
        key: Callable[[WorkerState], Hashable] | None = None,
        minimum: int | None = None,
        target: int | None = None,
        attribute: str = "address",
    ) -> list[Any]:
        """Workers that can be closed cheaply (dask's ``workers_to_close``).

        Parameters
        ----------
        memory_ratio
            Keep this many times the stored bytes in memory limits (default 2).
        n
            Number of workers to close.
        key
            Groups workers; a group is closed together.
        minimum
            Never go below this many workers.
        target
            Close down to this many workers.
        attribute
            Attribute of ``WorkerState`` to return for each worker.

        Returns
        -------
        list
            ``attribute`` of each worker to close, cheapest first.
        """
        if target is not None and n is None:
            n = len(self.workers) - target
        if n is not None:
            if n < 0:
                n = 0
            target = len(self.workers) - n
        if n is None and memory_ratio is None:
            memory_ratio = 2
        if not n and all(ws.processing for ws in self.workers.values()):
            return []
        if key is None:
            key = _address_of
        candidates = [ws for ws in self.workers.values() if not ws.long_running]
        downscaling_filter = getattr(self.hooks, "filter_downscaling", None)
        if downscaling_filter is not None:
            candidates = downscaling_filter(candidates)
        groups: dict[Hashable, list[WorkerState]] = {}
        for ws in candidates:
            groups.setdefault(key(ws), []).append(ws)
        limit_bytes = {k: sum(ws.memory_limit for ws in g) for k, g in groups.items()}
        group_bytes = {k: sum(ws.nbytes for ws in g) for k, g in groups.items()}
        limit = sum(limit_bytes.values())
        total = sum(group_bytes.values())

        def _sort_key(group_key: Hashable) -> tuple[bool, int]:
            is_idle = not any(ws.processing for ws in groups[group_key])
            return (is_idle, -group_bytes[group_key])

        idle = sorted(groups, key=_sort_key)
        to_close: list[WorkerState] = []
        n_remain = len(self.workers)
        while idle:
            group_key = idle.pop()
            if n is None and any(ws.processing for ws in groups[group_key]):
                break
            if minimum and n_remain - len(groups[group_key]) < minimum:
                break
            limit -= limit_bytes[group_key]
            if (
                n is not None and n_remain - len(groups[group_key]) >= (target or 0)
            ) or (memory_ratio is not None and limit >= memory_ratio * total):
                to_close.extend(groups[group_key])
                n_remain -= len(groups[group_key])
            else:
                break
        return [getattr(ws, attribute) for ws in to_close]

    # -- work stealing --------------------------------------------------------------

    def _init_stealing(self: SchedulerState) -> None:
        #: worker -> {processing task: cost level}; tasks that may be stolen.
        self.stealable: dict[WorkerState, dict[TaskState, int]] = {}
        #: task -> (victim, thief, stimulus id) for steal requests awaiting answer.
        self.in_flight: dict[TaskState, tuple[WorkerState, WorkerState, str]] = {}
        #: worker -> occupancy moving in (+) or out (-) through in-flight steals.
        self.in_flight_occupancy: dict[WorkerState, float] = {}
        self._steal_counter = 0

    def steal_time_ratio(self: SchedulerState, ts: TaskState) -> int | None:
        """Cost level of stealing ``ts`` (0 cheapest), or None if never worth it."""
        prefix = ts.prefix
        default = self.default_task_durations.get(prefix.name)
        if default is not None and default < 0.001:
            return None
        if not ts.dependencies:
            return 0
        compute = self._get_prefix_duration(prefix)
        if compute <= 0:
            return None
        # Data in the shared store is read, not sent: price it at memory speed.
        transfer = self.steal_latency
        for dts in ts.dependencies:
            bandwidth = self.shm_bandwidth if dts.shared else self.bandwidth
            transfer += dts.get_nbytes() / bandwidth
        ratio = transfer / compute
        level = max(1, round(math.log2(ratio) + 6)) if ratio > 0 else 1
        if level >= len(COST_MULTIPLIERS):
            return None
        return level

    def _steal_candidates_add(
        self: SchedulerState, ts: TaskState, ws: WorkerState
    ) -> None:
        if ts.actor or (ts.worker_restrictions and not ts.loose_restrictions):
            return
        if ts.dependencies:
            level = self.steal_time_ratio(ts)
            if level is None:
                return
        else:
            # steal_time_ratio's answer without dependencies, inlined (per task).
            default = self.default_task_durations.get(ts.prefix.name)
            if default is not None and default < 0.001:
                return
            level = 0
        per_worker = self.stealable.get(ws)
        if per_worker is None:
            per_worker = self.stealable[ws] = {}
        per_worker[ts] = level

    def _steal_candidates_discard(
        self: SchedulerState, ts: TaskState, ws: WorkerState
    ) -> None:
        per_worker = self.stealable.get(ws)
        if per_worker is not None:
            per_worker.pop(ts, None)
            if not per_worker:
                del self.stealable[ws]
        request = self.in_flight.pop(ts, None)
        if request is not None:
            self._undo_in_flight(ts, *request[:2])

    def _hand_off_unstarted(
        self: SchedulerState, ws: WorkerState, stimulus_id: str
    ) -> None:
        """Ask a retiring worker to hand the tasks it has not started to others.

        Graceful retirement waits for the tasks a worker executes; those queued
        behind them would keep it (and its place in the pool) for as long as the
        whole queue takes, while the workers that stay sit idle. The steal
        protocol moves only tasks the worker has not started, at any cost level.
        """
        thieves = [w for w in self.running if w.address not in self._retiring]
        if not thieves:
            return
        for ts in list(ws.processing):
            if ts in self.in_flight or ts.actor:
                continue
            thief = self._pick_thief(ts, thieves)
            if thief is not None:
                self._request_steal(ts, ws, thief, stimulus_id)

    def _combined_occupancy(self: SchedulerState, ws: WorkerState) -> float:
        return ws.occupancy + self.in_flight_occupancy.get(ws, 0.0)

    def balance(
        self: SchedulerState, stimulus_id: str
    ) -> list[tuple[TaskState, WorkerState, WorkerState]]:
        """Ask saturated workers to hand queued tasks to idle ones.

        Returns the (task, victim, thief) requests sent.
        """
        thieves = [ws for ws in self.idle.values() if ws.status == "running"]
        if not thieves or len(thieves) == len(self.running):
            return []
        victims = list(self.saturated)
        if not victims:
            busy = sorted(
                (
                    ws
                    for ws in self.running
                    if self._combined_occupancy(ws) > 0.2
                    and len(ws.processing) > ws.nthreads
                ),
                key=self._combined_occupancy,
                reverse=True,
            )
            victims = busy[:10]
        sent: list[tuple[TaskState, WorkerState, WorkerState]] = []
        for victim in victims:
            candidates = self.stealable.get(victim)
            if not candidates:
                continue
            for ts, level in sorted(candidates.items(), key=lambda item: item[1]):
                if not thieves:
                    return sent
                if ts in self.in_flight or ts.processing_on is not victim:
                    continue
                thief = self._pick_thief(ts, thieves)
                if thief is None:
                    continue
                compute = self._get_prefix_duration(ts.prefix) * COST_MULTIPLIERS[level]
                occ_thief = self._combined_occupancy(thief) / thief.nthreads
                occ_victim = self._combined_occupancy(victim) / victim.nthreads
                comm_thief = self.get_comm_cost(ts, thief)
                comm_victim = self.get_comm_cost(ts, victim)
                if (
                    occ_thief + comm_thief + compute
                    <= occ_victim - (comm_victim + compute) / 2
                ):
                    self._request_steal(ts, victim, thief, stimulus_id)
                    sent.append((ts, victim, thief))
                    busy_now = self._combined_occupancy(thief)
                    if (
                        busy_now
                        >= thief.nthreads
                        * max(self.total_occupancy / max(self.total_nthreads, 1), 1e-9)
                        / 2
                        and len(thief.processing) + 1 >= thief.nthreads
                    ):
                        thieves.remove(thief)
        return sent

    def _pick_thief(
        self: SchedulerState, ts: TaskState, thieves: list[WorkerState]
    ) -> WorkerState | None:
        valid = self.valid_workers(ts)
        pool = thieves if valid is None else [ws for ws in thieves if ws in valid]
        if not pool and ts.loose_restrictions:
            pool = thieves
        if not pool:
            return None
        return min(
            pool,
            key=lambda ws: (
                self._combined_occupancy(ws) / ws.nthreads + self.get_comm_cost(ts, ws),
                ws.nbytes,
            ),
        )

    def _request_steal(
        self: SchedulerState,
        ts: TaskState,
        victim: WorkerState,
        thief: WorkerState,
        stimulus_id: str,
    ) -> None:
        self._steal_counter += 1
        steal_id = f"steal-{self._steal_counter}"
        self.in_flight[ts] = (victim, thief, steal_id)
        cost = victim.processing[ts]
        occ = self.in_flight_occupancy
        occ[victim] = occ.get(victim, 0.0) - cost
        occ[thief] = occ.get(thief, 0.0) + cost
        self._commands.append(
            StealRequest(
                stimulus_id=steal_id,
                worker=victim.address,
                key=ts.key,
                thief=thief.address,
            )
        )

    def _undo_in_flight(
        self: SchedulerState, ts: TaskState, victim: WorkerState, thief: WorkerState
    ) -> None:
        occ = self.in_flight_occupancy
        cost = victim.processing.get(ts, 0.0) if ts.processing_on is victim else 0.0
        for ws, delta in ((victim, cost), (thief, -cost)):
            value = occ.get(ws, 0.0) + delta
            if abs(value) < 1e-12:
                occ.pop(ws, None)
            else:
                occ[ws] = value

    def _on_steal_response(self: SchedulerState, event: ev.StealResponse) -> None:
        ts = self.tasks.get(event.key)
        if ts is None:
            return
        request = self.in_flight.get(ts)
        if request is None:
            return
        victim, thief, _ = request
        if victim.address != event.worker:
            return
        self._undo_in_flight(ts, victim, thief)
        del self.in_flight[ts]
        stimulus_id = event.stimulus_id
        if ts.state != "processing" or ts.processing_on is not victim:
            return
        if event.state is None:
            # The victim no longer knows the task: place it again.
            self._transitions({ts.key: "released"}, stimulus_id)
            return
        if event.state not in STEALABLE_WORKER_STATES:
            return
        if thief.status != "running" or self.workers.get(thief.address) is not thief:
            return
        self._exit_processing_common(ts)
        self._commands.append(
            FreeKeys(stimulus_id=stimulus_id, worker=victim.address, keys=(ts.key,))
        )
        self._add_to_processing(ts, thief, stimulus_id)
        self.transition_log.record(
            ts.key, "processing", "processing", {}, stimulus_id, self.now
        )


def _address_of(ws: WorkerState) -> str:
    return ws.address
