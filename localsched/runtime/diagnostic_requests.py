"""Handlers of the requests that observe the cluster: events, logs, stacks.

Part of the one request handler (``request_handler.py`` merges
:data:`HANDLERS` into its table); every function runs on the scheduler thread.
Questions about a worker's own state (its logs, what its threads run, its
profile) become ``Inspect`` messages, answered by the worker's control thread
(``localsched.worker.diagnostics``); the request's answer is a cell that
resolves once every worker asked answered or left::

    CallStack ─▶ workers running the keys ─▶ Inspect("call_stack", keys) ─┐
    WorkerLogs ─▶ every (or the named) worker ─▶ Inspect("logs", n) ───────┼─▶ cell
    Profile ─▶ every (or the named) worker ─▶ Inspect("profile", ...) ─────┘
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Hashable
from concurrent.futures import Future as CellFuture
from typing import TYPE_CHECKING, Any

from localsched.aio import new_cell
from localsched.runtime.handles import ClientHandle
from localsched.transport import requests as rq
from localsched.worker.diagnostics import merge

if TYPE_CHECKING:
    from localsched.runtime.scheduler_thread import SchedulerRuntime

logger = logging.getLogger("localsched.runtime.scheduler_thread")

Key = Hashable

__all__ = ["DEFAULT_TOPICS", "HANDLERS"]

#: Topics every client in the user's process subscribes to on connecting (as
#: dask's ``Client._default_event_handlers``): prints and warnings from tasks.
DEFAULT_TOPICS = ("print", "warn")


def _log_event(runtime: SchedulerRuntime, asker: ClientHandle, r: rq.LogEvent) -> None:
    runtime.scheduler.log_event(list(r.topics), r.msg)


def _get_events(runtime: SchedulerRuntime, asker: ClientHandle, r: rq.GetEvents) -> Any:
    return runtime.event_log.get_events(r.topic)


def _subscribe_topic(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.SubscribeTopic
) -> None:
    if r.subscribe:
        runtime.event_log.subscribe(r.topic, asker.id)
    else:
        runtime.event_log.unsubscribe(r.topic, asker.id)


def _scheduler_logs(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.SchedulerLogs
) -> list[tuple[Any, ...]]:
    return runtime.log_ring.get_logs(n=r.n, timestamps=r.timestamps)


def _answers(
    cell: CellFuture[dict[str, tuple[bool, Any, str]]],
    shape: Callable[[dict[str, Any]], Any],
) -> CellFuture[Any]:
    """A cell with ``shape(address -> answer)`` of the workers that answered
    (one that failed or left is left out, as dask leaves out exceptions)."""
    out: CellFuture[Any] = new_cell()

    def done(source: CellFuture[dict[str, tuple[bool, Any, str]]]) -> None:
        error = source.exception()
        if error is not None:
            out.set_exception(error)
            return
        values = {}
        for address, (ok, payload, text) in source.result().items():
            if ok:
                values[address] = pickle.loads(payload)
            else:
                logger.debug("%s could not answer: %s", address, text or payload)
        try:
            out.set_result(shape(values))
        except Exception as exc:
            out.set_exception(exc)

    cell.add_done_callback(done)
    return out


def _addresses(runtime: SchedulerRuntime, workers: tuple[Any, ...] | None) -> list[str]:
    scheduler = runtime.scheduler
    if workers is None:
        return list(scheduler.workers)
    return scheduler.workers_list(list(workers))


def _worker_logs(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.WorkerLogs
) -> CellFuture[Any]:
    questions = {a: ("logs", {"n": r.n}) for a in _addresses(runtime, r.workers)}
    return _answers(runtime.runs.start_inspect(questions), dict)


def _call_stack(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.CallStack
) -> CellFuture[Any]:
    """dask's ``get_call_stack``: a waiting key stands for the keys it waits
    for, down to the ones processing; only workers running one are asked."""
    tasks = runtime.scheduler.tasks
    questions: dict[str, tuple[str, dict[str, Any]]] = {}
    if r.keys is None:
        every = ("call_stack", {"keys": None})
        questions = dict.fromkeys(runtime.scheduler.workers, every)
    else:
        stack, seen = list(r.keys), set()
        per_worker: dict[str, list[Key]] = {}
        while stack:
            key = stack.pop()
            ts = tasks.get(key)
            if ts is None or key in seen:
                continue
            seen.add(key)
            if ts.state == "waiting":
                stack.extend(dts.key for dts in ts.dependencies)
            elif ts.state == "processing" and ts.processing_on is not None:
                per_worker.setdefault(ts.processing_on.address, []).append(key)
        questions = {
            address: ("call_stack", {"keys": keys})
            for address, keys in per_worker.items()
        }
    return _answers(
        runtime.runs.start_inspect(questions),
        lambda values: {a: stacks for a, stacks in values.items() if stacks},
    )


def _profile(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.Profile
) -> CellFuture[Any]:
    args = {"key": r.key, "start": r.start, "stop": r.stop}
    questions = dict.fromkeys(_addresses(runtime, r.workers), ("profile", args))
    if r.merge_workers:
        return _answers(
            runtime.runs.start_inspect(questions),
            lambda values: merge(*values.values()),
        )
    return _answers(runtime.runs.start_inspect(questions), dict)


HANDLERS: dict[type[rq.Request], Callable[[Any, Any, Any], Any]] = {
    rq.LogEvent: _log_event,
    rq.GetEvents: _get_events,
    rq.SubscribeTopic: _subscribe_topic,
    rq.SchedulerLogs: _scheduler_logs,
    rq.WorkerLogs: _worker_logs,
    rq.CallStack: _call_stack,
    rq.Profile: _profile,
}
