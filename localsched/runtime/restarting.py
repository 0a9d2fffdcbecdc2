"""Restarting worker processes: ``Client.cancel(force=True)`` and ``Client.restart``.

Every function here runs on the scheduler thread (through
``SchedulerRuntime.call``). A restarted worker's process is killed with its
handle marked ``restarting``: the runtime reports its exit as expected
(``WorkerRemoved(expected=True)``: its other tasks are placed again, none counted
suspicious) and ``LocalCluster`` starts a replacement, so the cluster keeps its
size. Results live in the scheduler process and survive a worker's restart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING

from localsched.scheduler import events as ev

if TYPE_CHECKING:
    from localsched.runtime.scheduler_thread import SchedulerRuntime

logger = logging.getLogger("localsched.runtime.restarting")

Key = Hashable


def restart_worker(runtime: SchedulerRuntime, address: str) -> bool:
    """Kill a worker's process to restart it; False if there is no such worker."""
    handle = runtime.workers.get(address)
    if handle is None:
        return False
    handle.restarting = True
    with contextlib.suppress(OSError, ValueError, AttributeError):
        handle.process.kill()
    return True


def force_cancel(runtime: SchedulerRuntime, event: ev.CancelRequested) -> set[str]:
    """Cancel, and restart the workers running tasks it released; their addresses.

    The core cannot tell a task that runs from one queued in the worker: a worker
    holding a cancelled task that was processing there is restarted either way
    (its other tasks are placed again, not failed).
    """
    tasks = runtime.scheduler.state.tasks
    processing: dict[Key, str] = {}
    stack = list(event.keys)
    seen: set[Key] = set()
    while stack:  # the keys and their dependents, as the core cancels them
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        ts = tasks.get(key)
        if ts is None:
            continue
        if ts.processing_on is not None:
            processing[key] = ts.processing_on.address
        stack.extend(dts.key for dts in ts.dependents)
    runtime._handle([event])
    restarted: set[str] = set()
    for key, address in processing.items():
        ts = tasks.get(key)
        ws = None if ts is None else ts.processing_on
        if ws is not None and ws.address == address:
            continue  # not cancelled (another client wants it, say)
        if address not in restarted and restart_worker(runtime, address):
            logger.info("Restarting worker %s to stop %r", address, key)
            restarted.add(address)
    return restarted


def restart(runtime: SchedulerRuntime, client: str | None = None) -> set[str]:
    """Forget every task, cancel every future, restart every worker.

    Returns the old workers' addresses. Plugins' ``restart`` hooks run in the
    core; results, shared-memory ones too, are freed here.
    """
    runtime._handle(
        [ev.RestartRequested(stimulus_id=runtime.stimulus_id("restart"), client=client)]
    )
    # As dask's client on "restart": every future is cancelled, even finished ones.
    for handle in list(runtime.clients.values()):
        for state in list(handle.states.values()):
            if getattr(state, "status", None) != "cancelled":
                state.cancel("scheduler-restart")
        ref = getattr(handle, "on_restart", None)  # a Client's, weakly
        on_restart = None if ref is None else ref()
        if on_restart is not None:
            on_restart()
    tasks = runtime.scheduler.state.tasks
    for key in [k for k in runtime.data if k not in tasks]:
        payload = runtime.data.pop(key)
        runtime._producers.pop(key, None)
        runtime._free_payload(payload)
    old = set(runtime.workers)
    for address in old:
        restart_worker(runtime, address)
    return old
