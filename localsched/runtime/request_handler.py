"""The one handler of clients' requests, on the scheduler thread.

Every :class:`~localsched.transport.requests.Request` a client sends, through whichever
link, ends in :func:`answer`: one function per request type, found in a table
keyed by the type (as the core's event dispatch). ``asker`` is the runtime's
record of the client that asks: a :class:`ClientHandle` for a client in this
process, a :class:`WorkerClientHandle` for the client of a worker's tasks::

    LocalLink.request ── runtime.call ──────────────┐
                                                    ▼
    worker pipe: LinkRequest ── serve_worker ──▶ answer(runtime, asker, request)
                 LinkEvents ─── take_worker_events ─▶ core events (in order)
                 ◀── LinkReply (now, or once a deferred answer resolves)

A handler returns its answer, raises, or returns a ``concurrent.futures.Future``
when the answer comes later (a wait on a coordination primitive, a function
run on workers); the link passes that answer on once it resolves. Handlers run
on the scheduler thread only, after every event the client posted before the
request.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Hashable
from concurrent.futures import Future as CellFuture
from typing import TYPE_CHECKING, Any

import cloudpickle

from localsched.aio import new_cell
from localsched.runtime import cluster_requests, recording, restarting
from localsched.runtime.actor_calls import actor_calls_of
from localsched.runtime.coordination_state import DEFERRED, coordination_of
from localsched.runtime.diagnostic_requests import DEFAULT_TOPICS
from localsched.runtime.diagnostic_requests import HANDLERS as DIAGNOSTIC_HANDLERS
from localsched.runtime.handles import ClientHandle, WorkerClientHandle, WorkerHandle
from localsched.runtime.plugin_keeper import (
    KEEPER_NAME,
    WorkerPluginKeeper,
    add_message,
    keeper_of,
)
from localsched.runtime.task_metadata import HANDLERS as TASK_METADATA_HANDLERS
from localsched.runtime.task_stream import task_stream_plugin
from localsched.scheduler import events as ev
from localsched.transport import pickling
from localsched.transport import requests as rq
from localsched.transport.protocol import (
    LinkEvents,
    LinkReply,
    LinkRequest,
    RemovePlugin,
)
from localsched.transport.shm import BlobRef

if TYPE_CHECKING:
    from localsched.runtime.scheduler_thread import SchedulerRuntime
    from localsched.scheduler.tasks import TaskState

logger = logging.getLogger("localsched.runtime.scheduler_thread")

Key = Hashable

__all__ = ["answer", "serve_worker", "take_worker_events"]


def answer(runtime: SchedulerRuntime, asker: ClientHandle, request: rq.Request) -> Any:
    """The answer to ``request`` from ``asker`` (scheduler thread).

    A ``concurrent.futures.Future`` result means: the answer is that future's.
    """
    handler = _HANDLERS.get(type(request))
    if handler is None:
        raise TypeError(f"not a request: {type(request).__name__}")
    return handler(runtime, asker, request)


# -- the client's lifecycle ---------------------------------------------------------


def _connect(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.ConnectClient
) -> None:
    if isinstance(asker, WorkerClientHandle):
        return  # registered by the first message of its worker's client
    asker.on_restart = r.on_restart
    asker.on_event = r.on_event
    runtime.clients[asker.id] = asker
    if r.on_event is not None:
        for topic in DEFAULT_TOPICS:
            runtime.event_log.subscribe(topic, asker.id)
    runtime.scheduler.log_event(
        ["all", asker.id], {"action": "add-client", "client": asker.id}
    )
    runtime._handle(
        [ev.ClientAdded(stimulus_id=f"client-added-{asker.id}", client=asker.id)]
    )


def _disconnect(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.DisconnectClient
) -> None:
    if isinstance(asker, WorkerClientHandle):
        return  # its worker's tasks share it: it goes with the worker
    runtime.scheduler.log_event(
        ["all", asker.id], {"action": "remove-client", "client": asker.id}
    )
    runtime._handle(
        [ev.ClientRemoved(stimulus_id=f"client-removed-{asker.id}", client=asker.id)]
    )
    runtime.clients.pop(asker.id, None)
    runtime.event_log.forget_client(asker.id)


def _ping(runtime: SchedulerRuntime, asker: ClientHandle, r: rq.Ping) -> None:
    return None  # the events posted before were handled: that is the answer


# -- data -----------------------------------------------------------------------------


def _gather(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.Gather
) -> dict[Key, Any]:
    data = runtime.data
    missing = [key for key in r.keys if key not in data]
    if missing:
        raise KeyError(f"No result for {missing!r}: released")
    out = {key: data[key] for key in r.keys}
    for payload in out.values():
        if type(payload) is BlobRef:
            runtime.store.touch(payload)  # about to be read: spill it last
    return out


def _scatter(runtime: SchedulerRuntime, asker: ClientHandle, r: rq.Scatter) -> None:
    scheduler = runtime.scheduler
    if r.workers:
        targets = scheduler.workers_list(list(r.workers))
    elif isinstance(asker, WorkerClientHandle):
        targets = [asker.worker.address]  # its values were made there
    else:
        targets = list(scheduler.workers)
    data = runtime.data
    who_has: dict[Key, str | None] = {}
    nbytes: dict[Key, int] = {}
    for i, (key, payload) in enumerate(r.data):
        if key in data:
            runtime._free_payload(payload)  # the result there stays
        else:
            data[key] = payload
        who_has[key] = targets[i % len(targets)] if targets else None
        nbytes[key] = r.nbytes.get(key) or (
            payload.nbytes if isinstance(payload, BlobRef) else len(payload)
        )
    asker.watch(who_has)
    scheduler.update_data(
        who_has=who_has, nbytes=nbytes, types=r.types, client=asker.id
    )
    if r.broadcast and len(targets) > 1:
        keys = list(who_has)
        for address in targets:
            scheduler.add_keys(address, keys)


def _force_cancel(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.ForceCancel
) -> list[str]:
    event = ev.CancelRequested(
        stimulus_id=runtime.stimulus_id("cancel"),
        client=asker.id,
        keys=list(r.keys),
        force=True,
    )
    return sorted(restarting.force_cancel(runtime, event))


def _cancel_pending(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.CancelPending
) -> list[Key]:
    tasks = runtime.scheduler.state.tasks
    known = [tasks[key] for key in r.keys if key in tasks]
    workers = {ts.processing_on for ts in known if ts.processing_on is not None}
    started = set().union(*(_started_keys(runtime, ws) for ws in workers))
    cancel = [
        ts.key
        for ts in known
        if ts.key not in started and ts.state not in ("memory", "erred", "forgotten")
    ]
    if cancel:
        runtime._handle(
            [
                ev.CancelRequested(
                    stimulus_id=runtime.stimulus_id("cancel-pending"),
                    client=asker.id,
                    keys=cancel,
                    force=False,
                )
            ]
        )
    cancelled = set(cancel)
    return [key for key in r.keys if key not in cancelled]


def _started_keys(runtime: SchedulerRuntime, ws: Any) -> set[Key]:
    """The keys processing on ``ws`` that count as started: executing (its
    shared page says so), or next in the worker's order for a free thread."""
    handle = runtime.workers.get(ws.address)
    page = None if handle is None else handle.executing_page
    run_ids = None if page is None else page.executing()
    if run_ids is None:  # cannot tell: every task sent there may be running
        return {ts.key for ts in ws.processing}
    executing = [ts for ts in ws.processing if ts.run_id in run_ids]
    queued = sorted(
        (ts for ts in ws.processing if ts.run_id not in run_ids),
        key=lambda ts: ts.priority,
    )
    busy = sum(1 for ts in executing if ts not in ws.long_running)
    free = max(ws.nthreads - busy, 0)
    return {ts.key for ts in executing} | {ts.key for ts in queued[:free]}


# -- introspection ------------------------------------------------------------------


def _worker_identity(ws: Any) -> dict[str, Any]:
    """dask's ``WorkerState.identity()`` keys."""
    return {
        **ws.identity(),
        "name": ws.name,
        "last_seen": ws.last_seen,
        "services": {},
        "nanny": None,
    }


def _scheduler_info(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.SchedulerInfo
) -> dict[str, Any]:
    scheduler = runtime.scheduler
    workers = list(scheduler.workers.values())
    if r.n_workers != -1:
        workers = workers[: max(r.n_workers, 0)]
    info = scheduler.identity()
    info["n_workers"] = len(scheduler.workers)
    info["total_threads"] = scheduler.total_nthreads
    info["total_memory"] = sum(
        ws.memory_limit or 0 for ws in scheduler.workers.values()
    )
    info["workers"] = {ws.address: _worker_identity(ws) for ws in workers}
    return info


def _nthreads(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.NThreads
) -> dict[str, int]:
    scheduler = runtime.scheduler
    workers = scheduler.workers
    if r.workers is None:
        return {a: ws.nthreads for a, ws in workers.items()}
    addresses = map(scheduler.coerce_address, r.workers)
    return {a: workers[a].nthreads for a in addresses if a in workers}


def _who_has(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.WhoHas
) -> dict[Key, list[str]]:
    tasks = runtime.scheduler.tasks
    keeper = _keeper(runtime)

    def holders(ts: TaskState) -> list[str]:
        if not ts.who_has and keeper is not None and _orphaned(ts):
            return [keeper]
        return [ws.address for ws in ts.who_has]

    if r.keys is None:
        return {key: holders(ts) for key, ts in tasks.items() if ts.state == "memory"}
    return {key: holders(tasks[key]) if key in tasks else [] for key in r.keys}


def _orphaned(ts: TaskState) -> bool:
    """A result in shared memory whose holders all left (retired or died)."""
    return ts.state == "memory" and ts.shared and not ts.who_has


def _keeper(runtime: SchedulerRuntime) -> str | None:
    """The worker ``who_has``/``has_what`` name as holder of orphaned results.

    Such a result lives on in shared memory, readable by every worker, so
    naming a remaining worker (the oldest: a stable choice) is the truth a dask
    user expects after ``retire_workers``, where dask moved the data there.
    """
    return next(iter(runtime.scheduler.workers), None)


def _per_worker(
    runtime: SchedulerRuntime,
    names: tuple[Any, ...] | None,
    keys_of: Callable[[Any], list[Key]],
) -> dict[str, list[Key]]:
    scheduler = runtime.scheduler
    if names is None:
        return {a: keys_of(ws) for a, ws in scheduler.workers.items()}
    out = {}
    for name in names:
        address = scheduler.coerce_address(name)
        ws = scheduler.workers.get(address)
        out[address] = [] if ws is None else keys_of(ws)
    return out


def _has_what(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.HasWhat
) -> dict[str, list[Key]]:
    keeper = _keeper(runtime)
    orphans = (
        [key for key, ts in runtime.scheduler.tasks.items() if _orphaned(ts)]
        if keeper is not None
        else []
    )

    def keys_of(ws: Any) -> list[Key]:
        held = [ts.key for ts in ws.has_what]
        return held + orphans if ws.address == keeper else held

    return _per_worker(runtime, r.workers, keys_of)


def _processing(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.Processing
) -> dict[str, list[Key]]:
    return _per_worker(runtime, r.workers, lambda ws: [ts.key for ts in ws.processing])


def _story(runtime: SchedulerRuntime, asker: ClientHandle, r: rq.Story) -> list[Any]:
    # Plain tuples, as dask's client receives them: they cross a pipe as they
    # are (the core's record type would need the core to be unpickled).
    return [tuple(entry) for entry in runtime.scheduler.story(*r.keys)]


def _nbytes(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.NBytes
) -> dict[Any, int]:
    return runtime.scheduler.get_nbytes(r.keys, summary=r.summary)


def _worker_status(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.WorkerStatus
) -> dict[str, str]:
    return {a: str(ws.status) for a, ws in runtime.scheduler.workers.items()}


def _task_stream(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.TaskStream
) -> list[dict[str, Any]]:
    return task_stream_plugin(runtime.scheduler).collect(
        start=r.start, stop=r.stop, count=r.count, start_index=r.start_index
    )


def _task_stream_index(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.TaskStreamIndex
) -> int:
    return task_stream_plugin(runtime.scheduler).index


def _start_recording(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.StartRecording
) -> int:
    return recording.start_recording(runtime)


def _stop_recording(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.StopRecording
) -> recording.RecordingData:
    return recording.stop_recording(runtime, r.session)


def _get_metadata(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.GetMetadata
) -> Any:
    return runtime.scheduler.get_metadata(keys=list(r.keys), default=r.default)


def _set_metadata(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.SetMetadata
) -> None:
    runtime.scheduler.set_metadata(keys=list(r.keys), value=r.value)


# -- running things -------------------------------------------------------------------


def _run_on_scheduler(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.RunOnScheduler
) -> Any:
    result = runtime.scheduler.run_function(r.function, r.args, r.kwargs)
    if inspect.isawaitable(result):
        import asyncio

        async def finish() -> Any:
            return await result

        result = asyncio.run(finish())
    return result


def _run_on_workers(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.RunOnWorkers
) -> CellFuture[Any]:
    scheduler = runtime.scheduler
    addresses = (
        list(scheduler.workers)
        if r.workers is None
        else scheduler.workers_list(list(r.workers))
    )
    return runtime.runs.start(r.function, r.args, addresses)


def _restart(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.Restart
) -> list[str]:
    if isinstance(asker, WorkerClientHandle):
        raise RuntimeError(
            "Client.restart() cannot run inside a task: it restarts every worker, "
            "the one running this task too; restart from the client that created "
            "the cluster"
        )
    return sorted(restarting.restart(runtime, asker.id))


def _retire_workers(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.RetireWorkers
) -> dict[str, dict[str, Any]]:
    scheduler = runtime.scheduler
    infos = {a: _worker_identity(ws) for a, ws in scheduler.workers.items()}
    names = None if r.workers is None else list(r.workers)
    addresses = scheduler.retire_workers(
        workers=names, close_workers=r.close_workers, **r.options
    )
    return {a: infos[a] for a in addresses if a in infos}


def _actor_call(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.ActorCall
) -> CellFuture[tuple[bool, bytes]]:
    return actor_calls_of(runtime).start(r.key, r.name, r.args)


# -- plugins ------------------------------------------------------------------------


def _add_scheduler_plugin(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.AddSchedulerPlugin
) -> None:
    scheduler = runtime.scheduler
    if r.name in scheduler.plugins and r.idempotent:
        return
    scheduler.add_plugin(r.plugin, name=r.name, idempotent=r.idempotent)


def _remove_scheduler_plugin(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.RemoveSchedulerPlugin
) -> None:
    runtime.scheduler.remove_plugin(r.name)


def _add_worker_plugin(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.AddWorkerPlugin
) -> CellFuture[Any] | None:
    keeper = keeper_of(runtime.scheduler, runtime)
    if r.name in keeper.worker_plugins and r.idempotent:
        return None
    name, data = r.name, r.plugin
    keeper.worker_plugins[name] = data
    return keeper.broadcast(lambda i, handle: add_message(i, name, data, handle))


def _remove_worker_plugin(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.RemoveWorkerPlugin
) -> CellFuture[Any]:
    keeper = runtime.scheduler.plugins.get(KEEPER_NAME)
    if (
        not isinstance(keeper, WorkerPluginKeeper)
        or r.name not in keeper.worker_plugins
    ):
        raise ValueError(f"The worker plugin {r.name} does not exist")
    del keeper.worker_plugins[r.name]
    name = r.name
    return keeper.broadcast(lambda i, _h: RemovePlugin(id=i, name=name))


# -- coordination primitives ----------------------------------------------------------


def _coordinate(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.Coordinate
) -> Any:
    operation = getattr(coordination_of(runtime), rq.Operation(r.operation).value)
    return operation(asker.id, *r.args)


def _wait_for(runtime: SchedulerRuntime, asker: ClientHandle, r: rq.WaitFor) -> Any:
    cell: CellFuture[Any] = new_cell()
    result = coordination_of(runtime).wait(
        asker.id,
        r.wait_id,
        rq.Operation(r.operation).value,
        r.args,
        cell.set_result,
        cell.set_exception,
    )
    return cell if result is DEFERRED else result


_HANDLERS: dict[type[rq.Request], Callable[[Any, Any, Any], Any]] = {
    rq.ConnectClient: _connect,
    rq.DisconnectClient: _disconnect,
    rq.Ping: _ping,
    rq.Gather: _gather,
    rq.Scatter: _scatter,
    rq.ForceCancel: _force_cancel,
    rq.CancelPending: _cancel_pending,
    rq.SchedulerInfo: _scheduler_info,
    rq.NThreads: _nthreads,
    rq.WhoHas: _who_has,
    rq.HasWhat: _has_what,
    rq.Processing: _processing,
    rq.Story: _story,
    rq.NBytes: _nbytes,
    rq.WorkerStatus: _worker_status,
    rq.TaskStream: _task_stream,
    rq.TaskStreamIndex: _task_stream_index,
    rq.StartRecording: _start_recording,
    rq.StopRecording: _stop_recording,
    rq.GetMetadata: _get_metadata,
    rq.SetMetadata: _set_metadata,
    rq.RunOnScheduler: _run_on_scheduler,
    rq.RunOnWorkers: _run_on_workers,
    rq.Restart: _restart,
    rq.RetireWorkers: _retire_workers,
    rq.ActorCall: _actor_call,
    rq.AddSchedulerPlugin: _add_scheduler_plugin,
    rq.RemoveSchedulerPlugin: _remove_scheduler_plugin,
    rq.AddWorkerPlugin: _add_worker_plugin,
    rq.RemoveWorkerPlugin: _remove_worker_plugin,
    rq.Coordinate: _coordinate,
    rq.WaitFor: _wait_for,
    **cluster_requests.HANDLERS,
    **DIAGNOSTIC_HANDLERS,
    **TASK_METADATA_HANDLERS,
}


# -- the pipe side: the client of a worker's tasks -------------------------------------


def worker_client(
    runtime: SchedulerRuntime, worker: WorkerHandle
) -> WorkerClientHandle:
    """The record of ``worker``'s client, registered on its first message."""
    client_id = f"worker-client-{worker.address}"
    client = runtime.clients.get(client_id)
    if not isinstance(client, WorkerClientHandle):
        client = runtime.clients[client_id] = WorkerClientHandle(worker)
        runtime._handle(
            [ev.ClientAdded(stimulus_id=f"client-added-{client_id}", client=client_id)]
        )
    return client


def serve_worker(
    runtime: SchedulerRuntime,
    worker: WorkerHandle,
    message: LinkRequest,
    events: list[ev.StateEvent],
) -> None:
    """Answer a request of ``worker``'s client with a :class:`LinkReply`."""
    asker = worker_client(runtime, worker)
    if events:
        # The request sees (and its answer follows) the events sent before it.
        runtime._handle(events)
        events.clear()
    request_id = message.id
    try:
        result = answer(runtime, asker, cloudpickle.loads(message.request))
    except Exception as exc:
        logger.debug("A request of %s failed: %r", asker.id, exc)
        worker.outbox.append(_reply(request_id, False, exc))
        return
    if isinstance(result, CellFuture):
        # Resolved on this thread (a run answered, a waiter woken); the reply
        # goes out with that loop turn's batch.
        result.add_done_callback(_reply_later(worker, request_id))
    else:
        worker.outbox.append(_reply(request_id, True, result))


def _reply_later(
    worker: WorkerHandle, request_id: int
) -> Callable[[CellFuture[Any]], None]:
    def reply(cell: CellFuture[Any]) -> None:
        error = cell.exception()
        if error is None:
            worker.outbox.append(_reply(request_id, True, cell.result()))
        else:
            worker.outbox.append(_reply(request_id, False, error))

    return reply


def _reply(request_id: int, ok: bool, value: Any) -> LinkReply:
    try:
        payload = pickling.dumps(value, protocol=5)
    except Exception as exc:
        ok, payload = (
            False,
            pickling.dumps(
                RuntimeError(f"the answer could not be pickled: {exc!r}"), protocol=5
            ),
        )
    return LinkReply(id=request_id, ok=ok, payload=payload)


def take_worker_events(
    runtime: SchedulerRuntime,
    worker: WorkerHandle,
    message: LinkEvents,
    events: list[ev.StateEvent],
) -> None:
    """Client events of ``worker``'s client, for the core, in order."""
    client = worker_client(runtime, worker)
    for event in cloudpickle.loads(message.events):
        if not isinstance(event, WorkerClientHandle.EVENTS):
            logger.warning(
                "%s sent %s, which a client cannot send", client.id, type(event)
            )
            continue
        event.stimulus_id = runtime.stimulus_id(event.stimulus_id.rsplit("-", 1)[0])
        if (
            isinstance(event, ev.ClientDesiresKeys)
            and event.client == "fire-and-forget"
        ):
            events.append(event)
            continue
        event.client = client.id  # a worker speaks for its own client only
        if isinstance(event, ev.UpdateGraph | ev.ClientDesiresKeys):
            client.watch(event.keys)
        elif isinstance(event, ev.ClientReleasesKeys):
            for key in event.keys:
                client.states.pop(key, None)
        events.append(event)
