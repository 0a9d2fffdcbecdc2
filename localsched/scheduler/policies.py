"""Adaptive sizing: how many workers the current work needs, and which can go.

``adaptive_target`` and ``workers_to_close`` follow dask's rules exactly
(``shared/scheduler-notes.md`` §2.9-2.10). Plain functions over the state; they
change nothing. Work stealing, the other policy, is ``stealing.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from localsched.scheduler.placement import get_prefix_duration
from localsched.scheduler.tasks import WorkerState

if TYPE_CHECKING:
    from localsched.scheduler.state import SchedulerState


# -- adaptive -----------------------------------------------------------------


def adaptive_target(state: SchedulerState, target_duration: float | None = None) -> int:
    """Desired number of workers for the current workload (dask's rule).

    Parameters
    ----------
    target_duration
        Seconds in which the current work should complete (default 5).
    """
    if target_duration is None:
        target_duration = 5.0
    n_workers = len(state.workers)
    queued_and_unrunnable = list(state.queued) + list(state.unrunnable)
    tasks_ready = len(queued_and_unrunnable)
    sample = queued_and_unrunnable[:100]
    queued_occupancy = sum(get_prefix_duration(state, ts.prefix) for ts in sample)
    if tasks_ready > 100:
        queued_occupancy *= tasks_ready / 100
    cpu = math.ceil((state.total_occupancy + queued_occupancy) / target_duration)
    tasks_processing = 0
    for ws in state.workers.values():
        tasks_processing += len(ws.processing)
        if tasks_processing > cpu:
            break
    else:
        cpu = min(tasks_ready + tasks_processing, cpu)
    if state.total_nthreads and n_workers:
        cpu = math.ceil(cpu / state.total_nthreads * n_workers)
    if (state.unrunnable or state.queued) and not state.workers:
        cpu = max(1, cpu)
    limit_bytes = sum(ws.memory_limit for ws in state.workers.values())
    total_bytes = sum(ws.nbytes for ws in state.workers.values())
    memory = 0
    if limit_bytes and total_bytes > 0.6 * limit_bytes:
        memory = 2 * n_workers
    target = max(memory, cpu)
    if target >= n_workers:
        return target
    return n_workers - len(workers_to_close(state))


def workers_to_close(
    state: SchedulerState,
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
        n = len(state.workers) - target
    if n is not None:
        if n < 0:
            n = 0
        target = len(state.workers) - n
    if n is None and memory_ratio is None:
        memory_ratio = 2
    if not n and all(ws.processing for ws in state.workers.values()):
        return []
    if key is None:
        key = _address_of
    candidates = [ws for ws in state.workers.values() if not ws.long_running]
    downscaling_filter = getattr(state.hooks, "filter_downscaling", None)
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
    n_remain = len(state.workers)
    while idle:
        group_key = idle.pop()
        if n is None and any(ws.processing for ws in groups[group_key]):
            break
        if minimum and n_remain - len(groups[group_key]) < minimum:
            break
        limit -= limit_bytes[group_key]
        if (n is not None and n_remain - len(groups[group_key]) >= (target or 0)) or (
            memory_ratio is not None and limit >= memory_ratio * total
        ):
            to_close.extend(groups[group_key])
            n_remain -= len(groups[group_key])
        else:
            break
    return [getattr(ws, attribute) for ws in to_close]


def _address_of(ws: WorkerState) -> str:
    return ws.address
