"""Placement: which worker runs a task, and how busy each worker is.

dask's rules (``shared/scheduler-notes.md`` §2.5-2.7): restrictions narrow the
candidates, root-ish tasks are queued until a worker has a free slot, other tasks
go where their data is and where they would start soonest. Occupancy (expected
seconds of queued work per worker) is kept incrementally: each processing task
records the cost it added, so leaving processing subtracts exactly that, and
estimates that change are re-aligned lazily (see ``realign_occupancy``).
"""

from __future__ import annotations

import heapq
import itertools
import math
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from localsched.scheduler.tasks import (
    EMPTY_SET,
    TaskPrefix,
    TaskState,
    WorkerState,
    with_link,
    without_link,
)

if TYPE_CHECKING:
    from localsched.scheduler.state import SchedulerState


_isinf = math.isinf
_ceil = math.ceil


def _occupancy_of(ws: WorkerState) -> float:
    return ws.occupancy


def _address_of(ws: WorkerState) -> str:
    return ws.address


# -- duration estimates -----------------------------------------------------


def get_prefix_duration(state: SchedulerState, prefix: TaskPrefix) -> float:
    duration = prefix.duration_average
    if duration >= 0:
        return duration
    if prefix.max_exec_time > 0:
        return 2 * prefix.max_exec_time
    return state.unknown_task_duration


def get_task_duration(state: SchedulerState, ts: TaskState) -> float:
    """Expected compute seconds of ``ts``, without communication."""
    return get_prefix_duration(state, ts.prefix)


def get_comm_cost(state: SchedulerState, ts: TaskState, ws: WorkerState) -> float:
    """Expected seconds to bring ``ts``'s missing dependencies to ``ws``.

    Data in the shared store costs a memory-bandwidth read, not a transfer.
    """
    has_what = ws.has_what
    transfer = 0
    shared = 0
    for dts in ts.dependencies:
        if dts not in has_what:
            # get_nbytes(), inlined (this runs per dependency and candidate).
            nbytes = dts.nbytes
            if nbytes < 0:
                nbytes = 1024
            if dts.shared:
                shared += nbytes
            else:
                transfer += nbytes
    return transfer / state.bandwidth + shared / state.shm_bandwidth


def deps_nbytes(state: SchedulerState, ts: TaskState) -> int:
    return sum(dts.get_nbytes() for dts in ts.dependencies)


def worker_objective(
    state: SchedulerState, ts: TaskState, ws: WorkerState
) -> tuple[float, int]:
    """Estimated start time of ``ts`` on ``ws``; ties go to fewer stored bytes.

    ``decide_worker`` computes the same in its loop: keep the two in step.
    """
    stack_time = ws.occupancy / ws.nthreads
    start_time = stack_time + get_comm_cost(state, ts, ws)
    return (start_time, ws.nbytes)


# -- root-ish tasks and queuing --------------------------------------------


def queuing_enabled(state: SchedulerState) -> bool:
    """Whether root-ish tasks wait in ``state.queued`` for a free slot."""
    return not math.isinf(state.worker_saturation)


def is_rootish(state: SchedulerState, ts: TaskState) -> bool:
    """Whether ``ts`` looks like one of many roots of a large graph.

    Such tasks are queued on the scheduler and handed out as worker slots open,
    so downstream tasks run before more roots are loaded.
    """
    if ts.resource_restrictions or ts.worker_restrictions or ts.host_restrictions:
        return False
    tg = ts.group
    if tg.n_tasks <= 2 * state.total_nthreads:  # len(tg), without its call
        return False
    deps = tg.dependencies
    if len(deps) >= state.rootish_taskgroup:
        return False
    if not deps:
        # The usual root: no generator to sum over nothing.
        return state.rootish_taskgroup_dependencies > 0
    # sum(len(dg) for dg in deps), without a generator and a call per group.
    total = 0
    for dg in deps:
        total += dg.n_tasks
    return total < state.rootish_taskgroup_dependencies


def task_slots_available(state: SchedulerState, ws: WorkerState) -> int:
    """Tasks ``ws`` can take before it is full (worker-saturation).

    On top of dask's ``ceil(worker_saturation * nthreads)``, each thread may
    get ``extra_slots_per_thread`` more while the tasks being run are much
    shorter than a dispatch round trip (see ``_update_extra_slots``).
    """
    # Called two or three times per task: module-level names, no max() call.
    saturation = state.worker_saturation
    if _isinf(saturation):
        # Queuing disabled: a worker is never full (dask's ``_worker_full``).
        return sys.maxsize
    nthreads = ws.nthreads
    running = len(ws.processing) - len(ws.long_running)
    base = _ceil(saturation * nthreads)
    if base < 1:
        base = 1
    return base + state.extra_slots_per_thread * nthreads - running


def update_extra_slots(state: SchedulerState, prefix: TaskPrefix) -> None:
    """Keep workers fed when tasks are shorter than a round trip.

    dask sends one task per open slot, so a worker running 10 us tasks waits
    a whole scheduler round trip for each. With ``fast_task_slots`` set, a
    worker gets enough extra tasks to cover ``dispatch_latency`` seconds of
    the prefix that just finished (capped); slower prefixes bring it back to
    dask's behaviour. A change re-classifies every worker's free slots.
    """
    duration = prefix.duration_average
    if duration < 0 or duration >= state.dispatch_latency:
        extra = 0
    else:
        extra = min(
            state.fast_task_slots,
            math.ceil(state.dispatch_latency / max(duration, 1e-7)),
        )
    if extra != state.extra_slots_per_thread:
        state.extra_slots_per_thread = extra
        for ws in state.workers.values():
            check_idle_saturated(state, ws)


#: Pools of idle workers up to this size are scanned; larger ones are kept
#: in a heap (``state.idle_heap``). A scan of a few workers costs less than
#: keeping a heap up to date twice per task; past a few dozen, the scan's
#: O(workers) per task placed is what grows (``bench_core.py --scaling``).
IDLE_HEAP_FROM = 16

#: Numbers the heap's entries: a worker can have several with one load (it
#: is re-classified without a change), and workers do not compare.
_pushes = itertools.count()


def decide_worker_rootish_queuing_enabled(
    state: SchedulerState,
) -> WorkerState | None:
    """The least busy worker with a free slot, or None to stay queued.

    The fewest processing tasks per thread; ties go to the lowest address
    (dask takes the first in its set's order, which its string hashes make
    arbitrary; a fixed order gives the same choice whichever way it is found).
    """
    pool = state.idle_task_count
    if not pool:
        return None
    if len(pool) > IDLE_HEAP_FROM:
        return _least_busy_from_heap(state, pool)
    state.idle_heap = None  # small again: scanning is cheaper
    # A loop, not min(): no Python key call per worker.
    best = None
    best_load = math.inf
    for ws in pool:
        load = len(ws.processing) / ws.nthreads
        if load < best_load or (
            load == best_load
            and best is not None  # always true here; for the type checker
            and ws.address < best.address
        ):
            best = ws
            best_load = load
    return best


def _least_busy_from_heap(state: SchedulerState, pool: set[WorkerState]) -> WorkerState:
    """``decide_worker_rootish_queuing_enabled``'s choice in O(log workers).

    The heap holds ``(load, address, push number, worker)`` entries, pushed by
    ``check_idle_saturated`` each time a worker is left with a free slot
    while the heap is kept. An entry is current while its worker is in the
    pool at that load; stale ones are dropped when they reach the top. Every
    change of a worker's load or slots goes through ``check_idle_saturated``,
    so each worker of the pool has a current entry, and the top current
    entry is the scan's answer. Rebuilt from the pool when first needed and
    when stale entries outnumber the pool.
    """
    heap = state.idle_heap
    if heap is None or len(heap) > 4 * len(pool) + 64:
        heap = state.idle_heap = [
            (len(ws.processing) / ws.nthreads, ws.address, next(_pushes), ws)
            for ws in pool
        ]
        heapq.heapify(heap)
    while True:
        load, _, _, ws = heap[0]
        if ws in pool and len(ws.processing) / ws.nthreads == load:
            return ws
        heapq.heappop(heap)


def decide_worker_rootish_queuing_disabled(
    state: SchedulerState, ts: TaskState
) -> WorkerState | None:
    """Co-assign consecutive siblings to one worker (no queuing)."""
    pool: Iterable[WorkerState] = state.idle.values() if state.idle else state.running
    if not pool:
        return None
    tg = ts.group
    lws = tg.last_worker
    if (
        lws is not None
        and tg.last_worker_tasks_left
        and lws.status == "running"
        and state.workers.get(lws.address) is lws
    ):
        ws = lws
    else:
        ws = min(pool, key=lambda w: worker_objective(state, ts, w))
        tg.last_worker_tasks_left = math.floor(
            (len(tg) / state.total_nthreads) * ws.nthreads
        )
    tg.last_worker = ws if tg.states["released"] + tg.states["waiting"] > 1 else None
    tg.last_worker_tasks_left -= 1
    return ws


# -- other tasks --------------------------------------------------------------


def valid_workers(state: SchedulerState, ts: TaskState) -> set[WorkerState] | None:
    """Running workers allowed to run ``ts``; None means any worker.

    Worker restrictions accept addresses or names; resources need a worker
    that offers at least the amount asked for.
    """
    result: set[WorkerState] | None = None
    if ts.worker_restrictions:
        result = set()
        for name in ts.worker_restrictions:
            ws = (
                state.workers.get(name) if isinstance(name, str) else None
            ) or state._workers_by_name.get(name)
            if ws is not None:
                result.add(ws)
    if ts.host_restrictions:
        on_hosts = {
            ws for ws in state.workers.values() if ws.host in ts.host_restrictions
        }
        result = on_hosts if result is None else result | on_hosts
    if ts.resource_restrictions:
        for resource, required in ts.resource_restrictions.items():
            offering = {
                ws
                for ws in state.workers.values()
                if ws.resources.get(resource, 0) >= required
            }
            result = offering if result is None else result & offering
    if result is None:
        if len(state.running) < len(state.workers):
            return set(state.running)
        return None
    return {ws for ws in result if ws in state.running}


def decide_worker_non_rootish(
    state: SchedulerState, ts: TaskState
) -> WorkerState | None:
    """Where ``ts`` would start soonest, near its data; None: no valid worker."""
    running = state.running
    if not running:
        return None
    if ts.dependencies or ts.has_restrictions:
        valid = valid_workers(state, ts)
        return decide_worker(state, ts, running, valid, ts.loose_restrictions)
    if len(running) < len(state.workers):
        valid = set(running)
        return decide_worker(state, ts, running, valid, ts.loose_restrictions)
    pool = state.idle if state.idle else state.workers
    values = list(pool.values())
    n_workers = len(values)
    if n_workers < 20:
        ws = min(values, key=_occupancy_of)
        if ws.occupancy == 0:
            # Round-robin among empty workers so a burst spreads out. dask's
            # pools are SortedDicts: walk addresses in order, not in the order
            # workers last became idle, or the cursor revisits one worker.
            values.sort(key=_address_of)
            start = state.n_tasks % n_workers
            for i in range(n_workers):
                candidate = values[(i + start) % n_workers]
                if candidate.occupancy == 0:
                    return candidate
        return ws
    return values[state.n_tasks % n_workers]


def decide_worker(
    state: SchedulerState,
    ts: TaskState,
    all_workers: set[WorkerState],
    valid_workers: set[WorkerState] | None,
    loose_restrictions: bool = False,
) -> WorkerState | None:
    """Pick among holders of ``ts``'s dependencies by ``worker_objective``."""
    candidates: set[WorkerState] = set()
    for dts in ts.dependencies:
        candidates.update(dts.who_has)
    candidates &= all_workers
    if valid_workers is None:
        if not candidates:
            candidates = set(all_workers)
    else:
        candidates &= valid_workers
        if not candidates:
            candidates = valid_workers
            if not candidates:
                if loose_restrictions:
                    return decide_worker(state, ts, all_workers, None)
                return None
    if not candidates:
        return None
    if len(candidates) == 1:
        return next(iter(candidates))
    # min(candidates, key=worker_objective), as a loop: no closure and no
    # Python key call per candidate. A strict ``<`` keeps min()'s choice
    # among equals (the first in iteration order).
    best = None
    best_objective = (math.inf, 0)
    for ws in candidates:
        objective = (
            ws.occupancy / ws.nthreads + get_comm_cost(state, ts, ws),
            ws.nbytes,
        )
        if best is None or objective < best_objective:
            best = ws
            best_objective = objective
    return best


# -- idle / saturated -------------------------------------------------------


def check_idle_saturated(
    state: SchedulerState, ws: WorkerState, occ: float = -1.0
) -> None:
    """Re-classify ``ws`` as idle, saturated or neither after a change."""
    # Runs twice per task (into and out of processing): locals, not lookups.
    total_nthreads = state.total_nthreads
    status = ws.status
    if total_nthreads == 0 or status == "closed":
        return
    if occ < 0:
        occ = ws.occupancy
    nthreads = ws.nthreads
    p = len(ws.processing)
    avg = state.total_occupancy / total_nthreads
    saturated = state.saturated
    if saturated:
        saturated.discard(ws)
    running = status == "running"
    if running and (p < nthreads or occ < nthreads * avg / 2):
        state.idle[ws.address] = ws
    else:
        state.idle.pop(ws.address, None)
        if p > nthreads:
            pending = occ * (p - nthreads) / (p * nthreads)
            if 0.4 < pending > 1.9 * avg:
                saturated.add(ws)
    if not running:
        state.idle_task_count.discard(ws)
        return
    # ``_task_slots_available(ws) > 0``, inlined (this runs twice per task).
    saturation = state.worker_saturation
    if _isinf(saturation):
        state.idle_task_count.add(ws)
        if state.idle_heap is not None:
            _push_idle(state, ws, p / nthreads)
        return
    base = _ceil(saturation * nthreads)
    if base < 1:
        base = 1
    running_tasks = p - len(ws.long_running) if ws.long_running else p
    if base + state.extra_slots_per_thread * nthreads > running_tasks:
        state.idle_task_count.add(ws)
        if state.idle_heap is not None:
            _push_idle(state, ws, p / nthreads)
    else:
        state.idle_task_count.discard(ws)


def _push_idle(state: SchedulerState, ws: WorkerState, load: float) -> None:
    """``ws`` has a free slot at ``load``: its current entry in the heap.

    Drops the heap instead when stale entries pile up (no placement has
    popped them for a while); the next large pool rebuilds it.
    """
    heap = state.idle_heap
    assert heap is not None
    if len(heap) > 4 * len(state.idle_task_count) + 64:
        state.idle_heap = None
    else:
        heapq.heappush(heap, (load, ws.address, next(_pushes), ws))


# -- replicas -----------------------------------------------------------------


def add_replica(state: SchedulerState, ts: TaskState, ws: WorkerState) -> None:
    """Note that ``ws`` holds ``ts``'s data."""
    if ws not in ts.who_has:
        ts.who_has = with_link(ts.who_has, ws)
        ws.has_what[ts] = None
        ws.nbytes += ts.get_nbytes()


def remove_replica(state: SchedulerState, ts: TaskState, ws: WorkerState) -> None:
    """Note that ``ws`` no longer holds ``ts``'s data."""
    ts.who_has = without_link(ts.who_has, ws)
    if ts in ws.has_what:
        del ws.has_what[ts]
        ws.nbytes -= ts.get_nbytes()


def remove_all_replicas(state: SchedulerState, ts: TaskState) -> None:
    nbytes = ts.get_nbytes()
    for ws in ts.who_has:
        del ws.has_what[ts]
        ws.nbytes -= nbytes
    ts.who_has = EMPTY_SET


def set_nbytes(state: SchedulerState, ts: TaskState, nbytes: int) -> None:
    """Record a result size, as dask's ``TaskState.set_nbytes`` does."""
    if nbytes < 0:
        return
    diff = nbytes - ts.nbytes if ts.nbytes >= 0 else nbytes
    ts.group.nbytes_total += diff
    ts.prefix.nbytes_total += diff
    for ws in ts.who_has:
        ws.nbytes += diff
    ts.nbytes = nbytes


# -- occupancy re-alignment ----------------------------------------------------


def realign_unknown(state: SchedulerState, prefix: TaskPrefix) -> None:
    """The first estimate for a prefix arrived: fix the guesses in flight."""
    tasks = state._unknown_durations.pop(prefix, set())
    duration = get_prefix_duration(state, prefix)
    for ts in tasks:
        ws = ts.processing_on
        if ws is None or ts in ws.long_running:
            continue
        old = ws.processing[ts]
        new = duration
        if ts.dependencies:
            new += get_comm_cost(state, ts, ws)
        ws.processing[ts] = new
        ws.occupancy += new - old
        state.total_occupancy += new - old
        check_idle_saturated(state, ws)


def realign_occupancy(state: SchedulerState) -> None:
    """Recompute every processing task's cost with current estimates.

    Estimates drift as tasks finish; this walk is proportional to the number
    of processing tasks, so the runtime runs it on a timer only when the
    scheduler is not busy (dask's ``reevaluate_occupancy``).
    """
    total = 0.0
    for ws in state.workers.values():
        occ = 0.0
        for ts in ws.processing:
            if ts in ws.long_running:
                continue
            cost = get_prefix_duration(state, ts.prefix)
            if ts.dependencies:
                cost += get_comm_cost(state, ts, ws)
            ws.processing[ts] = cost
            occ += cost
        ws.occupancy = occ
        total += occ
    state.total_occupancy = total
    for ws in state.workers.values():
        check_idle_saturated(state, ws)
